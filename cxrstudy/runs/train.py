"""One tracked training run: reuse a finished one, resume an interrupted one, or train anew.

A run is identified by the content hash of its resolved configuration and of the data's
fingerprint (tag ``cxrstudy.config_hash``; the fingerprint alone is tag ``cxrstudy.data_fingerprint``). ``run_training`` first looks for a FINISHED run with that hash and,
unless forced, returns it without training (so is a run whose registered model version is READY,
whatever its status). Otherwise it takes the configuration's lock file (shared through the cache)
and then its claim on the tracking server (shared by every process that uses the server, caches
shared or not), waiting while another process or machine trains the same configuration and
reusing its run when it finishes, marks RUNNING runs left by dead processes
FAILED, and trains, resuming from the local
checkpoint of an earlier interrupted attempt (``<cache_dir>/checkpoints/<hash>/last.pt``; one that
does not load is replaced by the copy on the tracking server, else discarded),
logs parameters, data counts, dataset inputs, per-validation metrics and system metrics, and
finally logs the best model and registers it (alias ``latest``), and deletes the resumable
checkpoints of the configuration's runs from the tracking server.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient

from cxrstudy.tracking import keys
from cxrstudy.tracking import runs as tracking
from cxrstudy.tracking.claims import ServerClaim, claim_key
from cxrstudy.tracking.registry import (describe_version, has_safe_model, log_and_register, restore_version_metadata,
                                       version_tags)
from cxrstudy.train.config import TrainConfig, config_from_params, force_from_params
from cxrstudy.train.device import check_batch_fits, pick_device
from cxrstudy.train.loop import discard_damaged_checkpoint, prepare_data, train_model, validation_metrics
from cxrstudy.data.cache import check_cache_dir
from cxrstudy.data.dataspec import check_cache_fits
from cxrstudy.params import optional
from cxrstudy.train.lock import TrainLock
from cxrstudy.train.models import build_model, check_pretrained
from cxrstudy.train.registry import method_suffix


def checkpoint_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.data.cache_dir) / "checkpoints" / cfg.content_hash()


def training_lock(cfg: TrainConfig) -> TrainLock:
    """The per-configuration lock, ``<cache_dir>/checkpoints/<hash>.lock`` (beside the checkpoint
    folder, which a finished or forced run deletes): shared by every process and machine that
    shares the cache (:mod:`cxrstudy.train.lock`)."""
    return TrainLock(checkpoint_dir(cfg).with_name(cfg.content_hash() + ".lock"))


def training_claim(cfg: TrainConfig) -> ServerClaim:
    """The per-configuration claim on the tracking server (:mod:`cxrstudy.tracking.claims`), taken
    after the lock file: shared by every process that shares the server, even without the cache."""
    return ServerClaim(claim_key("train", cfg.content_hash()), what=f"training {name_of(cfg)} ({cfg.content_hash()})")


def preflight(cfg: TrainConfig) -> None:
    """Checks that need no data and no tracking store, run before any work: a usable cache_dir and
    loadable pretrained weights (one UsageError line, exit 2)."""
    check_cache_dir(cfg.data.cache_dir)
    check_pretrained(cfg.backbone, cfg.pretrained)


def find_by_hash(config_hash: str, experiment_ids=None):
    """The newest FINISHED training run tagged with this configuration hash in any experiment, or None
    (the hash covers everything that determines the model, data included, so any such run will do)."""
    runs = tracking.search_all_experiments(
        f"tags.`{keys.CONFIG_HASH_TAG}` = '{config_hash}' and attributes.status = 'FINISHED'", experiment_ids)
    return runs[0] if runs else None


def finished_hashes(hashes) -> set[str]:
    """Which of the configuration hashes ``hashes`` have a FINISHED training run in any experiment:
    one paged search over the store's finished training runs instead of one search per hash (a
    study's check of what is left to train, which a re-run of ``make demo`` makes for its 90 models)."""
    wanted = set(hashes)
    client = MlflowClient()
    ids = [e.experiment_id for e in client.search_experiments()]
    found, token = set(), None
    query = f"tags.`{keys.ENTRY_TAG}` = '{keys.ENTRY_TRAIN}' and attributes.status = 'FINISHED'"
    while ids:
        page = client.search_runs(ids, query, max_results=5000, page_token=token)
        found |= {r.data.tags.get(keys.CONFIG_HASH_TAG) for r in page} & wanted
        token = page.token
        if not token or found == wanted:
            break
    return found


def find_trained(cfg: TrainConfig, experiment_ids=None):
    """The FINISHED training run of ``cfg``, or None.

    A run trained before the data fingerprint was part of the identity carries the older hash
    (:meth:`TrainConfig.legacy_hash`). It is reused only when the data it logged as inputs (the
    cache keys of its train and val entries, which cover the source fingerprint and the rows) are
    exactly today's and its model is in the safe format (:func:`registry.has_safe_model`); it is then
    tagged with the current hash and fingerprint so the next lookup is direct. A legacy run whose
    inputs differ, that logged none, or whose model is a pickle (every model registered before
    the safe format) is not reused: ``cfg`` retrains.
    """
    run = find_by_hash(cfg.content_hash(), experiment_ids)
    if run is not None:
        return run
    run = find_registered_unfinished(cfg.content_hash(), experiment_ids)
    if run is not None:
        return run
    legacy_hash = cfg.legacy_hash()
    legacy = find_by_hash(legacy_hash, experiment_ids) if legacy_hash else None
    if legacy is None or not legacy_inputs_match(legacy.info.run_id, cfg) or not has_safe_model(legacy):
        return None
    MlflowClient().set_tag(legacy.info.run_id, keys.CONFIG_HASH_TAG, cfg.content_hash())
    MlflowClient().set_tag(legacy.info.run_id, keys.DATA_FINGERPRINT_TAG, cfg.data_fingerprint())
    return MlflowClient().get_run(legacy.info.run_id)


def registered_version_of(run):
    """``(name, version)`` of the READY model version registered from ``run``, or None: from the run's
    ``registered_model``/``registered_version`` tags, else from the registry's record of the run."""
    client = MlflowClient()
    name, version = run.data.tags.get(keys.REGISTERED_MODEL_TAG), run.data.tags.get(keys.REGISTERED_VERSION_TAG)
    try:
        if name and version:
            mv = client.get_model_version(name, version)
            return (name, int(version)) if mv.status == "READY" and mv.run_id in (None, "", run.info.run_id) else None
        ready = [mv for mv in client.search_model_versions(f"run_id = '{run.info.run_id}'") if mv.status == "READY"]
    except MlflowException:
        return None
    if not ready:
        return None
    mv = max(ready, key=lambda m: int(m.version))
    return mv.name, int(mv.version)


def find_registered_unfinished(config_hash: str, experiment_ids=None):
    """A training run of this hash that is not FINISHED (killed after registering its model, or
    marked FAILED by whoever saw it die) but whose registered model version is READY: its work is
    complete, so it is marked FINISHED (tagged with its version) and returned for reuse."""
    runs = tracking.search_all_experiments(
        f"tags.`{keys.CONFIG_HASH_TAG}` = '{config_hash}' and attributes.status != 'FINISHED'", experiment_ids)
    client = MlflowClient()
    for run in runs:
        found = registered_version_of(run)
        if found is None:
            continue
        client.set_tag(run.info.run_id, keys.REGISTERED_MODEL_TAG, found[0])
        client.set_tag(run.info.run_id, keys.REGISTERED_VERSION_TAG, str(found[1]))
        client.set_terminated(run.info.run_id, "FINISHED")
        print(f"run {run.info.run_id} was {run.info.status} but its model {found[0]} v{found[1]} is registered "
              "and READY: marked FINISHED and reused", file=sys.stderr)
        delete_server_checkpoints(config_hash, run.info.run_id)  # killed before it could delete them itself
        return client.get_run(run.info.run_id)
    return None


def fail_stale_runs(config_hash: str, keep=()) -> list[str]:
    """Mark RUNNING training runs of this hash FAILED, with the reason in tag FAILED_REASON_TAG.

    Call only while holding the configuration's lock and server claim: then no live process is training it, so a
    RUNNING run of it was left by a process that died (kill -9, power loss). ``keep``: run ids not
    to touch (the run ``mlflow run`` opened for this process)."""
    marked = tracking.mark_orphans_failed(
        keys.CONFIG_HASH_TAG, config_hash, keep=keep,
        reason="stale: RUNNING while no process held the configuration's training lock (its process died); "
               "marked FAILED by the next run of the same configuration")
    if marked:
        print(f"marked {len(marked)} stale RUNNING run(s) of this configuration FAILED: {', '.join(marked)}",
              file=sys.stderr)
    return marked


def legacy_inputs_match(run_id: str, cfg: TrainConfig) -> bool:
    """Whether the dataset inputs a run logged are exactly the cache entries ``cfg`` would train on."""
    inputs = MlflowClient().get_run(run_id).inputs
    logged = sorted(d.dataset.digest for d in (inputs.dataset_inputs if inputs else []))
    if not logged:
        return False
    wanted = sorted(cfg.data.entry_key(e, split) for e in cfg.envs for split in ("train", "val"))
    return logged == wanted


def name_of(cfg: TrainConfig) -> str:
    """How train names a configuration in messages: the registered name and the seed."""
    return f"{cfg.model_name()} seed {cfg.seed}"


def run_name_of(cfg: TrainConfig) -> str:
    """train-<envs>-<label>-<balance>[-<method>]-s<seed> (ERM's names are those from before methods)."""
    method = method_suffix(cfg.method)
    return f"train-{'+'.join(cfg.envs)}-{cfg.label.replace(' ', '_')}-{cfg.balance}{method}-s{cfg.seed}"


def _tags(cfg: TrainConfig) -> dict:
    return {
        keys.ENTRY_TAG: keys.ENTRY_TRAIN,
        "envs": ",".join(cfg.envs),
        "label": cfg.label,
        "balance": cfg.balance,
        keys.METHOD_TAG: cfg.method,
        "seed": str(cfg.seed),
        "source": cfg.data.source,
        "n_envs": str(len(cfg.envs)),
    }


def train_from_params(raw: dict) -> dict:
    """The ``train`` entry point's body for its parameters ``raw`` (strings, as MLproject passes them):
    every check that can fail before any work, then :func:`run_training`; prints the reused model's
    line. The entry point and the local launcher's persistent workers both run this."""
    cfg = config_from_params(raw)
    force = force_from_params(raw)
    dev = pick_device(raw["device"])  # a clear error before any work
    preflight(cfg)  # cache_dir writable, pretrained weights loadable
    check_cache_fits([cfg.data], cfg.envs)  # the image cache fits on the disk
    check_batch_fits(cfg.batch_size, cfg.image_size, dev)  # one batch fits in memory
    tracking.setup()
    result = run_training(cfg, force=force, device=raw["device"], parent_run_id=optional(raw["parent_run_id"]))
    if result.get("reused"):  # a fresh model's line was printed by run_training
        print(describe_version(result["registered_model"], result["registered_version"]))
    return result


def run_training(cfg: TrainConfig, *, force: bool = False, device: str = "auto", progress: bool = True,
                 parent_run_id: str | None = None) -> dict:
    """Train (or reuse) the model for ``cfg``; returns run id, registered name/version, model URI.

    Unless forced, a run of this configuration that is FINISHED, or whose registered version is
    READY, is reused. Otherwise it checks cache_dir and pretrained (:func:`preflight`),
    takes the configuration's lock (:func:`training_lock`), waiting while another process or
    machine trains the same configuration, and reuses that one's run when it finishes. Holding the
    lock, it marks RUNNING runs of the configuration left by dead processes FAILED, then trains."""
    if not force:
        done = find_trained(cfg)
        if done is not None:
            return _reuse(cfg, done, progress)
    preflight(cfg)  # before the lock (it lives in cache_dir) and before any data or run
    lock = training_lock(cfg)

    def finished_elsewhere():
        return not force and find_trained(cfg) is not None

    def waiting(holder):
        if progress:
            print(f"waiting: {holder} is training the same configuration ({cfg.content_hash()})", file=sys.stderr,
                  flush=True)

    while not lock.acquire(stop=finished_elsewhere, on_wait=waiting):
        done = find_trained(cfg)
        if done is not None:
            return _reuse(cfg, done, progress)
    try:
        claim = training_claim(cfg)  # then the server's claim: processes that share no cache meet there
        while not claim.acquire(stop=finished_elsewhere, on_wait=waiting):
            done = find_trained(cfg)
            if done is not None:
                return _reuse(cfg, done, progress)
        with claim:
            if not force:
                done = find_trained(cfg)  # finished while we took the lock
                if done is not None:
                    return _reuse(cfg, done, progress)
            fail_stale_runs(cfg.content_hash(), keep={os.environ.get("MLFLOW_RUN_ID")})
            return _train_holding_lock(cfg, force=force, device=device, progress=progress,
                                       parent_run_id=parent_run_id)
    finally:
        lock.release()


def _reuse(cfg: TrainConfig, done, progress: bool) -> dict:
    """The result of reusing run ``done``; under ``mlflow run``, its own run records what it reused,
    with the model version (so it leads to the model in the UI). The version's description and
    aliases are set if a kill right after its registration left them unset."""
    tags = done.data.tags
    name, version = tags.get(keys.REGISTERED_MODEL_TAG), tags.get(keys.REGISTERED_VERSION_TAG)
    if name and version:
        try:
            fixed = restore_version_metadata(name, int(version))
        except MlflowException as e:  # the registry refused (a version deleted by hand): reuse it as it is
            fixed = []
            print(f"warning: could not check the aliases of {name} v{version}: {(str(e).strip().splitlines() or [''])[0]}",
                  file=sys.stderr)
        if fixed:
            print(f"model {name} v{version}: set {', '.join(fixed)}, left unset when its run was interrupted",
                  file=sys.stderr)
    result = {"run_id": done.info.run_id, "registered_model": name,
              "registered_version": int(version or 0),
              "model_uri": f"models:/{name}/{version}",
              "reused": True, "constant": done.data.metrics.get("val/constant_model", 0.0) >= 1.0,
              # runs from before the convergence rule carry no "converged" metric: not flagged
              "converged": done.data.metrics.get("converged", 1.0) >= 1.0}
    if mlflow.active_run() is None and os.environ.get("MLFLOW_RUN_ID"):
        # `mlflow run` already opened a run for us: record what it reused, then finish it.
        reused = {keys.REUSED_RUN_TAG: done.info.run_id, keys.REUSED_CONFIG_HASH_TAG: cfg.content_hash()}
        if name and version:
            reused.update({keys.REGISTERED_MODEL_TAG: name, keys.REGISTERED_VERSION_TAG: str(version)})
        with tracking.run(run_name=run_name_of(cfg), tags={keys.ENTRY_TAG: keys.ENTRY_TRAIN, **reused}):
            tracking.mark_synthetic(cfg.data.is_synthetic)
    if progress:
        print(f"already trained: run {done.info.run_id} ({result['model_uri']}); pass force=true to retrain",
              file=sys.stderr)
    return result


def _train_holding_lock(cfg: TrainConfig, *, force: bool, device: str, progress: bool,
                        parent_run_id: str | None) -> dict:
    h = cfg.content_hash()
    run_name = run_name_of(cfg)
    ck_dir = checkpoint_dir(cfg)
    if force and ck_dir.exists():
        shutil.rmtree(ck_dir)
    if not force:
        # a local checkpoint truncated by a kill or a full disk is discarded: the server's copy is as good
        damaged = discard_damaged_checkpoint(ck_dir / "last.pt")
        restored = restore_server_checkpoint(h, ck_dir, progress=progress and not damaged)
        if damaged:
            print(f"warning: the local checkpoint {ck_dir / 'last.pt'} is damaged ({damaged}): discarded; "
                  + (f"resuming from the intact copy of run {restored} on the tracking server" if restored else
                     "no intact copy on the tracking server, so training starts from step 0"),
                  file=sys.stderr, flush=True)
    dev = pick_device(device)
    with tracking.run(run_name=run_name, tags={**_tags(cfg), keys.CONFIG_HASH_TAG: h,
                                                keys.DATA_FINGERPRINT_TAG: cfg.data_fingerprint()}, nested=parent_run_id is not None,
                      parent_run_id=parent_run_id, log_system_metrics=True) as active:
        tracking.mark_synthetic(cfg.data.is_synthetic)
        tracking.log_params({**{k: v for k, v in cfg.to_dict().items() if k != "data"},
                             "source": cfg.data.source, "image_size": cfg.image_size,
                             "data_spec": cfg.data.to_log_dict(), "config_hash": h, "device": str(dev)}, prefix="cfg.")
        data = prepare_data(cfg, progress=progress)
        tracking.log_params({k.replace("/", "."): (round(v, 6) if isinstance(v, float) else v)
                             for k, v in data.counts.items()}, prefix="data.")
        for (_, split), entry in data.entries.items():
            tracking.log_dataset_input(entry, context="train" if split == "train" else "validation")
        # images the cache could not decode (corrupt, truncated) are left out: count them on this run
        skipped = {f"data/{env}/{split}/skipped_images": int(entry.manifest.get("n_skipped", 0))
                   for (env, split), entry in data.entries.items()}
        mlflow.log_metrics({**skipped, "data/skipped_images": sum(skipped.values())})
        if sum(skipped.values()) and progress:
            print(f"{sum(skipped.values())} corrupt or unreadable images left out of training/validation "
                  "(metric data/skipped_images)", file=sys.stderr)
        if (ck_dir / "last.pt").is_file():
            mlflow.set_tag(keys.RESUMED_TAG, "true")

        def on_eval(step, m):
            mlflow.log_metrics(validation_metrics(m), step=step)

        resumed_history = _history(ck_dir)
        for rec in resumed_history:  # a resumed run carries the whole validation history
            on_eval(rec["step"], {k: v for k, v in rec.items() if k != "step"})
        out = train_model(cfg, data, device=dev, checkpoint_dir=ck_dir, on_eval=on_eval,
                          on_checkpoint=checkpoint_uploader(), progress=progress)
        mlflow.log_metrics({**out.metrics(), "converged": float(out.converged(cfg.max_steps))})
        mlflow.set_tag("threshold", f"{out.threshold:.2f}")
        if out.constant:
            mlflow.set_tag(keys.CONSTANT_MODEL_TAG, "true")
        for w in out.warnings(cfg.max_steps):
            print(f"warning: {name_of(cfg)}: {w}", file=sys.stderr, flush=True)
        model = build_model(cfg.backbone, "none")
        model.load_state_dict(out.best_state)
        name = cfg.model_name()
        best_val = out.best_val()
        registered = log_and_register(
            model, name, image_size=cfg.image_size, threshold=out.threshold, label=cfg.label,
            tags=version_tags(label=cfg.label, hospitals=cfg.envs, method=cfg.method,
                              balance=cfg.balance, seed=cfg.seed, threshold=out.threshold, config_hash=h,
                              data_fingerprint=cfg.data_fingerprint(), synthetic=cfg.data.is_synthetic,
                              image_size=cfg.image_size, val_metrics=best_val, best_step=out.best_step),
            metadata={"envs": list(cfg.envs), "config_hash": h})
        version = registered.version
        mlflow.set_tags({keys.REGISTERED_MODEL_TAG: name, keys.REGISTERED_VERSION_TAG: str(version)})
        # the model is registered: no run of this configuration needs its resumable checkpoint any more
        delete_server_checkpoints(h, active.info.run_id)
        tracking.log_json({"config": cfg.to_log_dict(), "config_hash": h, "threshold": out.threshold,
                           "best_step": out.best_step, "history": out.history, "counts": data.counts},
                          "train_summary.json")
        run_id = active.info.run_id
    shutil.rmtree(ck_dir, ignore_errors=True)  # the run is FINISHED: its model is in the registry
    print(f"trained {name} v{version} (run {run_id}); threshold {out.threshold:.2f}, "
          f"best val macro-F1 {out.best_score:.3f} at step {out.best_step}", file=sys.stderr)
    print(registered.line(), flush=True)  # true when printed: its aliases, and which version @latest is
    return {"run_id": run_id, "registered_model": name, "registered_version": version,
            "model_uri": f"models:/{name}/{version}", "reused": False, "constant": out.constant,
            "converged": out.converged(cfg.max_steps), "model_line": registered.line(),
            "aliases": list(registered.aliases)}


def _history(ck_dir: Path) -> list:
    last = ck_dir / "last.pt"
    if not last.is_file():
        return []
    return torch.load(last, map_location="cpu", weights_only=True)["state"]["history"]


#: where a training run keeps its resumable checkpoint on the tracking server (overwritten at each validation)
CHECKPOINT_ARTIFACT_DIR = "checkpoints"
#: a run uploads its resumable checkpoint at its first validation and then at most once in this
#: many seconds: a machine lost mid-run costs at most this much training, and a model that trains in
#: seconds (the cpu preset) sends one or two copies to the server instead of one per validation
UPLOAD_EVERY_S = 30.0


def checkpoint_uploader(every_s: float = UPLOAD_EVERY_S):
    """An ``on_checkpoint`` callback that uploads (:func:`upload_checkpoint`) the first checkpoint and
    then one whenever ``every_s`` seconds have passed since the last upload."""
    last = [-math.inf]

    def upload(path: Path) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s:
            upload_checkpoint(path)
            last[0] = now

    return upload


def upload_checkpoint(path: Path) -> None:
    """Log the resumable checkpoint ``last.pt`` to the active run (``checkpoints/last.pt``), so a run
    killed on one machine can resume on another from the tracking server alone (it is deleted once
    the model is registered: :func:`delete_server_checkpoints`). An upload that
    fails is a warning, not the end of the training: the local checkpoint is still there."""
    try:
        mlflow.log_artifact(str(path), artifact_path=CHECKPOINT_ARTIFACT_DIR)
    except (MlflowException, OSError) as e:
        print(f"warning: could not upload checkpoint {path} to the tracking server: {str(e).splitlines()[0]}",
              file=sys.stderr)


def restore_server_checkpoint(config_hash: str, ck_dir: Path, *, progress: bool = True) -> str | None:
    """With no local ``last.pt``, fetch the newest one that an interrupted (RUNNING, FAILED or KILLED)
    run of this configuration uploaded. Only a file that loads as a checkpoint with
    ``weights_only=True`` is used (a half-written upload is skipped). Returns the run id it came from."""
    last = ck_dir / "last.pt"
    if last.is_file():
        return None
    runs = tracking.search_all_experiments(f"tags.`{keys.CONFIG_HASH_TAG}` = '{config_hash}' and "
                                           "attributes.status != 'FINISHED'")  # RUNNING, FAILED, KILLED or SCHEDULED
    for run in runs:
        with tempfile.TemporaryDirectory(prefix="cxrstudy-ckpt-") as tmp:
            try:
                got = Path(mlflow.artifacts.download_artifacts(
                    run_id=run.info.run_id, artifact_path=f"{CHECKPOINT_ARTIFACT_DIR}/last.pt", dst_path=tmp))
                state = torch.load(got, map_location="cpu", weights_only=True)["state"]
                step = int(state["step"])
            except Exception:  # no checkpoint uploaded, or not a readable one: try the next run
                continue
            ck_dir.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(got, last.with_name("last.pt.tmp"))
            os.replace(last.with_name("last.pt.tmp"), last)
        if progress:
            print(f"resuming from the checkpoint of run {run.info.run_id} (step {step}) on the tracking server",
                  file=sys.stderr)
        return run.info.run_id
    return None


def delete_server_checkpoints(config_hash: str, run_id: str) -> list[str]:
    """Delete the resumable checkpoint (``checkpoints/``) from run ``run_id``, whose model is registered,
    and from the FAILED or KILLED runs of the same configuration (the interrupted attempts it may have
    resumed from): nothing resumes them any more, and each holds a full model with its optimiser state.
    RUNNING runs are left alone. A deletion that fails is a warning. Returns the runs cleaned."""
    client = MlflowClient()
    runs = [client.get_run(run_id)] + [
        r for r in tracking.search_all_experiments(f"tags.`{keys.CONFIG_HASH_TAG}` = '{config_hash}' and "
                                                   "attributes.status != 'FINISHED' and attributes.status != 'RUNNING'")
        if r.info.run_id != run_id]
    cleaned = []
    for run in runs:
        try:
            if not client.list_artifacts(run.info.run_id, CHECKPOINT_ARTIFACT_DIR):
                continue
            get_artifact_repository(run.info.artifact_uri).delete_artifacts(CHECKPOINT_ARTIFACT_DIR)
            cleaned.append(run.info.run_id)
        except (MlflowException, OSError) as e:
            print(f"warning: could not delete the checkpoint of run {run.info.run_id} from the tracking server "
                  f"({(str(e).strip().splitlines() or [type(e).__name__])[0]}); it is not needed any "
                  "more", file=sys.stderr)
    return cleaned
