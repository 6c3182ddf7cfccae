"""One tracked training run: reuse a finished one, resume an interrupted one, or train anew.

A run is identified by the content hash of its resolved configuration and of the data's
fingerprint (tag ``cxrstudy.config_hash``; the fingerprint alone is tag ``cxrstudy.data_fingerprint``). ``run_training`` first looks for a FINISHED run with that hash and,
unless forced, returns it without training. Otherwise it trains, resuming from the local
checkpoint of an earlier interrupted attempt (``<cache_dir>/checkpoints/<hash>/last.pt``),
logs parameters, data counts, dataset inputs, per-validation metrics and system metrics, and
finally logs the best model and registers it (alias ``latest``).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import mlflow
import torch
from mlflow.tracking import MlflowClient

from cxrstudy.tracking import keys
from cxrstudy.tracking import runs as tracking
from cxrstudy.tracking.registry import log_and_register
from cxrstudy.train.config import TrainConfig
from cxrstudy.train.device import pick_device
from cxrstudy.train.loop import prepare_data, train_model, validation_metrics
from cxrstudy.train.models import build_model


def checkpoint_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.data.cache_dir) / "checkpoints" / cfg.content_hash()


def find_by_hash(config_hash: str, experiment_ids=None):
    """The newest FINISHED training run tagged with this configuration hash in any experiment, or None
    (the hash covers everything that determines the model, data included, so any such run will do)."""
    runs = search_training_runs(f"tags.`{keys.CONFIG_HASH_TAG}` = '{config_hash}' and attributes.status = 'FINISHED'",
                                experiment_ids)
    return runs[0] if runs else None


def find_trained(cfg: TrainConfig, experiment_ids=None):
    """The FINISHED training run of ``cfg``, or None.

    A run trained before the data fingerprint was part of the identity carries the older hash
    (:meth:`TrainConfig.legacy_hash`). It is reused only when the data it logged as inputs (the
    cache keys of its train and val entries, which cover the source fingerprint and the rows) are
    exactly today's; it is then tagged with the current hash and fingerprint so the next lookup is
    direct. A legacy run whose inputs differ, or that logged none, is not reused: ``cfg`` retrains.
    """
    run = find_by_hash(cfg.content_hash(), experiment_ids)
    if run is not None:
        return run
    legacy = find_by_hash(cfg.legacy_hash(), experiment_ids)
    if legacy is None or not legacy_inputs_match(legacy.info.run_id, cfg):
        return None
    MlflowClient().set_tag(legacy.info.run_id, keys.CONFIG_HASH_TAG, cfg.content_hash())
    MlflowClient().set_tag(legacy.info.run_id, keys.DATA_FINGERPRINT_TAG, cfg.data_fingerprint())
    return MlflowClient().get_run(legacy.info.run_id)


def legacy_inputs_match(run_id: str, cfg: TrainConfig) -> bool:
    """Whether the dataset inputs a run logged are exactly the cache entries ``cfg`` would train on."""
    inputs = MlflowClient().get_run(run_id).inputs
    logged = sorted(d.dataset.digest for d in (inputs.dataset_inputs if inputs else []))
    if not logged:
        return False
    wanted = sorted(cfg.data.entry_key(e, split) for e in cfg.envs for split in ("train", "val"))
    return logged == wanted


def search_training_runs(filter_string: str, experiment_ids=None):
    client = MlflowClient()
    experiment_ids = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiment_ids, filter_string, order_by=["attributes.start_time DESC"],
                                      max_results=50)


def _tags(cfg: TrainConfig) -> dict:
    return {
        keys.ENTRY_TAG: keys.ENTRY_TRAIN,
        "envs": ",".join(cfg.envs),
        "label": cfg.label,
        "balance": cfg.balance,
        "seed": str(cfg.seed),
        "source": cfg.data.source,
        "n_envs": str(len(cfg.envs)),
    }


def run_training(cfg: TrainConfig, *, force: bool = False, device: str = "auto", progress: bool = True,
                 parent_run_id: str | None = None) -> dict:
    """Train (or reuse) the model for ``cfg``; returns run id, registered name/version, model URI."""
    h = cfg.content_hash()
    run_name = f"train-{'+'.join(cfg.envs)}-{cfg.label.replace(' ', '_')}-{cfg.balance}-s{cfg.seed}"
    if not force:
        done = find_trained(cfg)
        if done is not None:
            tags = done.data.tags
            result = {"run_id": done.info.run_id, "registered_model": tags.get("registered_model"),
                      "registered_version": int(tags.get("registered_version", 0)),
                      "model_uri": f"models:/{tags.get('registered_model')}/{tags.get('registered_version')}",
                      "reused": True}
            if mlflow.active_run() is None and os.environ.get("MLFLOW_RUN_ID"):
                # `mlflow run` already opened a run for us: record what it reused, then finish it.
                with tracking.run(run_name=run_name, tags={keys.ENTRY_TAG: keys.ENTRY_TRAIN,
                                                            keys.REUSED_RUN_TAG: done.info.run_id,
                                                            keys.REUSED_CONFIG_HASH_TAG: h}):
                    tracking.mark_synthetic(cfg.data.is_synthetic)
            if progress:
                print(f"already trained: run {done.info.run_id} ({result['model_uri']}); pass force=true to retrain",
                      file=sys.stderr)
            return result
    ck_dir = checkpoint_dir(cfg)
    if force and ck_dir.exists():
        shutil.rmtree(ck_dir)
    dev = pick_device(device)
    with tracking.run(run_name=run_name, tags={**_tags(cfg), keys.CONFIG_HASH_TAG: h,
                                                keys.DATA_FINGERPRINT_TAG: cfg.data_fingerprint()}, nested=parent_run_id is not None,
                      parent_run_id=parent_run_id, log_system_metrics=True) as active:
        tracking.mark_synthetic(cfg.data.is_synthetic)
        tracking.log_params({**{k: v for k, v in cfg.to_dict().items() if k != "data"},
                             "source": cfg.data.source, "image_size": cfg.image_size,
                             "data_spec": cfg.data.to_dict(), "config_hash": h, "device": str(dev)}, prefix="cfg.")
        data = prepare_data(cfg, progress=progress)
        tracking.log_params({k.replace("/", "."): (round(v, 6) if isinstance(v, float) else v)
                             for k, v in data.counts.items()}, prefix="data.")
        for (_, split), entry in data.entries.items():
            tracking.log_dataset_input(entry, context="train" if split == "train" else "validation")
        if (ck_dir / "last.pt").is_file():
            mlflow.set_tag(keys.RESUMED_TAG, "true")

        def on_eval(step, m):
            mlflow.log_metrics(validation_metrics(m), step=step)

        resumed_history = _history(ck_dir)
        for rec in resumed_history:  # a resumed run carries the whole validation history
            on_eval(rec["step"], {k: v for k, v in rec.items() if k != "step"})
        out = train_model(cfg, data, device=dev, checkpoint_dir=ck_dir, on_eval=on_eval, progress=progress)
        mlflow.log_metrics(out.metrics())
        mlflow.set_tag("threshold", f"{out.threshold:.2f}")
        model = build_model(cfg.backbone, "none")
        model.load_state_dict(out.best_state)
        name = cfg.model_name()
        model_uri, version = log_and_register(
            model, name, cfg.image_size,
            metadata={"threshold": out.threshold, "label": cfg.label, "envs": list(cfg.envs),
                      "config_hash": h, "image_size": cfg.image_size})
        mlflow.set_tags({"registered_model": name, "registered_version": str(version)})
        tracking.log_json({"config": cfg.to_dict(), "config_hash": h, "threshold": out.threshold,
                           "best_step": out.best_step, "history": out.history, "counts": data.counts},
                          "train_summary.json")
        run_id = active.info.run_id
    shutil.rmtree(ck_dir, ignore_errors=True)  # the run is FINISHED: its model is in the registry
    print(f"trained {name} v{version} (run {run_id}); threshold {out.threshold:.2f}, "
          f"best val macro-F1 {out.best_score:.3f} at step {out.best_step}", file=sys.stderr)
    return {"run_id": run_id, "registered_model": name, "registered_version": version,
            "model_uri": f"models:/{name}/{version}", "reused": False}


def _history(ck_dir: Path) -> list:
    last = ck_dir / "last.pt"
    if not last.is_file():
        return []
    return torch.load(last, map_location="cpu", weights_only=True)["state"]["history"]
