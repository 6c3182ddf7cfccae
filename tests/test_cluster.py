"""The study on a real (single-node) Slurm cluster logging to an ``mlflow server`` backed by
PostgreSQL: every cell trains exactly once, and a job cancelled mid-run is redone by the next
``main`` without duplicates. Skips (or, in CI, fails) when slurm-wlm/munge/postgresql are missing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from cluster_fixtures import cluster  # noqa: F401,F811  (a fixture; tests take it by name)

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--envs", "cxp,nih", "--labels", "Any", "--seeds", "0", "--balances", "none", "--preset", "cpu",
        "--image_size", "32", "--batch_size", "16", "--synthetic_patients", "200", "--n_bootstrap", "100",
        "--max_steps", "120", "--eval_every", "10", "--launcher", "slurm", "--noise_floor", "false"]
N_CELLS = 3  # cxp, nih, cxp+nih (the A/A noise floor, tested in test_study.py, would add their seed-1 twins)


def _env(cluster, tmp_path, experiment: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT"))}
    exp_id = _client(cluster).create_experiment(experiment)
    env.update(cluster["env"], MLFLOW_TRACKING_URI=cluster["tracking_uri"], MLFLOW_EXPERIMENT_ID=exp_id,
               CXRSTUDY_CACHE=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    return env


def _client(cluster):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=cluster["tracking_uri"])


def _runs(cluster, experiment: str, filter_string: str):
    c = _client(cluster)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id], filter_string, max_results=1000) if exp else []


def test_study_on_slurm_with_postgres_server_cancel_a_job_then_resume(cluster, tmp_path):
    exp = "slurm-study"
    env = _env(cluster, tmp_path, exp)
    config = tmp_path / "slurm.toml"
    config.write_text('cpus = 1\ntime = "00:20:00"\nmax_retries = 0\npoll_seconds = 1\n'
                      'extra = ["--comment=cxrstudy-test"]\n')
    cmd = [sys.executable, str(ROOT / "entrypoints" / "main.py"), *TINY, "--slurm_config", str(config)]
    log1 = open(tmp_path / "main1.log", "w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log1, stderr=subprocess.STDOUT, start_new_session=True)
    cancelled = None
    deadline = time.monotonic() + 400
    try:
        while cancelled is None and proc.poll() is None and time.monotonic() < deadline:
            # cancel one task once its run is training (has logged a validation step)
            for run in _runs(cluster, exp, "tags.`cxrstudy.entry` = 'train' and attributes.status = 'RUNNING'"):
                if "val/macro_f1" in run.data.metrics and run.data.tags.get("cxrstudy.slurm_job"):
                    cancelled = run.data.tags["cxrstudy.slurm_job"]
                    subprocess.run(["scancel", cancelled], env=env, check=True)
                    break
            time.sleep(0.5)
        proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    out1 = (tmp_path / "main1.log").read_text()
    assert cancelled is not None, out1[-4000:]
    assert proc.returncode == 1, out1[-4000:]  # max_retries=0: main reports the cancelled cell and stops
    assert "failed on Slurm" in out1 and cancelled in out1, out1[-4000:]
    assert f"submitted {N_CELLS} cell(s) as job array" in out1
    killed = _runs(cluster, exp, f"tags.`cxrstudy.slurm_job` = '{cancelled}'")
    assert [r.info.status for r in killed] == ["FAILED"]  # the cancelled task's run is not left RUNNING

    # run main again: only the cancelled cell is submitted; the grid completes without duplicates
    out2 = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out2.returncode == 0, out2.stderr[-4000:]
    assert "submitted 1 cell(s) as job array" in out2.stderr, out2.stderr[-4000:]

    finished = _runs(cluster, exp, "tags.`cxrstudy.entry` = 'train' and attributes.status = 'FINISHED'")
    hashes = [r.data.tags.get("cxrstudy.config_hash") for r in finished]
    assert len(hashes) == N_CELLS and len(set(hashes)) == N_CELLS and None not in hashes, hashes
    for r in finished:  # each logged by a Slurm task through `mlflow run -e train`, nested under a main run
        assert r.data.tags.get("cxrstudy.slurm_job")
        assert r.data.tags.get("mlflow.project.entryPoint") == "train"
        assert r.data.tags.get("mlflow.project.backend") == "local"  # set by `mlflow run`
        assert r.data.tags.get("mlflow.parentRunId")
        assert r.data.tags.get("registered_model")
    assert len(_runs(cluster, exp, "tags.`cxrstudy.entry` = 'compare' and attributes.status = 'FINISHED'")) == 2
    assert len(_runs(cluster, exp, "tags.`cxrstudy.entry` = 'main' and attributes.status = 'FINISHED'")) == 1
    assert not _runs(cluster, exp, "attributes.status = 'RUNNING'")
    # the store really is PostgreSQL
    assert cluster["backend_uri"].startswith("postgresql")


def test_a_requeued_task_continues_its_run_and_a_retried_create_leaves_one_run(cluster, monkeypatch):
    """Idempotent run creation (cxrstudy.runs.launchers.job) against the PostgreSQL-backed server."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from cxrstudy.runs.launchers import job

    monkeypatch.setenv("MLFLOW_TRACKING_URI", cluster["tracking_uri"])
    mlflow.set_tracking_uri(cluster["tracking_uri"])
    try:
        client = MlflowClient()
        exp_id = client.create_experiment(f"job-idempotence-{time.time_ns()}")
        parent = client.create_run(exp_id).info.run_id
        kw = dict(run_name="train-x", parent_run_id=parent, experiment_id=exp_id)
        first = job.run_for_task("cellhash1", "101_0", **kw)
        assert job.run_for_task("cellhash1", "101_0", **kw) == first  # the requeued task finds its run
        assert job.run_for_task("cellhash1", "102_0", **kw) != first  # another task makes its own

        real_create = MlflowClient.create_run

        def create_twice(self, *a, **k):  # a create request retried after its response was lost
            real_create(self, *a, **k)
            return real_create(self, *a, **k)

        monkeypatch.setattr(MlflowClient, "create_run", create_twice)
        kept = job.run_for_task("cellhash2", "103_0", **kw)
        live = client.search_runs([exp_id], "tags.`cxrstudy.slurm_job` = '103_0'")
        assert [r.info.run_id for r in live] == [kept]
        assert client.get_run(kept).data.tags["mlflow.parentRunId"] == parent
    finally:
        mlflow.set_tracking_uri(None)
