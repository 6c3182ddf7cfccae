"""Models in the MLflow Model Registry: log, register, alias, and load back.

A trained model is logged with ``mlflow.pytorch.log_model`` in eval mode, with a signature, an
input example and explicit pip requirements, saved in the ``pickle`` format so that loading
returns a :class:`~cxrstudy.train.models.BinaryClassifier` (with ``embed`` for the probe), then
registered under its configuration's name. ``models:/<name>@latest`` always resolves to the
newest version: MLflow reserves the alias ``latest`` for exactly that (it refuses to set it by
hand), so registering a new version is what moves it.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
from dataclasses import dataclass

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from cxrstudy.data.dataspec import DataSpec
from cxrstudy.errors import DataError


def pip_requirements() -> list[str]:
    reqs = []
    for pkg in ("torch", "torchvision", "numpy", "mlflow"):
        try:
            reqs.append(f"{pkg}=={md.version(pkg).split('+')[0]}")
        except md.PackageNotFoundError:
            pass
    reqs.append(f"cxrstudy=={md.version('cxrstudy')}" if _installed("cxrstudy") else "cxrstudy")
    return reqs


def _installed(pkg: str) -> bool:
    try:
        md.version(pkg)
        return True
    except md.PackageNotFoundError:
        return False


def log_and_register(model: torch.nn.Module, name: str, image_size: int, *, metadata: dict | None = None):
    """Log ``model`` to the active run and register it as a new version of ``name``.

    Returns (model_uri, version)."""
    model = model.cpu().eval()
    example = np.random.default_rng(0).random((2, 1, image_size, image_size), dtype=np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        model, name="model", input_example=example, signature=infer_signature(example, out),
        pip_requirements=pip_requirements(), serialization_format="pickle", metadata=metadata or {},
    )
    mv = mlflow.register_model(info.model_uri, name)
    return info.model_uri, int(mv.version)


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_model_uri(uri: str) -> str:
    """Accept ``models:/name@alias``, ``models:/name/version``, ``runs:/id/model`` or a bare run id."""
    uri = str(uri).strip()
    if _RUN_ID.match(uri):
        run = _get_run(uri)
        name, version = run.data.tags.get("registered_model"), run.data.tags.get("registered_version")
        if name and version:
            return f"models:/{name}/{version}"
        return f"runs:/{uri}/model"
    if not uri.startswith(("models:/", "runs:/", "m-")):
        raise DataError(f"model_uri {uri!r} is not a model URI; expected models:/<name>@<alias>, "
                        "models:/<name>/<version>, runs:/<run_id>/model or a run id")
    return uri


def _get_run(run_id: str):
    try:
        return MlflowClient().get_run(run_id)
    except MlflowException:
        raise DataError(f"run {run_id} not found in the tracking store {mlflow.get_tracking_uri()}") from None


def model_run_id(uri: str) -> str | None:
    """The training run behind a registry or runs URI (None if it cannot be told)."""
    client = MlflowClient()
    m = re.match(r"^models:/([^/@]+)(?:@(.+)|/(\d+))$", uri)
    try:
        if m:
            name, alias, version = m.groups()
            mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
            return mv.run_id
        m = re.match(r"^runs:/([0-9a-f]{32})/", uri)
        return m.group(1) if m else None
    except MlflowException:
        raise DataError(f"model {uri} does not exist in the registry at {mlflow.get_tracking_uri()}") from None


def load_model(uri: str) -> tuple[torch.nn.Module, str, str | None]:
    """Load a logged classifier (eval mode, on the CPU); one clear error if it does not exist.

    Returns (model, resolved URI, id of the training run behind it or None)."""
    uri = resolve_model_uri(uri)
    run_id = model_run_id(uri)  # clear error for unknown names, aliases, versions
    try:
        model = mlflow.pytorch.load_model(uri, map_location="cpu")
    except MlflowException as e:
        raise DataError(f"cannot load model {uri}: {str(e).splitlines()[0]}") from None
    return model.eval(), uri, run_id


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
