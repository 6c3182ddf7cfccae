"""A study's summary on its MLflow parent run: best value and parameters, plots, a train command.

Logged (again) by every ``tune`` process when it finishes, so the parent always describes the
study as it stands. The best parameters are tags (``best.lr``, ...), not MLflow params: MLflow
params cannot change, and a resumed study (a larger ``n_trials``) may find a better trial.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import replace

import optuna
from optuna.trial import TrialState

from cxrstudy.tracking import keys
from cxrstudy.train.config import TrainConfig, config_to_params


def train_command_line(cfg: TrainConfig) -> str:
    """A ready-to-paste ``mlflow run`` that trains ``cfg`` (and registers the model)."""
    parts = ["mlflow", "run", ".", "--env-manager", "local", "-e", "train"]
    for k, v in config_to_params(cfg).items():
        if v != "":
            parts += ["-P", f"{k}={v}"]
    return shlex.join(parts)


def _figure(plot, study, **kw):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot(study, **kw)
    fig = ax.figure
    fig.set_size_inches(8, 5)
    fig.tight_layout()
    return fig, plt


def log_summary(client, parent_run_id: str, study: optuna.Study, settings, *, parent_is_active: bool) -> dict:
    """Log the study's state to its parent run; return it (``command`` is None with no complete trial)."""
    from optuna.visualization import matplotlib as vis

    from cxrstudy.tracking.runs import log_batch

    trials = study.get_trials(deepcopy=False)
    n = {state: sum(t.state == state for t in trials) for state in TrialState}
    out = {"study_name": settings.study_name, "n_complete": n[TrialState.COMPLETE], "n_pruned": n[TrialState.PRUNED],
           "n_failed": n[TrialState.FAIL], "best_value": None, "best_params": None, "best_trial": None,
           "command": None, "artifacts": []}
    finished = n[TrialState.COMPLETE] + n[TrialState.PRUNED]
    now = int(time.time() * 1000)
    metrics = {"tune/n_complete": n[TrialState.COMPLETE], "tune/n_pruned": n[TrialState.PRUNED],
               "tune/n_failed": n[TrialState.FAIL], "tune/n_trials_target": settings.n_trials}
    tags = {}
    if n[TrialState.COMPLETE]:
        best = study.best_trial
        values = settings.space.values(best.params)
        cfg = replace(settings.base, **values)
        out.update(best_value=best.value, best_params=values, best_trial=best.number, command=train_command_line(cfg))
        metrics["tune/best_value"] = best.value
        tags.update({f"best.{k}": str(v) for k, v in values.items()})
        tags.update({"best.trial_number": str(best.number),
                     "best.mlflow_run_id": best.user_attrs.get(keys.TUNE_RUN_ID_ATTR, "")})
        client.log_text(parent_run_id, out["command"] + "\n", "best_train_command.txt")
        client.log_text(parent_run_id, json.dumps({"objective": settings.objective, "best_value": best.value,
                                                   "best_trial": best.number, "params": values,
                                                   "train_params": config_to_params(cfg)}, indent=1),
                        "best_params.json")
        out["artifacts"] += ["best_train_command.txt", "best_params.json"]
    log_batch(client, parent_run_id, metrics, tags, timestamp_ms=now, step=finished)
    if trials:
        df = study.trials_dataframe(attrs=("number", "value", "state", "params", "user_attrs", "duration"))
        client.log_text(parent_run_id, df.to_csv(index=False), "trials.csv")
        out["artifacts"].append("trials.csv")
    out["artifacts"] += _log_plots(client, parent_run_id, study, settings, n[TrialState.COMPLETE], vis)
    # the study is done; if the founder's process died (its run FAILED, KILLED, or left RUNNING by a
    # SIGKILL), the parent now describes a finished study (a live founder ends it FINISHED anyway)
    if (not parent_is_active and finished >= settings.n_trials
            and client.get_run(parent_run_id).info.status != "FINISHED"):
        client.set_terminated(parent_run_id, "FINISHED")
    return out


def _log_plots(client, run_id, study, settings, n_complete: int, vis) -> list[str]:
    logged = []
    plots = [("optuna_history.png", vis.plot_optimization_history, {}, 1),
             ("optuna_intermediate_values.png", vis.plot_intermediate_values, {}, 1)]
    if len(settings.space.searched()) >= 1:
        plots.append(("param_importances.png", vis.plot_param_importances, {}, 2))
    for name, plot, kw, needs in plots:
        if n_complete < needs:
            print(f"[tune] {name}: needs {needs} complete trial(s), the study has {n_complete}; not drawn", flush=True)
            continue
        try:
            fig, plt = _figure(plot, study, **kw)
        except Exception as e:  # e.g. importances when every complete trial has the same value
            print(f"[tune] {name}: not drawn ({e})", flush=True)
            continue
        client.log_figure(run_id, fig, name)
        plt.close(fig)
        logged.append(name)
    return logged
