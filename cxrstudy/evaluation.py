"""Evaluate a trained model on hospitals' test splits (PROTOCOL.md "Evaluation").

Every model is scored on each named hospital's test split separately; groups are (hospital,
label value); the decision threshold is the one the training run chose on validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .bootstrap import wga_bootstrap
from .dataspec import DataSpec
from .errors import DataError
from .metrics import evaluate_predictions, predict
from .trainer import eval_set, pick_device, predict_scores

PREDICTION_COLUMNS = ["env", "subject_id", "y_true", "y_score", "y_pred"]


@dataclass
class Evaluation:
    predictions: pd.DataFrame  # env, subject_id, y_true, y_score, y_pred (no pixels, no paths)
    metrics: dict  # flat: "<env>/tpr", ..., "wga", "wga_group", ..., "wga_ci_low", "wga_ci_high"


def predict_test(model: torch.nn.Module, spec: DataSpec, envs: list[str], label: str, threshold: float,
                 device: str = "auto", progress: bool = True) -> pd.DataFrame:
    """Scores and decisions of ``model`` on the test split of each hospital, in cache order."""
    dev = pick_device(device)
    entries = {e: spec.entry(e, "test", progress=progress) for e in envs}
    es = eval_set(entries, label)
    scores = predict_scores(model.to(dev), es, dev)
    df = es.frame.assign(y_score=scores, y_pred=predict(scores, threshold))
    return df[PREDICTION_COLUMNS]


def evaluate(model, spec: DataSpec, envs: list[str], label: str, threshold: float, *, n_bootstrap: int = 1000,
             seed: int = 0, device: str = "auto", progress: bool = True) -> Evaluation:
    preds = predict_test(model, spec, envs, label, threshold, device=device, progress=progress)
    try:
        metrics = evaluate_predictions(preds, threshold=threshold, expected_envs=envs)
    except ValueError as e:  # a hospital without positives or negatives for this label
        raise DataError(f"test split, label {label!r}: {e}") from None
    if n_bootstrap > 0:
        ci = wga_bootstrap(preds, n_resamples=n_bootstrap, seed=seed, expected_envs=envs)
        metrics["wga_ci_low"], metrics["wga_ci_high"] = float(ci["low"]), float(ci["high"])
    return Evaluation(predictions=preds, metrics=metrics)


def numeric_metrics(metrics: dict, prefix: str) -> dict:
    """The numeric entries of a metrics dict, keys prefixed (``test/`` ...), NaN kept out."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out


@dataclass
class TrainedModel:
    """A registered model with what its training run recorded about it."""

    uri: str
    model: torch.nn.Module
    run_id: str | None
    label: str
    envs: list
    threshold: float
    spec: DataSpec


def load_trained(model_uri: str, *, data_root: str | None = None, cache_dir: str | None = None) -> TrainedModel:
    """Load a model from the registry (or a run) with its label, threshold and data spec."""
    import json

    from mlflow.tracking import MlflowClient

    from .registry import load_model

    model, uri, run_id = load_model(model_uri)
    if run_id is None:
        raise DataError(f"model {uri}: cannot find the training run that produced it")
    data = MlflowClient().get_run(run_id).data
    params, metrics = data.params, data.metrics
    try:
        spec = DataSpec.from_dict(json.loads(params["cfg.data_spec"]), data_root=data_root, cache_dir=cache_dir)
        label, envs = params["cfg.label"], json.loads(params["cfg.envs"])
        threshold = float(metrics["threshold"])
    except KeyError as e:
        raise DataError(f"model {uri}: its run {run_id} lacks {e}; was it trained by cxrstudy's train entry point?") \
            from None
    return TrainedModel(uri=uri, model=model, run_id=run_id, label=label, envs=envs, threshold=threshold, spec=spec)
