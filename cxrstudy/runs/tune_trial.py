"""One tune trial: its objective as ``train`` would deliver it, and its MLflow run, nested under the
study's parent, whose end state follows the trial's (COMPLETE, PRUNED, FAIL)."""

from __future__ import annotations

import math
import os
from contextlib import contextmanager

import optuna

from cxrstudy.tracking import keys
from cxrstudy.tune.settings import OBJECTIVES


class ObjectiveTracker:
    """The objective as ``train`` would deliver it if training stopped now: the best macro-F1, or
    the WGA at the best-macro-F1 validation (``train`` keeps that checkpoint)."""

    def __init__(self, objective: str):
        self.key = OBJECTIVES[objective]
        self.best_f1 = -math.inf
        self.value: float | None = None
        self.step: int | None = None

    def update(self, step: int, metrics: dict) -> float:
        if metrics["macro_f1"] > self.best_f1:
            self.best_f1, self.value, self.step = metrics["macro_f1"], float(metrics[self.key]), step
        return self.value


@contextmanager
def trial_run(client, experiment_id: str, parent_run_id: str, run_name: str, tags: dict):
    """An MLflow run for one trial, nested under the study's parent; its end state follows the trial's."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    run = client.create_run(experiment_id, run_name=run_name, tags={**tags, MLFLOW_PARENT_RUN_ID: parent_run_id})
    rid = run.info.run_id

    def end(state: str, status: str, error: str | None = None):
        client.set_tag(rid, "optuna.trial_state", state)
        if error:
            client.set_tag(rid, keys.TUNE_ERROR_ATTR, error[:5000])
        with no_run_links():
            client.set_terminated(rid, status)

    try:
        yield rid
    except optuna.TrialPruned as e:
        end("PRUNED", "FINISHED", str(e) or None)
        raise
    except KeyboardInterrupt:
        end("FAIL", "KILLED", "interrupted")
        raise
    except BaseException as e:
        end("FAIL", "FAILED", repr(e))
        raise
    else:
        end("COMPLETE", "FINISHED")


@contextmanager
def no_run_links():
    """MLflow prints two 'View run' links whenever a run on a server ends: not for every trial."""
    key = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
    old = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old
