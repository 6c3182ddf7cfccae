"""MLflow helpers: tracking URI, server reachability, runs, tags, safe parameter logging."""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import mlflow

from cxrstudy.errors import DataError
from cxrstudy.tracking import keys
from cxrstudy.tracking.races import retry_lost_race

SYNTHETIC_BANNER = (
    "*** SYNTHETIC DATA: these hospitals are procedurally rendered by cxrstudy; "
    "results say nothing about real patients. ***"
)


def tracking_uri() -> str:
    """The tracking URI in use: ``MLFLOW_TRACKING_URI``, else ``sqlite:///<cwd>/mlflow.db`` (absolute,
    so runs do not 'disappear' when the working directory changes)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = f"sqlite:///{Path.cwd() / 'mlflow.db'}"
        os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    return uri


def check_tracking_server(uri: str | None = None, timeout: float = 5.0) -> None:
    """Fail fast with one clear message when an HTTP tracking server does not answer."""
    uri = uri or tracking_uri()
    if not uri.startswith(("http://", "https://")):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            if r.status != 200:
                raise DataError(f"MLflow tracking server {uri} answered {r.status} on /health; expected 200")
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise DataError(
            f"MLflow tracking server {uri} is unreachable ({reason}); start it or set MLFLOW_TRACKING_URI"
        ) from None


def setup(experiment: str | None = None) -> str:
    """Point MLflow at the tracking store, check it answers, and choose the experiment.

    The experiment is the one ``mlflow run`` chose (``--experiment-name``), else
    ``MLFLOW_EXPERIMENT_NAME``/``MLFLOW_EXPERIMENT_ID``, else ``experiment``, else MLflow's
    ``Default`` -- the same place ``mlflow run`` puts runs, so both ways of starting an entry
    point see each other's runs. Inside ``mlflow run`` never call ``set_experiment``
    (MLflow raises an experiment/run-id mismatch). A named experiment that does not exist yet is
    created here, safely when several processes start at once (:func:`get_or_create_experiment`).
    """
    uri = tracking_uri()
    check_tracking_server(uri)
    name = experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name and not os.environ.get("MLFLOW_RUN_ID") and not os.environ.get("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(experiment_id=get_or_create_experiment(name))
    return uri


def get_or_create_experiment(name: str) -> str:
    """The id of experiment ``name``, created if missing. Idempotent under concurrency: when another
    process creates it between our look and our create (two ``main`` started at once on a new
    experiment), its experiment is used instead of failing with RESOURCE_ALREADY_EXISTS."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException as e:
        if str(getattr(e, "error_code", "")) != "RESOURCE_ALREADY_EXISTS":
            raise
    exp = client.get_experiment_by_name(name)
    if exp is None:
        raise DataError(f"experiment {name!r} exists on {mlflow.get_tracking_uri()} but cannot be read")
    return exp.experiment_id


def resolve_experiment(value: str, *, runs_too: bool = False):
    """An experiment name or id -> the experiment (UsageError when there is none); with ``runs_too``,
    a run id (e.g. a ``main`` run's) names the experiment the run is in."""
    from mlflow.exceptions import MlflowException

    from cxrstudy.errors import UsageError

    value = str(value).strip()
    exp = mlflow.get_experiment_by_name(value)
    if exp is None and value.isdigit():
        try:
            exp = mlflow.get_experiment(value)
        except MlflowException:
            exp = None
    if exp is None and runs_too and len(value) == 32 and all(c in "0123456789abcdef" for c in value):
        try:
            exp = mlflow.get_experiment(mlflow.get_run(value).info.experiment_id)
        except MlflowException:
            exp = None
    if exp is None:
        names = [e.name for e in mlflow.search_experiments(max_results=20)]
        raise UsageError(f"no experiment named or numbered {value!r}; existing: {', '.join(names) or 'none'}")
    return exp


def current_experiment_id() -> str:
    """The experiment runs go to: the active run's, ``mlflow run``'s, or the one ``setup`` chose."""
    active = mlflow.active_run()
    if active is not None:
        return active.info.experiment_id
    if os.environ.get("MLFLOW_EXPERIMENT_ID"):
        return os.environ["MLFLOW_EXPERIMENT_ID"]
    if os.environ.get("MLFLOW_RUN_ID"):
        return mlflow.get_run(os.environ["MLFLOW_RUN_ID"]).info.experiment_id
    from mlflow.tracking.fluent import _get_experiment_id

    return _get_experiment_id()  # honours set_experiment and MLFLOW_EXPERIMENT_NAME, else Default


def find_finished(tag: str, value: str):
    """The newest FINISHED run of the current experiment whose ``tag`` equals ``value``, or None
    (how compare and probe reuse work already done)."""
    from mlflow.tracking import MlflowClient

    runs = MlflowClient().search_runs([current_experiment_id()],
                                      f"tags.`{tag}` = '{value}' and attributes.status = 'FINISHED'",
                                      order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def search_all_experiments(filter_string: str, experiment_ids=None):
    """The runs matching ``filter_string`` in ``experiment_ids`` (default: every experiment), newest
    first, at most 50 (how a configuration's runs are found wherever they were logged)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    experiment_ids = experiment_ids or [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(experiment_ids, filter_string, order_by=["attributes.start_time DESC"], max_results=50)


def mark_orphans_failed(tag: str, value: str, *, also: str = "", status: str = "FAILED", reason: str | None = None,
                        keep=()) -> list[str]:
    """End the RUNNING runs (in any experiment) whose tag ``tag`` is ``value``: their process died
    (killed, out of memory, a cancelled Slurm task) or was stopped, and cannot end them itself.

    ``status``: FAILED, or KILLED for a run stopped on purpose; ``reason`` goes in tag
    FAILED_REASON_TAG when given; ``also``: more of the filter (`` and ...``); ``keep``: run ids
    to leave alone. Returns the ids of the runs ended."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    ended = []
    for r in search_all_experiments(f"tags.`{tag}` = '{value}' and attributes.status = 'RUNNING'" + also):
        if r.info.run_id in keep:
            continue
        if reason:
            client.set_tag(r.info.run_id, keys.FAILED_REASON_TAG, reason)
        client.set_terminated(r.info.run_id, status)
        ended.append(r.info.run_id)
    return ended


@contextmanager
def run(run_name: str | None = None, *, tags: dict | None = None, nested: bool = False, parent_run_id=None,
        log_system_metrics: bool | None = None):
    """Start (or, under ``mlflow run``, continue) a run; end it FAILED/KILLED on any exception."""
    kwargs = dict(run_name=run_name, tags=tags, nested=nested, log_system_metrics=log_system_metrics)
    if parent_run_id:
        kwargs["parent_run_id"] = parent_run_id
    active = mlflow.start_run(**kwargs)
    try:
        yield active
    except KeyboardInterrupt:
        mlflow.end_run("KILLED")
        raise
    except BaseException:
        mlflow.end_run("FAILED")
        raise
    else:
        mlflow.end_run("FINISHED")


def mark_synthetic(is_synthetic: bool) -> None:
    """Tag the active run with its data kind; print a banner when the data is synthetic (once
    per top-level run: nested runs of a study are tagged without repeating it)."""
    mlflow.set_tag(keys.SYNTHETIC_TAG, str(bool(is_synthetic)).lower())
    active = mlflow.active_run()
    nested = active is not None and "mlflow.parentRunId" in active.data.tags
    if is_synthetic and not nested:
        print(SYNTHETIC_BANNER, file=sys.stderr, flush=True)


def log_params(params: dict, prefix: str = "") -> None:
    """Log parameters, skipping keys already logged with the same value (``mlflow run`` logs
    the raw ``-P`` values first; resolved values go under other keys, e.g. ``cfg.``)."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params if run else {}
    out = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        val = json.dumps(v) if isinstance(v, (dict, list, tuple)) else str(v)
        if existing.get(key) == val[:6000]:
            continue
        out[key] = val[:6000]
    if out:
        mlflow.log_params(out)


def log_json(obj, name: str) -> None:
    mlflow.log_text(json.dumps(obj, indent=1, default=str), name)


def log_dataset_input(entry, context: str) -> None:
    """Record a cache entry as an MLflow dataset input (schema, counts and digest; no pixels, no paths).

    The dataset's source is the entry's place inside the cache (``<source kind>/<hospital>/<entry>``),
    never the cache's absolute path on this machine."""
    import warnings

    meta = entry.index.drop(columns=["path"])
    with warnings.catch_warnings():  # MLflow's hints about source kinds and integer columns: not actionable here
        warnings.simplefilter("ignore", UserWarning)
        ds = mlflow.data.from_pandas(meta, source=entry.place, digest=entry.key,
                                     name=f"{entry.manifest['env']}-{entry.manifest['split']}-{entry.size}px")
        # the store keeps one dataset per (experiment, name, digest): when another process logs the same one
        # at the same moment (parallel workers, two studies started together), the later insert loses
        retry_lost_race(lambda: mlflow.log_input(ds, context=context))


def log_batch(client, run_id: str, metrics: dict, tags: dict, *, timestamp_ms: int, step: int) -> None:
    """Log metrics (all at ``step``) and tags to a run that need not be the active one, in one request."""
    from mlflow.entities import Metric, RunTag

    client.log_batch(run_id, metrics=[Metric(k, float(v), timestamp_ms, step) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in tags.items()])


def log_metrics_to(run_id: str, metrics: dict) -> None:
    """Log metrics to a run that need not be the active one (e.g. a finished comparison)."""
    from mlflow.tracking import MlflowClient

    log_batch(MlflowClient(), run_id, metrics, {}, timestamp_ms=int(time.time() * 1000), step=0)
