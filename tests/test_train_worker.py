"""The local launcher's persistent training workers (issue 21): one process per slot trains cell
after cell; a cell with bad parameters is answered with the entry point's exit code and the worker
goes on; a bug ends the worker (the launcher starts a fresh one) and never leaves a run RUNNING."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from cxrstudy.runs.launchers import local
from cxrstudy.runs.launchers.common import pending
from cxrstudy.runs.launchers.train_worker import EXIT, NEXT
from cxrstudy.runs.train import finished_hashes
from cxrstudy.tracking import keys
from cxrstudy.train.config import TRAIN_PARAMS, config_from_params

ROOT = Path(__file__).resolve().parents[1]


def tiny_params(tmp_path: Path, **over) -> dict:
    return {**TRAIN_PARAMS, "envs": "cxp", "label": "Any", "preset": "cpu", "batch_size": "16", "max_steps": "4",
            "eval_every": "2", "synthetic_patients": "120", "cache_dir": str(tmp_path / "cache"), "device": "cpu",
            **over}


def train_runs(uri: str):
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "")
    return [r for r in runs if r.data.tags.get(keys.ENTRY_TAG) == keys.ENTRY_TRAIN]


def test_a_worker_answers_each_cell_and_goes_on_after_bad_parameters_but_not_after_a_bug(store, tmp_path):
    cells = [
        {"params": tiny_params(tmp_path), "log": str(tmp_path / "a.log")},
        {"params": tiny_params(tmp_path, lr="-1"), "log": str(tmp_path / "b.log")},  # bad parameter: exit 2
        {"params": tiny_params(tmp_path, seed="1"), "log": str(tmp_path / "c.log")},
        {"params": {"envs": "cxp"}, "log": str(tmp_path / "d.log")},  # not a parameter set: a bug in the caller
        {"params": tiny_params(tmp_path, seed="2"), "log": str(tmp_path / "e.log")},  # never read
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(local.worker_argv(), input="".join(json.dumps(c) + "\n" for c in cells), text=True,
                          capture_output=True, env=env, cwd=ROOT, timeout=300)
    assert proc.stdout.splitlines() == [f"0 {NEXT}", f"2 {NEXT}", f"0 {NEXT}", f"1 {EXIT}"], proc.stderr[-3000:]
    assert proc.returncode == 1
    assert "lr" in (tmp_path / "b.log").read_text()  # the entry point's one-line error, in the cell's log
    assert "Traceback" in (tmp_path / "d.log").read_text()
    assert not (tmp_path / "e.log").exists()
    runs = train_runs(store)
    assert sorted(r.data.params["cfg.seed"] for r in runs) == ["0", "1"]
    assert {r.info.status for r in runs} == {"FINISHED"}


def test_parallel_cells_share_persistent_workers_and_all_finish(store, tmp_path):
    cfgs = [config_from_params(tiny_params(tmp_path, seed=str(s))) for s in range(3)]
    local.run_local(cfgs, workers=2, tracking_uri=store, experiment_id="0", progress=False)
    runs = train_runs(store)
    assert sorted(r.data.params["cfg.seed"] for r in runs) == ["0", "1", "2"]
    assert {r.info.status for r in runs} == {"FINISHED"}
    logs = tmp_path / "cache" / "logs"
    assert len(list(logs.glob("train-*.log"))) == 3
    assert len(list(logs.glob("worker-*.log"))) == 2  # two processes trained the three models
    # a second call finds every cell trained (one search of the store) and starts no server or worker
    assert finished_hashes([c.content_hash() for c in cfgs] + ["not-a-hash"]) == {c.content_hash() for c in cfgs}
    assert pending(cfgs) == []
    local.run_local(cfgs, workers=2, tracking_uri=store, experiment_id="0", progress=False)
    assert len(list(logs.glob("mlflow-server-*.log"))) == 1 and len(list(logs.glob("worker-*.log"))) == 2
