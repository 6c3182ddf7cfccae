"""Shared fixtures: an isolated MLflow store per test (a migrated SQLite DB, copied), clean env."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # realdata_fixtures
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")


@pytest.fixture(scope="session")
def migrated_db(tmp_path_factory) -> Path:
    """One SQLite tracking DB with the schema already migrated (1-1.6 s, done once)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    mlflow.set_tracking_uri(None)
    return path


@contextlib.contextmanager
def isolated_store(migrated_db: Path, folder: Path, monkeypatch):
    """A fresh tracking store in ``folder``: ``sqlite:///<folder>/mlflow.db`` (a copy of the
    migrated template), artifacts under it, cache under it, cwd = ``folder``. Yields the URI."""
    import mlflow

    db = folder / "mlflow.db"
    shutil.copy(migrated_db, db)
    uri = f"sqlite:///{db}"
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "CXRSTUDY_TUNE_STORAGE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("CXRSTUDY_CACHE", str(folder / "cache"))
    monkeypatch.chdir(folder)
    while mlflow.active_run() is not None:
        mlflow.end_run()
    # set_experiment() leaves its id in a module global (and in MLFLOW_EXPERIMENT_ID): forget it
    monkeypatch.setattr(mlflow.tracking.fluent, "_active_experiment_id", None)
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()
    os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    mlflow.set_tracking_uri(None)


@pytest.fixture
def store(migrated_db, tmp_path, monkeypatch):
    """A fresh tracking store for this test (see :func:`isolated_store`). Yields the URI."""
    with isolated_store(migrated_db, tmp_path, monkeypatch) as uri:
        yield uri


@pytest.fixture(scope="module")
def module_store(migrated_db, tmp_path_factory):
    """Like ``store``, shared by the tests of one module (one expensive study that several tests
    read). Yields ``(uri, folder)``."""
    folder = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp, isolated_store(migrated_db, folder, mp) as uri:
        yield uri, folder


@pytest.fixture
def tiny_main_argv(tmp_path):
    """``tiny_main_argv(*extra)``: the argument list of a ``main`` over cxp+nih, label Any, seed 0,
    unbalanced, with tiny models and 200 synthetic patients (cache under tmp), without the A/A noise
    floor (tests/test_noise_floor.py covers it), plus ``extra`` (a later value of a flag wins)."""

    def argv(*extra: str) -> list[str]:
        return ["--envs", "cxp,nih", "--labels", "Any", "--seeds", "0", "--balances", "none", "--preset", "cpu",
                "--image_size", "32", "--batch_size", "16", "--synthetic_patients", "200", "--n_bootstrap", "50",
                "--max_steps", "6", "--eval_every", "3", "--workers", "1", "--cache_dir", str(tmp_path / "cache"),
                "--noise_floor", "false", *extra]

    return argv
