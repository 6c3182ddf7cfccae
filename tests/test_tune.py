"""The tune entry point on tiny synthetic hospitals: validation, storage, one process, pruning,
retries, and two processes sharing one study through a journal file and one MLflow server."""

import json
import os
import sys
import time
from pathlib import Path

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

import cxrstudy.train.loop as trainer_mod
from cxrstudy.train.config import TRAIN_PARAMS, config_from_params
from cxrstudy.errors import DataError, UsageError
from cxrstudy.tracking import keys
from cxrstudy.tune.storage import STORAGE_ENV, HeartbeatJournalStorage, parse_storage
from cxrstudy.runs.tune import run_tune
from cxrstudy.runs.tune_worker import StudyWorker
from cxrstudy.tune.settings import TUNE_PARAMS, tune_from_params
from test_train_concurrency import run_at_once

ROOT = Path(__file__).resolve().parents[1]
TINY = {"envs": "cxp,nih", "label": "Any", "preset": "cpu", "image_size": "32", "synthetic_patients": "200",
        "max_steps": "20", "eval_every": "10", "batch_sizes": "16,32", "heartbeat_interval": "1",
        "grace_period": "3", "n_trials": "3"}


def settings(uri, **kw):
    return tune_from_params({**TUNE_PARAMS, **TINY, **{k: str(v) for k, v in kw.items()}}, uri)


def load_study(s):
    from optuna.storages.journal import JournalFileBackend

    return optuna.load_study(study_name=s.study_name, storage=optuna.storages.JournalStorage(
        JournalFileBackend(s.storage.target)))


def tune_runs(client, kind):
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`cxrstudy.entry` = '{kind}'")


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


# ----------------------------------------------------------------------------- parameters

@pytest.mark.parametrize("override, message", [
    ({"objective": "val_auc"}, "objective='val_auc' is not allowed; expected one of: val_macro_f1, val_wga"),
    ({"lr_range": "1e-2,1e-5"}, "low 0.01 is above high 1e-05"),
    ({"lr_range": "1e-5,1e-2,1"}, "lr_range='1e-5,1e-2,1' is not a range"),
    ({"weight_decay_range": "0,1e-2"}, "a log-scale range needs low > 0"),
    ({"augment_range": "0,5"}, "augment_range='0,5' is out of range"),
    ({"batch_sizes": "1,32"}, "batch_size 1 is smaller than the number of hospitals 2"),
    ({"batch_sizes": ","}, "batch_sizes is empty"),
    ({"n_trials": "0"}, "n_trials=0 is out of range"),
    ({"storage": "redis://host"}, "storage='redis://host' is not understood"),
    ({"storage": "journal:"}, "names no file"),
    ({"grace_period": "1"}, "grace_period=1 must be longer than heartbeat_interval=1"),
    ({"pruner": "hyperband"}, "pruner='hyperband' is not allowed"),
])
def test_bad_parameters_are_one_clear_error(store, override, message):
    with pytest.raises(UsageError) as e:
        settings(store, **override)
    assert message in str(e.value)


def test_entry_point_exits_2_on_a_bad_parameter(store, capsys):
    sys.path.insert(0, str(ROOT / "entrypoints"))
    import tune as tune_entry

    with pytest.raises(SystemExit) as e:
        tune_entry.main(["--objective", "accuracy"])
    assert e.value.code == 2 and "objective='accuracy' is not allowed" in capsys.readouterr().err
    assert not mlflow.search_runs(search_all_experiments=True).shape[0]


def test_ranges_fixed_values_and_study_name(store):
    s = settings(store, weight_decay_range="0", augment_range="1", batch_sizes="32")
    assert s.space.searched() == ["lr"]
    assert s.space.values({"lr": 1e-3}) == {"lr": 1e-3, "weight_decay": 0.0, "batch_size": 32,
                                            "augment_strength": 1.0}
    # the study name is a content key: the same settings resume the same study, other ones don't
    assert settings(store).study_name == settings(store, n_trials=50, sampler_seed=3).study_name
    assert settings(store).study_name != settings(store, lr_range="1e-4,1e-2").study_name
    assert settings(store).study_name != settings(store, objective="val_wga").study_name
    assert settings(store).study_name.startswith("tune-cxp+nih-any-val_macro_f1-")
    assert settings(store, study_name="mine").study_name == "mine"


def test_storage_urls(tmp_path):
    local = f"sqlite:///{tmp_path}/mlflow.db"
    assert parse_storage("", local).target == str(tmp_path / "optuna_journal.log")  # next to the MLflow store
    j = parse_storage(f"journal:{tmp_path}/s/j.log", "http://127.0.0.1:5000")
    assert (j.kind, j.target, j.open_lock) == ("journal", str(tmp_path / "s" / "j.log"), False)
    assert parse_storage(f"journal-openlock:{tmp_path}/j.log", local).open_lock
    assert parse_storage(f"sqlite:///{tmp_path}/optuna.db", local).kind == "rdb"
    pg = parse_storage("postgresql://me@db.example:5432/optuna", local)  # password: PGPASSWORD / ~/.pgpass
    assert pg.kind == "rdb" and "db.example" in pg.display()
    assert pg.target.startswith(("postgresql+psycopg2://", "postgresql://"))  # a driver that is installed
    assert parse_storage("postgres://me@db/optuna", local).target.split("://")[0] in ("postgresql+psycopg2",
                                                                                      "postgresql")
    assert parse_storage("postgresql+psycopg2://me@db/o", local).target == "postgresql+psycopg2://me@db/o"
    with pytest.raises(UsageError, match="sqlite:///<path>"):
        parse_storage("sqlite://relative.db", local)
    with pytest.raises(UsageError, match="is a directory"):
        parse_storage(f"journal:{tmp_path}", local)


@pytest.mark.parametrize("url", ["postgresql://me:secret@db.example:5432/optuna", "postgres://me:secret@db/o",
                                 "postgresql+psycopg2://me:secret@db/o", "mysql://me:secret@db/o",
                                 # a password in the query string is a password too (libpq, MySQL)
                                 "postgresql://me@db.example:5432/optuna?password=secret",
                                 "postgresql://me@db/o?sslmode=require&PASSWORD=secret",
                                 "mysql://me@db/o?passwd=secret&charset=utf8"])
def test_storage_url_with_a_password_is_refused_without_printing_it(url, tmp_path):
    with pytest.raises(UsageError) as e:
        parse_storage(url, f"sqlite:///{tmp_path}/mlflow.db")
    msg = str(e.value)
    assert "secret" not in msg and "PGPASSWORD" in msg and "~/.pgpass" in msg and "\n" not in msg
    assert "me@db" in msg  # the URL to use instead


def _tune_entry():
    import importlib.util

    spec = importlib.util.spec_from_file_location("tune_entry", ROOT / "entrypoints" / "tune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("url", ["postgresql://optuna:secret@db-host/optuna",
                                 "postgresql://u@127.0.0.1:1/db?password=secret"])
def test_tune_entry_refuses_a_password_in_storage_with_exit_2(store, capsys, url):
    with pytest.raises(SystemExit) as e:
        _tune_entry().main(["--storage", url, "--envs", "cxp,nih", "--label", "any", "--preset", "cpu"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "secret" not in err and "PGPASSWORD" in err and STORAGE_ENV in err
    assert len(err.strip().splitlines()) == 1, err
    assert not mlflow.search_runs(search_all_experiments=True).shape[0]  # refused before any run


def test_tune_help_never_tells_users_to_put_a_password_in_a_parameter(capsys):
    with pytest.raises(SystemExit) as e:
        _tune_entry().main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "storage" in out and STORAGE_ENV in out
    assert "password@" not in out and ":secret@" not in out, out


def test_the_storage_url_with_its_password_comes_from_the_environment_and_is_never_shown(store, monkeypatch,
                                                                                          tmp_path):
    url = "postgresql://u:pw1@127.0.0.1:1/db?password=secret2&sslmode=disable"
    monkeypatch.setenv(STORAGE_ENV, url)
    s = settings(store)
    assert s.storage.kind == "rdb" and "pw1" in s.storage.target and "secret2" in s.storage.target  # it is used
    shown = s.storage.display()  # what is logged (param tune.storage) and printed
    assert "pw1" not in shown and "secret2" not in shown and "127.0.0.1:1/db" in shown and "sslmode=disable" in shown
    with pytest.raises(DataError) as e:  # nothing listens on port 1: the driver's error, passwords hidden
        run_tune(s, progress=False)
    msg = str(e.value)
    assert "pw1" not in msg and "secret2" not in msg and "\n" not in msg and "127.0.0.1" in msg, msg
    # any other storage from the environment too; the parameter and the variable may not disagree
    monkeypatch.setenv(STORAGE_ENV, f"journal:{tmp_path / 'shared' / 'j.log'}")
    assert settings(store).storage.target == str(tmp_path / "shared" / "j.log")
    assert settings(store, storage=f"journal:{tmp_path / 'shared' / 'j.log'}").storage.kind == "journal"
    with pytest.raises(UsageError, match=f"given twice, as parameter storage and in {STORAGE_ENV}"):
        settings(store, storage=f"journal:{tmp_path / 'other.log'}")


def test_augment_strength_is_a_train_parameter(tmp_path):
    from cxrstudy.train.loop import augment_kwargs

    raw = {**TRAIN_PARAMS, "preset": "cpu"}
    default = config_from_params(raw)
    assert default.augment_strength == 1.0
    assert augment_kwargs(1.0) == {"max_rotation": 10.0, "scale": (0.75, 1.0), "ratio": (3 / 4, 4 / 3), "flip_p": 0.5}
    assert augment_kwargs(0) is None
    stronger = config_from_params({**raw, "augment_strength": "1.5"})
    assert stronger.augment_strength == 1.5 and stronger.content_hash() != default.content_hash()
    with pytest.raises(UsageError, match="augment_strength"):
        config_from_params({**raw, "augment_strength": "-1"})


# ----------------------------------------------------------------------------- one process

def test_one_process_logs_a_parent_and_one_nested_run_per_trial(store, capsys):
    s = settings(store)
    out = run_tune(s, progress=False)
    client = MlflowClient()
    parents = tune_runs(client, "tune")
    assert len(parents) == 1 and parents[0].data.tags["cxrstudy.tune_role"] == "study"
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.info.run_id == out["parent_run_id"]
    trials = tune_runs(client, "tune_trial")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in trials) == [0, 1, 2]
    study = load_study(s)
    assert study.user_attrs[keys.TUNE_PARENT_ATTR] == parent.info.run_id
    by_number = {t.number: t for t in study.trials}
    for r in trials:
        tags, params = r.data.tags, r.data.params
        n = int(tags["optuna.trial_number"])
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert by_number[n].user_attrs[keys.TUNE_RUN_ID_ATTR] == r.info.run_id
        assert params["optuna.trial_number"] == str(n) and r.info.status == "FINISHED"
        for k in ("lr", "weight_decay", "batch_size", "augment_strength", "cfg.config_hash"):
            assert k in params
        assert keys.CONFIG_HASH_TAG not in tags  # `train` must never mistake a trial for a trained, registered model
        hist = client.get_metric_history(r.info.run_id, "val/macro_f1")
        if tags["optuna.trial_state"] == "COMPLETE":
            assert sorted(m.step for m in hist) == [10, 20]
            assert r.data.metrics["tune/objective"] == pytest.approx(by_number[n].value)
    # the parent: best value and parameters, plots, a train command that reproduces the best trial
    best = study.best_trial
    assert parent.data.metrics["tune/best_value"] == pytest.approx(best.value)
    assert parent.data.tags["best.trial_number"] == str(best.number)
    assert float(parent.data.tags["best.lr"]) == pytest.approx(best.params["lr"])
    names = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"optuna_history.png", "param_importances.png", "best_train_command.txt", "best_params.json",
            "trials.csv"} <= names
    cmd = out["command"]
    assert cmd.startswith("mlflow run . --env-manager local -e train ") and cmd in capsys.readouterr().out
    raw = dict(p.split("=", 1) for p in cmd.split(" -P ")[1:])
    cfg = config_from_params({**TRAIN_PARAMS, **raw})
    assert (cfg.lr, cfg.batch_size) == (best.params["lr"], best.params["batch_size"])

    # the same command again: the study is done, nothing is trained; this run joins as a worker
    again = run_tune(s, progress=False)
    assert again["trials_run_here"] == [] and again["role"] == "worker"
    assert len(tune_runs(client, "tune_trial")) == 3
    worker = [r for r in tune_runs(client, "tune") if r.data.tags["cxrstudy.tune_role"] == "worker"]
    assert len(worker) == 1 and worker[0].data.tags["mlflow.parentRunId"] == parent.info.run_id


def test_pruned_trials_end_pruned_and_are_tagged(store):
    s = settings(store, n_trials=2, objective="val_wga")
    out = run_tune(s, pruner=AlwaysPrune(), progress=False)
    assert out["n_pruned"] == 2 and out["n_complete"] == 0 and out["command"] is None
    study = load_study(s)
    assert [t.state for t in study.trials] == [TrialState.PRUNED] * 2
    assert all(list(t.intermediate_values) == [10] for t in study.trials)  # stopped at the first validation
    runs = tune_runs(MlflowClient(), "tune_trial")
    assert len(runs) == 2
    assert all(r.data.tags["optuna.trial_state"] == "PRUNED" and r.info.status == "FINISHED" for r in runs)


def test_a_failing_trial_is_retried_with_its_parameters(store, monkeypatch):
    real = trainer_mod.train_model
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(*a, **k)

    monkeypatch.setattr(trainer_mod, "train_model", flaky)
    s = settings(store, n_trials=1)
    run_tune(s, progress=False)
    study = load_study(s)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    failed, retry = study.trials
    assert retry.params == failed.params and retry.system_attrs["failed_trial"] == 0
    runs = {r.data.tags["optuna.trial_number"]: r for r in tune_runs(MlflowClient(), "tune_trial")}
    assert sorted(runs) == ["0", "1"]
    assert runs["0"].info.status == "FAILED" and "illegal memory access" in runs["0"].data.tags["cxrstudy.error"]
    assert runs["1"].info.status == "FINISHED" and runs["1"].data.tags["optuna.retry_of"] == "0"


def test_a_trial_whose_process_died_is_failed_and_retried(store):
    """A process died mid-trial (SIGKILL, preemption): its trial is RUNNING with a stale heartbeat and
    its MLflow run RUNNING. The next process of the study fails both and retries the parameters."""
    s = settings(store, n_trials=1)
    client = MlflowClient()
    mlflow.set_tracking_uri(store)
    exp = client.get_experiment_by_name("Default").experiment_id
    dead_parent = client.create_run(exp, run_name="tune-dead", tags={"cxrstudy.entry": "tune"}).info.run_id
    dead_trial = client.create_run(exp, run_name="trial-000", tags={"cxrstudy.entry": "tune_trial",
                                                                    "optuna.trial_number": "0",
                                                                    "mlflow.parentRunId": dead_parent}).info.run_id
    client.set_terminated(dead_parent, "KILLED")
    from optuna.storages.journal import JournalFileBackend

    storage = HeartbeatJournalStorage(JournalFileBackend(s.storage.target), heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(storage=storage, study_name=s.study_name, direction="maximize")
    study.set_user_attr(keys.TUNE_SPEC_ATTR, s.spec())
    study.set_user_attr(keys.TUNE_PARENT_ATTR, dead_parent)
    trial = study.ask()
    params = s.space.suggest(trial)
    trial.set_user_attr(keys.TUNE_RUN_ID_ATTR, dead_trial)
    storage.set_trial_system_attr(trial._trial_id, keys.TUNE_HEARTBEAT_ATTR, time.time() - 60)

    out = run_tune(s, progress=False)
    study = load_study(s)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert study.trials[1].system_attrs["failed_trial"] == 0
    assert s.space.values(study.trials[1].params) == params
    assert client.get_run(dead_trial).info.status == "FAILED"
    retried = client.get_run(study.trials[1].user_attrs[keys.TUNE_RUN_ID_ATTR])
    assert retried.data.tags["mlflow.parentRunId"] == dead_parent and retried.info.status == "FINISHED"
    assert out["parent_run_id"] == dead_parent and out["role"] == "worker"
    assert client.get_run(dead_parent).info.status == "FINISHED"  # the study it describes is now done


def test_surplus_trials_are_dropped_before_they_run(store):
    """Two processes that ask for a trial at the same instant when one is missing: the later trial
    number finds n_trials ahead of it and is dropped without a run."""
    s = settings(store, n_trials=1)
    worker = StudyWorker(s, device=None, client=MlflowClient())
    study, _ = worker.open_study()
    first = study.ask()  # "another process" is running the study's only trial
    second = study.ask()
    with pytest.raises(Exception, match="surplus trial"):
        worker.objective(second)
    assert first.number == 0 and "cxrstudy.surplus" in study.trials[1].user_attrs
    assert not tune_runs(MlflowClient(), "tune_trial")


# ----------------------------------------------------------------------------- two processes

def test_two_processes_share_one_study(store, tmp_path):
    from cxrstudy.tracking.server import local_server

    journal = tmp_path / "shared" / "study.log"
    args = {**TINY, "n_trials": "4", "max_steps": "30", "pruner": "none", "storage": f"journal:{journal}"}
    cmd = [sys.executable, str(ROOT / "entrypoints" / "tune.py")]
    for k, v in args.items():
        cmd += [f"--{k}", v]
    with local_server(store, tmp_path / "mlartifacts") as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1"}
        logs = run_at_once([cmd, cmd], env, timeout=300)
        assert "database is locked" not in "".join(logs)
        client = MlflowClient(tracking_uri=url)
        s = settings(store, **{k: v for k, v in args.items() if k in TUNE_PARAMS})
        study = load_study(s)
        finished = [t for t in study.trials if t.state == TrialState.COMPLETE]
        assert len(finished) == 4
        ran = [t for t in study.trials if not t.user_attrs.get("cxrstudy.surplus")]
        assert all(t.state == TrialState.COMPLETE for t in ran)  # heartbeats kept every live trial alive
        numbers = [t.number for t in ran]
        assert len(numbers) == len(set(numbers))
        runs = tune_runs(client, "tune_trial")
        run_numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in runs)
        assert run_numbers == sorted(numbers)  # exactly one MLflow run per trial that ran
        assert {t.user_attrs[keys.TUNE_RUN_ID_ATTR] for t in ran} == {r.info.run_id for r in runs}
        procs_runs = tune_runs(client, "tune")
        roles = sorted(r.data.tags["cxrstudy.tune_role"] for r in procs_runs)
        assert roles == ["study", "worker"]
        parent = next(r for r in procs_runs if r.data.tags["cxrstudy.tune_role"] == "study")
        assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in runs)
        # both processes did part of the work
        per_process = [int(r.data.metrics["tune/trials_run_here"]) for r in procs_runs]
        assert sum(per_process) == 4 and min(per_process) >= 1, per_process
        assert parent.data.metrics["tune/n_complete"] == 4
        assert "param_importances.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
        best = Path(client.download_artifacts(parent.info.run_id, "best_params.json", str(tmp_path)))
        assert json.loads(best.read_text())["best_trial"] == study.best_trial.number


def test_one_study_on_a_real_postgresql_storage(store):
    """``storage=postgresql://...`` (no driver named, as users write it) against a live server."""
    from cluster_fixtures import pg_bin, postgres_server, require_or_skip

    require_or_skip("PostgreSQL storage test", [f"postgres {c}" for c in ("initdb", "pg_ctl") if pg_bin(c) is None])
    with postgres_server() as url:  # postgresql+psycopg2://cxr@127.0.0.1:<port>/mlflow
        plain = "postgresql://" + url.split("://", 1)[1]
        s = settings(store, storage=plain, n_trials=2)
        out = run_tune(s, progress=False)
        study = optuna.load_study(study_name=s.study_name, storage=s.storage.target)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(done) == 2 and out["parent_run_id"] == study.user_attrs[keys.TUNE_PARENT_ATTR]
        assert len(tune_runs(MlflowClient(), "tune_trial")) == 2


def test_a_method_brings_its_own_search_space(tmp_path):
    """tune searches the method's own hyperparameters over the ranges the method declares; a value
    given explicitly is fixed instead."""
    import optuna

    from cxrstudy.train.methods import get_method

    raw = {**TUNE_PARAMS, "preset": "cpu", "method": "groupdro", "storage": f"journal:{tmp_path / 'j.log'}"}
    s = tune_from_params(raw, f"sqlite:///{tmp_path / 'm.db'}")
    assert s.space.method_searched() == ["groupdro_eta"] and "groupdro_eta" in s.space.searched()
    trial = optuna.create_study().ask()
    values = s.space.suggest(trial)
    hp = get_method("groupdro").HPARAMS["groupdro_eta"]
    eta = dict(values["method_hparams"])["groupdro_eta"]
    assert hp.low <= eta <= hp.high and trial.params["groupdro_eta"] == eta
    fixed = tune_from_params({**raw, "groupdro_eta": "0.2"}, f"sqlite:///{tmp_path / 'm.db'}")
    assert fixed.space.method_searched() == [] and dict(fixed.space.values({})["method_hparams"]) == {"groupdro_eta": 0.2}
