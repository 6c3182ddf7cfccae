"""One tracked training run: reuse a finished one, resume an interrupted one, or train anew.

A run is identified by the content hash of its resolved configuration (tag
``cxrstudy.config_hash``). ``run_training`` first looks for a FINISHED run with that hash and,
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

from . import tracking
from .config import TrainConfig
from .dataspec import log_entry_input
from .models import build_model
from .registry import log_and_register
from .trainer import pick_device, prepare_data, train_model, validation_metrics

HASH_TAG = "cxrstudy.config_hash"


def checkpoint_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.data.cache_dir) / "checkpoints" / cfg.content_hash()


def find_finished(config_hash: str, experiment_ids=None):
    """The newest FINISHED training run with this configuration hash in any experiment, or None
    (the hash covers everything that determines the model, so any such run will do)."""
    runs = search_training_runs(f"tags.`{HASH_TAG}` = '{config_hash}' and attributes.status = 'FINISHED'",
                                experiment_ids)
    return runs[0] if runs else None


def search_training_runs(filter_string: str, experiment_ids=None):
    client = MlflowClient()
    experiment_ids = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiment_ids, filter_string, order_by=["attributes.start_time DESC"],
                                      max_results=50)


def _tags(cfg: TrainConfig) -> dict:
    return {
        "cxrstudy.entry": "train",
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
        done = find_finished(h)
        if done is not None:
            tags = done.data.tags
            result = {"run_id": done.info.run_id, "registered_model": tags.get("registered_model"),
                      "registered_version": int(tags.get("registered_version", 0)),
                      "model_uri": f"models:/{tags.get('registered_model')}/{tags.get('registered_version')}",
                      "reused": True}
            if mlflow.active_run() is None and os.environ.get("MLFLOW_RUN_ID"):
                # `mlflow run` already opened a run for us: record what it reused, then finish it.
                with tracking.run(run_name=run_name, tags={"cxrstudy.entry": "train",
                                                            "cxrstudy.reused_run": done.info.run_id,
                                                            "cxrstudy.reused_config_hash": h}):
                    tracking.mark_synthetic(cfg.data.is_synthetic)
            if progress:
                print(f"already trained: run {done.info.run_id} ({result['model_uri']}); pass force=true to retrain",
                      file=sys.stderr)
            return result
    ck_dir = checkpoint_dir(cfg)
    if force and ck_dir.exists():
        shutil.rmtree(ck_dir)
    dev = pick_device(device)
    with tracking.run(run_name=run_name, tags={**_tags(cfg), HASH_TAG: h}, nested=parent_run_id is not None,
                      parent_run_id=parent_run_id, log_system_metrics=True) as active:
        tracking.mark_synthetic(cfg.data.is_synthetic)
        tracking.log_params({**{k: v for k, v in cfg.to_dict().items() if k != "data"},
                             "source": cfg.data.source, "image_size": cfg.image_size,
                             "data_spec": cfg.data.to_dict(), "config_hash": h, "device": str(dev)}, prefix="cfg.")
        data = prepare_data(cfg, progress=progress)
        tracking.log_params({k.replace("/", "."): (round(v, 6) if isinstance(v, float) else v)
                             for k, v in data.counts.items()}, prefix="data.")
        for (_, split), entry in data.entries.items():
            log_entry_input(entry, context="train" if split == "train" else "validation")
        if (ck_dir / "last.pt").is_file():
            mlflow.set_tag("cxrstudy.resumed", "true")

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
