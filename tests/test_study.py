"""The study end to end on tiny synthetic hospitals: main, resume, rerun, parallel workers."""

import os
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import psutil
from mlflow.tracking import MlflowClient

from cxrstudy.runs.launchers import train_worker

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--envs", "cxp,nih", "--labels", "Any", "--seeds", "0", "--balances", "none,hospital_label",
        "--preset", "cpu", "--image_size", "32", "--batch_size", "16", "--synthetic_patients", "200",
        "--n_bootstrap", "100"]


def runs(entry, status=None):
    f = f"tags.`cxrstudy.entry` = '{entry}'" + (f" and attributes.status = '{status}'" if status else "")
    return mlflow.search_runs(search_all_experiments=True, filter_string=f)


def main_cmd(*extra):
    return [sys.executable, str(ROOT / "entrypoints" / "main.py"), *TINY, *extra]


def check_grid_done_once(noise_floor: bool = False):
    train = runs("train", "FINISHED")
    # 2 single-hospital models + 1 pair + 1 balanced pair, each trained exactly once; the A/A noise
    # floor adds the unbalanced three (cxp, nih, cxp+nih) at seed 1
    assert len(train) == 4 + 3 * noise_floor, train[["tags.envs", "tags.balance"]]
    assert train["tags.cxrstudy.config_hash"].is_unique
    floor = runs("noise_floor", "FINISHED")
    assert len(floor) == 3 * noise_floor
    if noise_floor:
        assert floor["tags.cxrstudy.noise_floor_key"].is_unique
        assert set(floor["tags.seeds"]) == {"0"} and set(floor["tags.seeds_b"]) == {"1"}
        assert floor["metrics.noise_floor/significant"].isin([-1, 0, 1]).all()
    compare = runs("compare", "FINISHED")
    assert len(compare) == 4  # (cxp, nih) and (nih, cxp) x (none, hospital_label)
    assert compare["tags.cxrstudy.compare_key"].is_unique
    for col in ("compare/wga_single", "compare/wga_pair", "compare/delta_wga", "compare/delta_ci_low",
                "compare/delta_ci_high", "compare/hurt"):
        assert compare[f"metrics.{col}"].notna().all()
    d = compare["metrics.compare/delta_wga"]
    assert ((compare["metrics.compare/delta_ci_low"] <= d + 1e-9) & (d <= compare["metrics.compare/delta_ci_high"] + 1e-9)).all()
    assert ((d < 0).astype(float) == compare["metrics.compare/hurt"]).all()
    # hypothesis 2 by the same rule: a balanced comparison also measures its model against the unbalanced pair
    balanced = compare[compare["tags.balance"] == "hospital_label"]
    assert len(balanced) == 2 and balanced["metrics.compare/balanced_minus_pair_ci_low"].notna().all()


def test_main_through_mlflow_run_then_rerun_is_a_no_op(store):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    params = []
    for k, v in zip(TINY[::2], TINY[1::2]):
        params += ["-P", f"{k[2:]}={v}"]
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "-e", "main",
           "-P", "max_steps=6", "-P", "eval_every=3", "-P", "probe=true", *params]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    check_grid_done_once(noise_floor=True)
    parent = runs("main", "FINISHED")
    assert len(parent) == 1
    pid = parent.run_id.iloc[0]
    children = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`mlflow.parentRunId` = '{pid}'")
    entries = set(children["tags.cxrstudy.entry"])
    assert {"preprocess", "train", "compare", "analyze", "probe", "noise_floor"} <= entries
    probes = runs("probe", "FINISHED")  # -P probe=true: one probe run per trained model
    assert len(probes) == 7 and probes["tags.train_run_id"].is_unique
    analysis = runs("analyze", "FINISHED")
    assert "metrics.analysis/hurt_fraction" in analysis.columns and "metrics.analysis/balanced/hurt_fraction" in analysis.columns
    assert analysis["metrics.analysis/noise_floor/n_comparisons"].iloc[0] == 3
    art = MlflowClient().list_artifacts(analysis.run_id.iloc[0])
    names = {a.path for a in art}
    assert {"settings.csv", "report.md", "probe_summary.csv", "noise_floor.csv"} <= names
    assert any(n.endswith(".png") for n in names)
    assert "adding a second hospital" in out.stdout.lower() or "wga" in out.stdout.lower()
    assert "A/A noise floor" in out.stdout

    # run again: nothing is trained or compared again, and it is quick
    t = time.perf_counter()
    out2 = subprocess.run(main_cmd("--max_steps", "6", "--eval_every", "3"), env=env, capture_output=True,
                          text=True, timeout=600)
    assert out2.returncode == 0, out2.stderr[-4000:]
    check_grid_done_once(noise_floor=True)
    assert time.perf_counter() - t < 60


def test_two_workers_through_a_local_server_lose_no_runs_and_resume_after_a_kill(store):
    env = {**os.environ}
    # long enough cells that a worker can be killed mid-training
    proc = subprocess.Popen(main_cmd("--max_steps", "300", "--eval_every", "20", "--workers", "2", "--noise_floor", "false"),
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    killed = None
    deadline = time.monotonic() + 300
    main_proc = psutil.Process(proc.pid)
    while killed is None and time.monotonic() < deadline and proc.poll() is None:
        running = runs("train", "RUNNING")
        # kill one of *this* study's training workers once a running cell has logged a validation
        if "metrics.val/macro_f1" in running.columns and running["metrics.val/macro_f1"].notna().any():
            for child in main_proc.children(recursive=True):
                try:
                    if any(train_worker.__name__ in part for part in child.cmdline()):
                        child.kill()
                        killed = child.pid
                        break
                except psutil.NoSuchProcess:
                    continue
        time.sleep(0.3)
    log, _ = proc.communicate(timeout=900)
    assert killed is not None, log[-3000:]
    assert proc.returncode == 1, log[-3000:]  # the study reports the failed cell ...
    assert "training cells failed" in log
    servers = [p for p in psutil.process_iter(["cmdline"])
               if "server" in (p.info["cmdline"] or []) and store in " ".join(p.info["cmdline"] or [])]
    assert not servers  # ... and stopped the mlflow server it started
    # the killed cell's run is not FINISHED; the rerun completes the grid without duplicates
    out = subprocess.run(main_cmd("--max_steps", "300", "--eval_every", "20", "--workers", "2", "--noise_floor", "false"), env=env,
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-4000:]
    check_grid_done_once()
    assert len(runs("train")) >= 5  # the killed attempt is kept, not marked FINISHED
