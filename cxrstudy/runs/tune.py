"""Hyperparameter search for one training setting: Optuna picks, every trial is an MLflow run.

The search covers learning rate, weight decay, batch size and augmentation strength (ranges are
parameters; a single value fixes one). Each trial trains with :func:`cxrstudy.train.loop.train_model` on
data prepared once per process, reports its objective at every validation to the median pruner, and
is logged as one MLflow run nested under the study's parent run. The objective is what ``train``
would deliver: ``val_macro_f1`` is the best validation macro-F1; ``val_wga`` is the validation WGA
of the checkpoint ``train`` keeps (the best-macro-F1 one). Both are maximised.

**Sharing a study.** Processes started with the same settings (on one machine or many) open the
same study in the same Optuna storage (:mod:`cxrstudy.tune.storage`) and split its trials:

- ``n_trials`` is the study's target of finished (complete or pruned) trials, not a per-process
  count: before each new trial a process counts the finished, running and queued trials, and a
  trial that still finds ``n_trials`` ahead of it (two processes asked at the same instant) is
  dropped at once as FAIL with user attribute ``cxrstudy.surplus`` and no MLflow run.
- A process with nothing left to start waits for the other processes' running trials, so that
  one whose process dies is still retried: its heartbeat goes stale, any process of the study
  marks it FAIL, ends its MLflow run FAILED and re-queues its parameters as a new trial (Optuna's
  retry callback; ``max_retry`` times). A trial that raises is re-queued the same way; one
  interrupted with Ctrl-C is re-queued for the next run.
- **The parent run.** Creating a study is atomic in every Optuna storage, so exactly one process
  creates it. That process's run is the study's parent: it writes the run id to the study's user
  attribute ``mlflow_parent_run_id``. A process that finds the study already there waits for that
  attribute and nests every trial run under that parent; its own run (which ``mlflow run``
  always opens) becomes a ``worker`` run under the parent too. If the recorded parent is not in
  this MLflow store, the joining process's run takes its place.
- Whenever a process finishes, it logs the study's summary to the parent (:mod:`cxrstudy.tune.report`).

Where each part lives: the parameters and settings :mod:`cxrstudy.tune.settings`, the search space
:mod:`cxrstudy.tune.space`, one trial's objective and MLflow run :mod:`cxrstudy.runs.tune_trial`,
this process's share of the study :mod:`cxrstudy.runs.tune_worker`; this module opens the
process's own run and runs the worker.
"""

from __future__ import annotations

import warnings

import optuna
from optuna.trial import TrialState

from cxrstudy.runs.tune_worker import StudyWorker, say
from cxrstudy.tracking import keys
from cxrstudy.tune.settings import TuneSettings
from cxrstudy.tune.space import SEARCHED


def run_tune(settings: TuneSettings, *, pruner=None, progress: bool = True) -> dict:
    """Run (or join, or resume) the study; returns a summary dict (see :func:`cxrstudy.tune.report.log_summary`)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from cxrstudy.runs.train import preflight
    from cxrstudy.tracking import runs as tracking
    from cxrstudy.train.device import pick_device
    from cxrstudy.train.loop import prepare_data
    from cxrstudy.tune.report import log_summary

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = settings
    device = pick_device(s.device)
    preflight(s.base)  # cache_dir writable, pretrained weights loadable: before any work
    tracking.setup()
    client = MlflowClient()
    worker = StudyWorker(s, device=device, client=client, pruner=pruner)
    study, founder = worker.open_study()
    with tracking.run(run_name=f"tune-{s.study_name}", tags={keys.ENTRY_TAG: keys.ENTRY_TUNE, keys.TUNE_STUDY_TAG: s.study_name}) as run:
        is_parent = worker.claim_parent(study, run.info.run_id, founder)
        mlflow.set_tag(keys.TUNE_ROLE_TAG, "study" if is_parent else "worker")
        if not is_parent:
            mlflow.set_tag("mlflow.parentRunId", worker.parent_run_id)
        tracking.mark_synthetic(s.base.data.is_synthetic)
        tracking.log_params({"objective": s.objective, "n_trials": s.n_trials, "study_name": s.study_name,
                             "storage": s.storage.display(), "space": s.space.to_dict(), "pruner": s.pruner,
                             "max_retry": s.max_retry, "heartbeat_interval": s.heartbeat_interval,
                             "grace_period": s.grace_period}, prefix="tune.")
        tracking.log_params({k: v for k, v in s.base.to_log_dict().items() if k not in SEARCHED}, prefix="cfg.")
        c = worker.counts(study)
        say(f"study {s.study_name} in {s.storage.display()}: target {s.n_trials} finished trials, "
             f"{c[TrialState.COMPLETE] + c[TrialState.PRUNED]} already finished, objective {s.objective} (maximised)")
        say(f"search: {s.space.describe()}")
        say(f"MLflow: trials nest under run {worker.parent_run_id}"
             + (" (this process's run)" if is_parent else " (another process's run; this one is a worker)"))
        data = prepare_data(s.base, progress=progress)
        worker.work(study, data)
        mlflow.log_metric("tune/trials_run_here", len(worker.ran))
        summary = log_summary(client, worker.parent_run_id, study, s, parent_is_active=is_parent)
    summary.update(parent_run_id=worker.parent_run_id, role="study" if is_parent else "worker",
                   trials_run_here=list(worker.ran))
    if summary.get("command"):
        print("best configuration, as a train run:\n  " + summary["command"], flush=True)
    say(f"done: {summary['n_complete']} complete, {summary['n_pruned']} pruned, {summary['n_failed']} failed "
         f"trials in study {s.study_name}")
    return summary
