"""Models in the MLflow Model Registry: log, register, alias, and load back, safely.

A trained model is logged as an MLflow *models-from-code* pyfunc model: its artifacts are the
classifier's state dict (``weights.pt``) and a small JSON config (backbone, image size,
threshold, label); its code is ``cxrstudy/tracking/model_code.py``, which imports the model
class from the installed package (:mod:`cxrstudy.tracking.pyfunc_model`). Nothing is pickled.
:func:`load_model` and :func:`load_trained` download those two files and rebuild the
:class:`~cxrstudy.train.models.BinaryClassifier` (with ``embed`` for the probe) with
``torch.load(weights_only=True)``: they never run code from the store, and refuse a version
that is anything else (an old pickled model, or a crafted one) with one line naming it.

Each version is registered under its configuration's name with tags (label, hospitals, method,
balance, seed, threshold, config hash, data fingerprint, synthetic or real, best validation
metrics) and a one-paragraph description, and gets two kinds of alias: ``seed<k>`` (the newest
version trained with seed k) and ``best`` (the highest validation WGA among the name's
versions, recomputed at each registration). ``models:/<name>@latest`` is MLflow's own: it always
resolves to the newest version, and MLflow refuses to set an alias called ``latest``.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types.schema import ColSpec, Schema

from cxrstudy.data.dataspec import PATH_NOT_LOGGED, DataSpec
from cxrstudy.errors import DataError
from cxrstudy.tracking import keys
from cxrstudy.tracking.pyfunc_model import (CONFIG_FILE, CONFIG_KEY, WEIGHTS_FILE, WEIGHTS_KEY, load_classifier,
                                            model_config, read_config)
from cxrstudy.tracking.races import RACE_TRIES, retry_lost_race

MODEL_CODE = Path(__file__).with_name("model_code.py")
BEST_ALIAS = "best"
#: the validation metrics of the kept checkpoint that a version carries as tags (``val/<name>``)
VAL_TAG_METRICS = ("wga", "macro_f1", "auroc", "loss")
BEST_METRIC_TAG = keys.VAL_PREFIX + "wga"  # what ``@best`` maximises


def seed_alias(seed: int) -> str:
    return f"seed{int(seed)}"


def pip_requirements() -> list[str]:
    reqs = []
    for pkg in ("torch", "torchvision", "numpy", "pandas", "pillow", "mlflow"):
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


def signature() -> ModelSignature:
    """Outputs ``probability`` (double) and ``prediction`` (long). There is no input schema on
    purpose: the input is base64-encoded PNG/JPEG strings or pixel arrays of any size and shape
    (see ``pyfunc_model``), which one MLflow schema cannot describe; the input example shows the
    array form."""
    return ModelSignature(inputs=None, outputs=Schema([ColSpec("double", "probability"),
                                                       ColSpec("long", "prediction")]))


def version_tags(*, label: str, hospitals, method: str, balance: str, seed: int, threshold: float,
                 config_hash: str, data_fingerprint: str, synthetic: bool, image_size: int,
                 val_metrics: dict, best_step: int) -> dict[str, str]:
    """The tags every registered version carries (run tags' names where a run tag exists)."""
    tags = {"label": label, "hospitals": ",".join(hospitals), keys.METHOD_TAG: method, "balance": balance,
            "seed": str(seed), "threshold": f"{threshold:.4f}", "image_size": str(image_size),
            keys.CONFIG_HASH_TAG: config_hash, keys.DATA_FINGERPRINT_TAG: data_fingerprint,
            keys.SYNTHETIC_TAG: "true" if synthetic else "false", "best_step": str(best_step)}
    for k in VAL_TAG_METRICS:
        if k in val_metrics and val_metrics[k] is not None:
            tags[keys.VAL_PREFIX + k] = f"{float(val_metrics[k]):.6g}"
    return tags


def version_description(tags: dict) -> str:
    """One paragraph for the registry UI: what the model predicts, from what, how well, how to use it."""
    synthetic = tags.get(keys.SYNTHETIC_TAG) == "true"
    val = ", ".join(f"{k.replace('_', '-')} {tags[keys.VAL_PREFIX + k]}" for k in VAL_TAG_METRICS
                    if keys.VAL_PREFIX + k in tags)
    return (
        f"Binary classifier for {tags['label']} on one frontal chest X-ray, trained by cxrstudy on "
        f"{'SYNTHETIC hospitals (not for patients) ' if synthetic else ''}{tags['hospitals'].replace(',', '+')} "
        f"with balance={tags['balance']}, method={tags[keys.METHOD_TAG]}, seed {tags['seed']}. "
        f"Best validation checkpoint (step {tags['best_step']}): {val}; decision threshold "
        f"{float(tags['threshold']):.2f}, chosen on validation. Input: chest X-rays as base64-encoded "
        f"PNG/JPEG strings, or pixels on the uint8 scale as (N, H, W) or one (H, W) or (H, W, 3) image of any "
        f"size (colour is converted to grayscale); the model reads no files, resizes to "
        f"{tags['image_size']} px and scales by 1/255. Output: a table with probability and prediction "
        f"(probability >= threshold). Artifacts are a state dict and a JSON config, no pickle: "
        f"cxrstudy.tracking.registry.load_model loads them with torch.load(weights_only=True). "
        f"Config hash {tags[keys.CONFIG_HASH_TAG]}, data fingerprint {tags[keys.DATA_FINGERPRINT_TAG]}."
    )


@dataclass
class RegisteredVersion:
    """A version just registered, its aliases, and which version ``@latest`` is now."""

    name: str
    version: int
    model_uri: str  # the logged model (models:/m-<id>)
    aliases: list
    latest: int

    def line(self) -> str:
        """What ``train`` prints; true at the moment it is printed."""
        aliases = ", ".join(self.aliases) if self.aliases else "none"
        return (f"model: models:/{self.name}/{self.version} (aliases: {aliases}; "
                f"models:/{self.name}@latest is v{self.latest})")


def log_and_register(model: torch.nn.Module, name: str, *, image_size: int, threshold: float, label: str,
                     tags: dict, metadata: dict | None = None) -> RegisteredVersion:
    """Log ``model`` to the active run as a state-dict pyfunc model, register it as a new version
    of ``name`` with ``tags`` and a description, and point ``seed<k>`` and ``best``."""
    model = model.cpu().eval()
    config = model_config(backbone=model.backbone_name, image_size=image_size, threshold=threshold, label=label)
    example = np.random.default_rng(0).integers(0, 256, (2, image_size, image_size), dtype=np.uint8)
    with tempfile.TemporaryDirectory(prefix="cxrstudy-model-") as tmp:
        weights, cfg_path = Path(tmp) / WEIGHTS_FILE, Path(tmp) / CONFIG_FILE
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, weights)
        cfg_path.write_text(json.dumps(config, indent=1))
        info = mlflow.pyfunc.log_model(
            name="model", python_model=str(MODEL_CODE), artifacts={WEIGHTS_KEY: str(weights), CONFIG_KEY: str(cfg_path)},
            signature=signature(), input_example=example, pip_requirements=pip_requirements(),
            metadata={**(metadata or {}), **config})
        drop_local_paths(info.model_id, tmp)
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    version = int(mv.version)
    client = MlflowClient()
    client.update_model_version(name, str(version), description=version_description(tags))
    if tags.get("seed", "").isdigit():
        set_alias(name, seed_alias(int(tags["seed"])), version)
    update_best_alias(name)
    latest = client.get_model_version_by_alias(name, "latest")
    aliases = sorted(client.get_model_version(name, str(version)).aliases, key=lambda a: (a != BEST_ALIAS, a))
    return RegisteredVersion(name=name, version=version, model_uri=info.model_uri, aliases=aliases,
                             latest=int(latest.version))


def drop_local_paths(model_id: str, local_dir: str) -> None:
    """Rewrite the logged model's ``MLmodel`` so that it names no path of this machine: MLflow
    records where each artifact was copied from (``uri: <local_dir>/weights.pt``, a temporary
    directory) and where the model code file was (``model_code_path: <package>/model_code.py``).
    Each becomes the file's path inside the model: loading reads the artifacts' ``path`` and the
    code file by the base name of ``model_code_path``, from the model's own folder."""
    client = MlflowClient()
    location = client.get_logged_model(model_id).artifact_location
    with tempfile.TemporaryDirectory(prefix="cxrstudy-mlmodel-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location.rstrip('/')}/MLmodel", dst_path=tmp))
        meta = yaml.safe_load(local.read_text())
        pyfunc = meta["flavors"]["python_function"]
        changed = False
        for entry in (pyfunc.get("artifacts") or {}).values():
            if str(entry.get("uri", "")).startswith(str(local_dir)):
                entry["uri"] = entry["path"]
                changed = True
        code = pyfunc.get("model_code_path")
        if code and Path(code).is_absolute():
            pyfunc["model_code_path"] = Path(code).name
            changed = True
        if changed:
            local.write_text(yaml.safe_dump(meta, default_flow_style=False, sort_keys=False))
            client.log_model_artifact(model_id, str(local))


def set_alias(name: str, alias: str, version: int) -> None:
    """Point ``alias`` of ``name`` at ``version``; a first setting that loses the race with another
    process setting the same alias (parallel workers) is done again (:mod:`cxrstudy.tracking.races`)."""
    retry_lost_race(lambda: MlflowClient().set_registered_model_alias(name, alias, str(version)))


def update_best_alias(name: str) -> int | None:
    """Point ``best`` at the version of ``name`` with the highest validation WGA (ties: the earliest,
    so the alias moves only for a strictly better model); returns that version.

    Parallel workers register versions of one name at once, and a worker may set ``best`` from a
    list of versions that another's registration has just made stale. So each looks again after
    setting it, and sets it again until the alias and the versions agree: the last to write also
    checks last, and the alias ends on the best of all versions."""
    client = MlflowClient()
    best = best_version(client.search_model_versions(f"name = '{name}'"))
    for _ in range(RACE_TRIES):
        if best is None:
            return None
        set_alias(name, BEST_ALIAS, best)
        now = best_version(client.search_model_versions(f"name = '{name}'"))
        if now == best and int((client.get_registered_model(name).aliases or {}).get(BEST_ALIAS, -1)) == best:
            return best
        best = now
    return best


def best_version(versions) -> int | None:
    """Which of these model versions ``best`` belongs to (see :func:`update_best_alias`), or None."""
    scored = []
    for mv in versions:
        try:
            wga = float(mv.tags.get(BEST_METRIC_TAG, "nan"))
        except ValueError:
            continue
        if math.isfinite(wga):
            scored.append((wga, -int(mv.version)))
    return -max(scored)[1] if scored else None


def restore_version_metadata(name: str, version: int) -> list[str]:
    """Finish what :func:`log_and_register` does after registering, for a version whose run was killed
    in between and is now reused: its description, ``seed<k>`` on the newest READY version trained
    with its seed k, and ``best``. What is already right is left alone. Returns what was set."""
    client = MlflowClient()
    mv = client.get_model_version(name, str(version))
    fixed = []
    if not mv.description:
        try:
            description = version_description(mv.tags)
        except (KeyError, ValueError):  # a version without the tags a description is made of: left bare
            description = None
        if description:
            client.update_model_version(name, str(version), description=description)
            fixed.append("description")
    versions = client.search_model_versions(f"name = '{name}'")
    held = {a: int(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    seed = mv.tags.get("seed", "")
    if seed.isdigit():
        newest = max(int(v.version) for v in versions
                     if (v.tags.get("seed") == seed and v.status == "READY") or int(v.version) == int(version))
        if held.get(seed_alias(int(seed))) != newest:
            set_alias(name, seed_alias(int(seed)), newest)
            fixed.append(seed_alias(int(seed)))
    best = best_version(versions)
    if best is not None and held.get(BEST_ALIAS) != best:
        update_best_alias(name)
        fixed.append(BEST_ALIAS)
    return fixed


def has_safe_model(run) -> bool:
    """Whether a training run's registered version is in the safe format (weights and config, model
    code from the package): versions in that format carry the data fingerprint tag; older versions
    are pickled models, which cxrstudy refuses to load."""
    name, version = run.data.tags.get(keys.REGISTERED_MODEL_TAG), run.data.tags.get(keys.REGISTERED_VERSION_TAG)
    if not name or not version:
        return False
    try:
        return keys.DATA_FINGERPRINT_TAG in MlflowClient().get_model_version(name, str(version)).tags
    except MlflowException:
        return False


def describe_version(name: str, version: int) -> str:
    """The alias line for an existing version (for a reused run): aliases now, and what @latest is."""
    client = MlflowClient()
    mv = client.get_model_version(name, str(version))
    latest = client.get_model_version_by_alias(name, "latest")
    aliases = sorted(mv.aliases, key=lambda a: (a != BEST_ALIAS, a))
    return RegisteredVersion(name=name, version=int(version), model_uri=mv.source, aliases=aliases,
                             latest=int(latest.version)).line()


_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def resolve_model_uri(uri: str) -> str:
    """Accept ``models:/name@alias``, ``models:/name/version``, ``runs:/id/model`` or a bare run id."""
    uri = str(uri).strip()
    if _RUN_ID.match(uri):
        run = _get_run(uri)
        name, version = run.data.tags.get(keys.REGISTERED_MODEL_TAG), run.data.tags.get(keys.REGISTERED_VERSION_TAG)
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
    """Load a logged classifier (eval mode, on the CPU) without running anything from the store.

    Downloads the version's ``MLmodel``, ``config.json`` and ``weights.pt`` and rebuilds the
    classifier from the installed package's code, reading the weights with
    ``torch.load(weights_only=True)``. A version that is not in that format (an old pickled model,
    or a crafted one) is refused with one line naming it. Returns (model, resolved URI, id of the
    training run behind it or None)."""
    uri = resolve_model_uri(uri)
    run_id = model_run_id(uri)  # clear error for unknown names, aliases, versions
    what = f"model {uri}"
    with tempfile.TemporaryDirectory(prefix="cxrstudy-load-") as tmp:
        try:
            root = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)).resolve()
        except (MlflowException, OSError) as e:
            raise DataError(f"cannot load {what}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}") \
                from None
        weights, config_path = _state_dict_files(root, what)
        config = read_config(config_path, what)
        model = load_classifier(weights, config, what)
    return model.eval(), uri, run_id


def _state_dict_files(root: Path, what: str) -> tuple[Path, Path]:
    """The weights and config files a cxrstudy model's ``MLmodel`` names, inside its own folder."""
    try:
        meta = yaml.safe_load((root / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{what}: cannot read its MLmodel file ({type(e).__name__})") from None
    flavors = meta.get("flavors") or {} if isinstance(meta, dict) else {}
    artifacts = (flavors.get("python_function") or {}).get("artifacts") or {} if isinstance(flavors, dict) else {}
    paths = []
    for key in (WEIGHTS_KEY, CONFIG_KEY):
        entry = artifacts.get(key) if isinstance(artifacts, dict) else None
        rel = entry.get("path") if isinstance(entry, dict) else None
        path = (root / rel).resolve() if isinstance(rel, str) else None
        if path is None or not path.is_relative_to(root) or not path.is_file():
            kinds = ", ".join(sorted(flavors)) if isinstance(flavors, dict) and flavors else "none"
            raise DataError(f"{what} is not a cxrstudy state-dict model (flavors: {kinds}; no {key} artifact); "
                            "refusing to load it, since that could run code stored with it. Retrain it with "
                            "this version of cxrstudy")
        paths.append(path)
    return paths[0], paths[1]


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


def load_trained(model_uri: str, *, data_root: str | None = None, cache_dir: str | None = None,
                 roots: tuple = ()) -> TrainedModel:
    """Load a model from the registry (or a run) with its label, threshold and data spec.

    A run logs its data spec without paths (``DataSpec.to_log_dict``): for a model trained on
    real data, ``data_root`` (and ``roots``, ((hospital, path), ...), where the run had them) say
    where its images are on this machine."""
    model, uri, run_id = load_model(model_uri)
    if run_id is None:
        raise DataError(f"model {uri}: cannot find the training run that produced it")
    data = MlflowClient().get_run(run_id).data
    params, metrics = data.params, data.metrics
    try:
        logged = json.loads(params["cfg.data_spec"])
        label, envs = params["cfg.label"], json.loads(params["cfg.envs"])
        threshold = float(metrics["threshold"])
    except KeyError as e:
        raise DataError(f"model {uri}: its run {run_id} lacks {e}; was it trained by cxrstudy's train entry point?") \
            from None
    given = dict(roots or ())
    missing = (["data_root"] if logged.get("data_root") == PATH_NOT_LOGGED and not data_root else []) + \
        [f"roots {env}=<path>" for env, p in (logged.get("roots") or {}).items()
         if p == PATH_NOT_LOGGED and env not in given]
    if missing:
        raise DataError(f"model {uri} was trained on real data and its run logs no paths: give "
                        f"{' and '.join(missing)} (where its images are on this machine)")
    spec = DataSpec.from_dict({**logged, "roots": {**(logged.get("roots") or {}), **given}}, data_root=data_root,
                              cache_dir=cache_dir)
    return TrainedModel(uri=uri, model=model, run_id=run_id, label=label, envs=envs, threshold=threshold, spec=spec)
