"""Work done once among processes that share only the tracking server (issue 22 items 6 and 7):
the server claim, the same train with two caches, the experiment created by two processes at
once, and two studies started together computing each comparison once."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from cxrstudy.tracking import keys
from cxrstudy.tracking import runs as tracking
from cxrstudy.tracking.claims import CLAIM_PREFIX, ServerClaim
from cxrstudy.tracking.server import local_server
from cxrstudy.train.lock import STALE_AFTER_S
from test_train_concurrency import dead_pid, run_at_once, train_runs, versions

ROOT = Path(__file__).resolve().parents[1]


def claims(client=None) -> list[str]:
    client = client or MlflowClient()
    return [m.name for m in client.search_registered_models() if m.name.startswith(CLAIM_PREFIX)]


def fake_claim(key: str, host: str, pid: int, heartbeat: float) -> None:
    MlflowClient().create_registered_model(CLAIM_PREFIX + key, tags={
        keys.CLAIM_HOLDER_TAG: json.dumps({"host": host, "pid": pid, "token": "someone"}),
        keys.CLAIM_HEARTBEAT_TAG: f"{heartbeat:.0f}"})


def test_a_server_claim_is_exclusive_released_and_broken_only_when_stale(store):
    a, b = ServerClaim("k"), ServerClaim("k")
    assert a.try_acquire()
    assert not b.try_acquire()  # held by a live process (this one)
    assert "pid" in b.describe(b.holder()) and socket.gethostname() in b.describe(b.holder())
    a.release()
    assert claims() == []  # released: nothing left in the registry
    assert b.try_acquire()
    b.release()
    # the holder was on this host and its process is gone: stale, broken and taken
    fake_claim("dead", socket.gethostname(), dead_pid(), time.time())
    c = ServerClaim("dead")
    assert c.try_acquire()
    c.release()
    # on another host: alive while its heartbeat is fresh, stale once older than STALE_AFTER_S
    fake_claim("far", "elsewhere.invalid", 1, time.time())
    assert not ServerClaim("far").try_acquire()
    MlflowClient().set_registered_model_tag(CLAIM_PREFIX + "far", keys.CLAIM_HEARTBEAT_TAG,
                                            f"{time.time() - STALE_AFTER_S - 5:.0f}")
    d = ServerClaim("far")
    assert d.try_acquire()
    d.release()
    assert claims() == []


def test_a_new_experiment_created_meanwhile_by_another_process_is_used_not_an_error(store, monkeypatch):
    """Two processes start on a new experiment: both look it up and find none, one creates it, the
    other's create fails with RESOURCE_ALREADY_EXISTS. Replayed exactly: the other process creates
    it after this process's lookup."""
    other = MlflowClient().create_experiment("fresh")  # the other process's create
    real = MlflowClient.get_experiment_by_name
    looked = []

    def lookup_before_the_others_create(self, name):
        looked.append(name)
        return None if len(looked) == 1 else real(self, name)

    monkeypatch.setattr(MlflowClient, "get_experiment_by_name", lookup_before_the_others_create)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "fresh")
    tracking.setup()
    with mlflow.start_run() as run:
        assert run.info.experiment_id == other
    assert looked  # the replay happened


def train_cmd(cache: Path) -> list[str]:
    return [sys.executable, str(ROOT / "entrypoints" / "train.py"), "--envs", "cxp,nih", "--label", "any",
            "--preset", "cpu", "--image_size", "32", "--backbone", "smallcnn", "--synthetic_patients", "200",
            "--batch_size", "8", "--eval_every", "3", "--max_steps", "12", "--cache_dir", str(cache)]


def test_the_same_train_with_two_cache_dirs_on_one_server_gives_one_run_and_one_version(store, tmp_path):
    """Two machines that share the tracking server but not a disk: the claim lives on the server."""
    with local_server(store, tmp_path / "mlartifacts") as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "OMP_NUM_THREADS": "1"}
        logs = run_at_once([train_cmd(tmp_path / f"cache-{i}") for i in range(2)], env, timeout=600)
        client = MlflowClient(tracking_uri=url)
        runs = train_runs(client)
        assert [r.info.status for r in runs] == ["FINISHED"], [(r.info.run_id, r.info.status) for r in runs]
        assert versions(runs[0].data.tags["registered_model"], client) == [1]
        assert sum("already trained" in log for log in logs) == 1, logs
        assert claims(client) == []


def test_two_mains_at_once_on_a_new_experiment_both_finish_and_compute_each_comparison_once(store, tmp_path,
                                                                                             tiny_main_argv):
    with local_server(store, tmp_path / "mlartifacts") as url:
        env = {**os.environ, "MLFLOW_TRACKING_URI": url, "MLFLOW_EXPERIMENT_NAME": "two-studies",
               "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, str(ROOT / "entrypoints" / "main.py"), *tiny_main_argv("--n_bootstrap", "2000")]
        logs = run_at_once([cmd, cmd], env, timeout=600, cwd=tmp_path)
        for log in logs:
            assert "RESOURCE_ALREADY_EXISTS" not in log
        client = MlflowClient(tracking_uri=url)
        exp = client.get_experiment_by_name("two-studies").experiment_id
        compares = client.search_runs([exp], f"tags.`{keys.ENTRY_TAG}` = '{keys.ENTRY_COMPARE}'")
        by_key: dict = {}
        for r in compares:
            by_key.setdefault(r.data.tags[keys.COMPARE_KEY_TAG], []).append(r.info.status)
        assert len(by_key) == 2  # cxp+nih and nih+cxp
        assert all(statuses == ["FINISHED"] for statuses in by_key.values()), by_key
        assert claims(client) == []
