"""Checks before any work (issue 13 part 4b, 4c, 4g): an unreachable tracking server, a bad
cache_dir and bad pretrained weights are each one line and an exit code, in seconds; the local
server's log goes to the cache's log folder."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from test_checked_up_front import TINY, entry

ROOT = Path(__file__).resolve().parents[1]


def run_entry(name, argv, capsys):
    with pytest.raises(SystemExit) as e:
        entry(name).main(argv)
    return e.value.code, capsys.readouterr().err


def no_work_done(cache: Path) -> bool:
    """Nothing cached, no checkpoint, no run in the store."""
    import mlflow

    made = [p for p in cache.rglob("*")] if cache.is_dir() else []
    runs = mlflow.search_runs(search_all_experiments=True)
    return not made and len(runs) == 0


# ------------------------------------------------------------------------------------ (c) cache_dir


def test_cache_dir_that_is_a_file_is_one_line_exit_2_before_any_work(store, tmp_path, capsys):
    f = tmp_path / "cachefile"
    f.write_text("x")
    for cache in (f, f / "sub"):
        code, err = run_entry("train", [*TINY, "--cache_dir", str(cache)], capsys)
        assert code == 2, err
        assert err.strip().count("\n") == 0 and str(cache) in err and "not a folder" in err
    assert no_work_done(tmp_path / "nothing")


def _read_only_dir(tmp_path) -> Path:
    """A folder this process cannot write to (chmod for a normal user; /sys for root)."""
    if os.geteuid() != 0:
        d = tmp_path / "ro"
        d.mkdir()
        d.chmod(0o555)
        return d / "cache"
    try:
        os.mkdir("/sys/cxrstudy-cache-test")
    except PermissionError:
        return Path("/sys/cxrstudy-cache-test")
    except OSError:
        pass
    pytest.skip("no read-only folder available to root here")


def test_read_only_cache_dir_is_one_line_exit_2(store, tmp_path, capsys):
    cache = _read_only_dir(tmp_path)
    code, err = run_entry("train", [*TINY, "--cache_dir", str(cache)], capsys)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and "not writable" in err and str(cache) in err


def test_preprocess_checks_cache_dir_too(store, tmp_path, capsys):
    f = tmp_path / "cachefile"
    f.write_text("x")
    code, err = run_entry("preprocess", ["--envs", "cxp,nih", "--cache_dir", str(f)], capsys)
    assert code == 2 and "not a folder" in err


# ----------------------------------------------------------------------------------- (c) pretrained


@pytest.mark.parametrize("kind", ["missing", "garbage", "wrong_state"])
def test_bad_pretrained_path_is_one_line_exit_2_before_the_cache_is_built(store, tmp_path, capsys, kind):
    import torch

    path = tmp_path / "weights.pth"
    if kind == "garbage":
        path.write_bytes(b"this is not a state dict")
    elif kind == "wrong_state":
        torch.save({"foo": torch.zeros(2)}, path)
    cache = tmp_path / "cache"
    argv = [*TINY, "--backbone", "resnet18", "--pretrained", str(path), "--cache_dir", str(cache)]
    code, err = run_entry("train", argv, capsys)
    assert code == 2, err
    assert err.strip().count("\n") == 0 and f"pretrained={path}" in err
    assert not (cache / "synthetic").exists()  # no image cache built
    import mlflow

    assert len(mlflow.search_runs(search_all_experiments=True)) == 0


# ----------------------------------------------------------------------- (b) unreachable tracking server


ENTRY_ARGS = {
    "train": TINY,
    "preprocess": ["--envs", "cxp,nih", "--synthetic_patients", "100"],
    "compare": ["--base", "cxp", "--added", "nih", "--label", "any", "--seeds", "0", "--preset", "cpu"],
    "evaluate": ["--model_uri", "models:/x@latest"],
    "probe": ["--model_uri", "models:/x@latest", "--envs", "cxp,nih"],
    "tune": ["--envs", "cxp,nih", "--label", "any", "--preset", "cpu"],
    "main": ["--envs", "cxp,nih", "--labels", "any", "--seeds", "0", "--preset", "cpu", "--workers", "1"],
    "analyze": [],
    "benchmark": ["--size", "tiny"],
}


def test_every_entry_point_fails_fast_on_an_unreachable_tracking_server(tmp_path):
    uri = "http://127.0.0.1:9"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "CXRSTUDY_CACHE": str(tmp_path / "cache"),
           "OMP_NUM_THREADS": "1"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    for name, args in ENTRY_ARGS.items():  # one at a time: each must fail in < 15 s on its own
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, str(ROOT / "entrypoints" / f"{name}.py"), *args], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        err = p.stderr
        lines = [ln for ln in err.strip().splitlines() if not ln.startswith("preset=auto")]
        assert p.returncode == 1, (name, err[-2000:])
        assert "Traceback" not in err, (name, err[-2000:])
        assert len(lines) == 1 and uri in lines[0] and "unreachable" in lines[0], (name, err[-2000:])
        assert took < 15, (name, took)


# ------------------------------------------------------------------------ (g) local server's log file


def test_local_study_server_log_goes_to_the_cache_log_folder(tmp_path, monkeypatch):
    import cxrstudy.runs.launchers.local as local
    import cxrstudy.tracking.server as server
    from test_train_evaluate import tiny_config

    seen = {}

    @contextmanager
    def fake_server(backend, artifacts, **kw):
        seen.update(kw, artifacts=artifacts)
        yield "http://127.0.0.1:1"

    monkeypatch.setattr(server, "local_server", fake_server)
    monkeypatch.setattr(local, "run_cells", lambda *a, **k: None)
    cfg = tiny_config(tmp_path)
    repo = tmp_path / "repo"
    local.run_local([cfg], workers=2, tracking_uri=f"sqlite:///{repo}/mlflow.db", experiment_id="0")
    assert seen["log_dir"] == Path(cfg.data.cache_dir) / "logs"


def test_local_server_writes_its_log_under_log_dir(tmp_path, migrated_db):
    import shutil

    from cxrstudy.tracking.server import local_server

    db = tmp_path / "repo" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(migrated_db, db)
    logs = tmp_path / "cache" / "logs"
    with local_server(f"sqlite:///{db}", db.parent / "mlartifacts", log_dir=logs) as url:
        assert url.startswith("http://127.0.0.1:")
    assert list(logs.glob("mlflow-server-*.log"))
    assert not list(db.parent.glob("mlflow-server-*.log"))


# -------------------------------------------------------- (f) corrupt images counted on the train run


def test_train_run_counts_the_images_it_could_not_decode(store, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from cxrstudy.data.synthetic.source import SyntheticSource
    from cxrstudy.runs.train import run_training
    from test_train_evaluate import tiny_config

    real = SyntheticSource.read_image

    def sometimes_corrupt(self, path, size):
        if sum(map(ord, str(path))) % 7 == 0:
            raise OSError("image file is truncated")
        return real(self, path, size)

    monkeypatch.setattr(SyntheticSource, "read_image", sometimes_corrupt)  # the cache forks its workers
    cfg = tiny_config(tmp_path)
    res = run_training(cfg, progress=False)
    metrics = MlflowClient().get_run(res["run_id"]).data.metrics
    per_split = {k: v for k, v in metrics.items() if k.startswith("data/") and k.endswith("/skipped_images")
                 and k.count("/") == 3}
    expected = sum(cfg.data.entry(e, s, progress=False).manifest["n_skipped"] for e in cfg.envs for s in ("train", "val"))
    assert expected > 0
    assert metrics["data/skipped_images"] == expected == sum(per_split.values())
    assert set(per_split) == {f"data/{e}/{s}/skipped_images" for e in cfg.envs for s in ("train", "val")}
