"""Ctrl-C stops a parallel study at once (issue 22 item 5): no further cell starts, the running
workers end their runs KILLED, and no run is left RUNNING."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from mlflow.tracking import MlflowClient

from cxrstudy.tracking import keys

ROOT = Path(__file__).resolve().parents[1]


def all_runs(uri: str):
    client = MlflowClient(tracking_uri=uri)
    return client.search_runs([e.experiment_id for e in client.search_experiments()], "")


def alive(p: psutil.Process) -> bool:
    try:
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_ctrl_c_stops_a_parallel_study_at_once_and_leaves_nothing_running(store, tmp_path, tiny_main_argv):
    # three cells (cxp, nih, cxp+nih) for two workers; training long enough never to finish by itself
    argv = tiny_main_argv("--workers", "2", "--max_steps", "1000000", "--eval_every", "100000",
                          "--patience", "1000")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    main = subprocess.Popen([sys.executable, str(ROOT / "entrypoints" / "main.py"), *argv], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, as a terminal's foreground job
    family: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 240
        while True:  # until both workers train (their runs are RUNNING)
            assert main.poll() is None, main.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "the two workers did not start within 240 s"
            training = [r for r in all_runs(store) if r.data.tags.get(keys.ENTRY_TAG) == keys.ENTRY_TRAIN
                        and r.info.status == "RUNNING"]
            if len(training) == 2:
                break
            time.sleep(0.5)
        print(f"two workers training after {240 - deadline + time.monotonic():.0f} s")
        family = psutil.Process(main.pid).children(recursive=True)
        started = time.monotonic()
        os.killpg(main.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: SIGINT to the foreground group
        out, _ = main.communicate(timeout=90)
        took = time.monotonic() - started
    finally:
        if main.poll() is None:
            os.killpg(main.pid, signal.SIGKILL)
        for p in family:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
    print(f"main stopped {took:.1f} s after Ctrl-C")
    assert main.returncode == 130, out[-3000:]
    assert took < 60, f"main took {took:.0f} s to stop"  # workers stop in ~2 s; the rest is the local server
    assert not [p for p in family if alive(p)], "a worker outlived main"
    runs = all_runs(store)
    assert not [(r.data.tags.get("mlflow.runName"), r.info.status) for r in runs if r.info.status == "RUNNING"]
    train = [r for r in runs if r.data.tags.get(keys.ENTRY_TAG) == keys.ENTRY_TRAIN]
    assert len(train) == 2, [r.data.tags.get("mlflow.runName") for r in train]  # the third cell never started
    assert {r.info.status for r in train} == {"KILLED"}
    assert len(list((tmp_path / "cache" / "logs").glob("train-*.log"))) == 2
    main_run = [r for r in runs if r.data.tags.get(keys.ENTRY_TAG) == keys.ENTRY_MAIN]
    assert [r.info.status for r in main_run] == ["KILLED"]
