"""Evaluate a trained model on hospitals' test splits (docs/PROTOCOL.md "Evaluation").

Every model is scored on each named hospital's test split separately; groups are (hospital,
label value); the decision threshold is the one the training run chose on validation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from cxrstudy.data.dataspec import DataSpec
from cxrstudy.errors import DataError
from cxrstudy.evaluate.bootstrap import wga_bootstrap
from cxrstudy.evaluate.metrics import evaluate_predictions, predict
from cxrstudy.train.device import pick_device, place_model
from cxrstudy.train.inference import eval_set, predict_scores

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
    scores = predict_scores(place_model(model, dev), es, dev)
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


