"""Concurrency and kills around one training configuration (issue 13 part 3): a per-configuration
lock across processes, stale RUNNING runs marked FAILED, and a READY registered model reused."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

from cxrstudy.runs.train import run_training, training_lock
from cxrstudy.tracking import keys
from cxrstudy.train.lock import STALE_AFTER_S, TrainLock
from test_train_evaluate import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def run_at_once(cmds: list[list[str]], env: dict, timeout: float, cwd=None) -> list[str]:
    """Start the commands together and wait for all; each must exit 0. Returns their output."""
    procs = [subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in cmds]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return logs


def train_runs(client) -> list:
    """Every training run in the store, any experiment."""
    return client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`{keys.ENTRY_TAG}` = '{keys.ENTRY_TRAIN}'")


def versions(name: str, client=None) -> list:
    client = client or MlflowClient()
    return sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))


# ------------------------------------------------------------------------------------ the lock file


def test_lock_is_exclusive_and_released(tmp_path):
    a, b = TrainLock(tmp_path / "x.lock"), TrainLock(tmp_path / "x.lock")
    assert a.try_acquire()
    assert not b.try_acquire()  # held by a live process (this one)
    info = json.loads((tmp_path / "x.lock").read_text())
    assert info["host"] == socket.gethostname() and info["pid"] == os.getpid()
    a.release()
    assert not (tmp_path / "x.lock").exists()
    assert b.try_acquire()
    b.release()


def test_stale_lock_rules(tmp_path):
    path = tmp_path / "x.lock"
    # same host, holder process gone: stale, broken and taken
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "token": "old"}))
    lock = TrainLock(path)
    assert not lock.holder_alive()
    assert lock.try_acquire()
    lock.release()
    # another host: alive while the heartbeat is fresh, stale once it is older than STALE_AFTER_S
    path.write_text(json.dumps({"host": "elsewhere.invalid", "pid": 1, "token": "other"}))
    assert TrainLock(path).holder_alive() and not TrainLock(path).try_acquire()
    old = time.time() - STALE_AFTER_S - 5
    os.utime(path, (old, old))
    assert not TrainLock(path).holder_alive()
    lock = TrainLock(path)
    assert lock.try_acquire()
    lock.release()
    # same host, a live process (pid 1 stays up): not stale
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": "live"}))
    assert TrainLock(path).holder_alive()


# ------------------------------------------------------------------- (c) READY model: reuse, no v2


def test_failed_run_with_a_ready_registered_version_is_reused_not_retrained(store, tmp_path):
    cfg = tiny_config(tmp_path)
    first = run_training(cfg, progress=False)
    client = MlflowClient()
    client.set_terminated(first["run_id"], "FAILED")  # what a kill -9 after "trained ... v1" led to
    again = run_training(cfg, progress=False)
    assert again["reused"] and again["run_id"] == first["run_id"]
    assert again["registered_version"] == 1 and again["model_uri"] == first["model_uri"]
    assert client.get_run(first["run_id"]).info.status == "FINISHED"
    assert versions(cfg.model_name()) == [1]


def test_unfinished_run_whose_tags_were_never_set_is_found_through_the_registry(store, tmp_path):
    cfg = tiny_config(tmp_path)
    first = run_training(cfg, progress=False)
    client = MlflowClient()
    client.delete_tag(first["run_id"], "registered_model")  # killed between register and set_tags
    client.delete_tag(first["run_id"], "registered_version")
    client.set_terminated(first["run_id"], "KILLED")
    again = run_training(cfg, progress=False)
    assert again["reused"] and again["run_id"] == first["run_id"] and again["registered_version"] == 1
    assert versions(cfg.model_name()) == [1]


# ----------------------------------------------------------------- (b) stale RUNNING runs: FAILED


def test_a_killed_runs_stale_running_run_is_marked_failed_with_a_reason(store, tmp_path):
    cfg = tiny_config(tmp_path)
    client = MlflowClient()
    exp = client.get_experiment_by_name("Default").experiment_id
    stale = client.create_run(exp, tags={keys.CONFIG_HASH_TAG: cfg.content_hash(), keys.ENTRY_TAG: keys.ENTRY_TRAIN})
    assert stale.info.status == "RUNNING"
    # the killed process left its lock behind, too
    lock = training_lock(cfg).path
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead_pid(), "token": "killed"}))
    res = run_training(cfg, progress=False)
    assert not res["reused"]
    old = client.get_run(stale.info.run_id)
    assert old.info.status == "FAILED"
    assert "stale" in old.data.tags[keys.FAILED_REASON_TAG]
    assert client.get_run(res["run_id"]).info.status == "FINISHED"
    assert not lock.exists()  # released


# ----------------------------------------------- (a) two identical train commands at the same time


def test_two_identical_train_commands_give_one_run_and_one_version(store, tmp_path):
    from cxrstudy.tracking.server import local_server

    args = ["--envs", "cxp,nih", "--label", "any", "--preset", "cpu", "--image_size", "32", "--backbone", "smallcnn",
            "--synthetic_patients", "200", "--batch_size", "8", "--eval_every", "3", "--max_steps", "12",
            "--cache_dir", str(tmp_path / "cache")]
    cmd = [sys.executable, str(ROOT / "entrypoints" / "train.py"), *args]
    with local_server(store, tmp_path / "mlartifacts") as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1"}
        logs = run_at_once([cmd, cmd], env, timeout=400)
        client = MlflowClient(tracking_uri=url)
        runs = train_runs(client)
        assert [r.info.status for r in runs] == ["FINISHED"], [(r.info.run_id, r.info.status) for r in runs]
        name = runs[0].data.tags["registered_model"]
        assert versions(name, client) == [1]
        assert sum("already trained" in log for log in logs) == 1, logs
