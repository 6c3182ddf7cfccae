"""Launchers without a cluster: the sbatch script, the Slurm config file, the retry limit (with
fake sbatch/squeue/sacct on PATH), parameter checks, and the local launcher's GPU slots."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cxrstudy.train.config import TRAIN_PARAMS, config_from_params
from cxrstudy.errors import DataError, UsageError
from cxrstudy.runs.launchers import LAUNCHER_PARAMS, launcher_from_params
from cxrstudy.runs.launchers import local, slurm, slurm_commands, slurm_options, slurm_script

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def cells(tmp_path, monkeypatch):
    monkeypatch.setenv("CXRSTUDY_CACHE", str(tmp_path / "cache"))
    base = {**TRAIN_PARAMS, "preset": "cpu", "image_size": "32", "label": "Any", "synthetic_patients": "200"}
    return [config_from_params({**base, "envs": e}) for e in ("cxp", "nih", "cxp,nih")]


def opts(**kw):
    return slurm_options.SlurmOptions(**kw).validate()


def script_for(cells, o, tmp_path):
    return slurm_script.render_script(cells, o, job_name="cxrstudy-abc", parent_run_id="p" * 32, experiment_id="7",
                               tracking_uri="http://mlflow.cluster:5000", device="auto", log_dir=tmp_path)


# ------------------------------------------------------------------------------------ sbatch script

def test_script_is_a_job_array_with_every_requested_resource(cells, tmp_path):
    o = opts(partition="gpu", gpus=2, cpus=8, mem="48G", time="1-00:00:00", max_parallel=4,
             extra=["--account=lab", "#SBATCH --qos=high"], setup=["module load cuda"], python="/shared/venv/bin/python")
    s = script_for(cells, o, tmp_path)
    sb = [line for line in s.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --array=0-2%4" in sb
    for want in ("--partition=gpu", "--gres=gpu:2", "--cpus-per-task=8", "--mem=48G", "--time=1-00:00:00",
                 "--account=lab", "--qos=high", "--job-name=cxrstudy-abc", f"--output={tmp_path}/%x-%A_%a.log"):
        assert f"#SBATCH {want}" in sb, want
    # every #SBATCH line comes before the first command (sbatch stops reading them there)
    lines = s.splitlines()
    first_cmd = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(lines.index(line) < first_cmd for line in sb)
    assert "export MLFLOW_TRACKING_URI=http://mlflow.cluster:5000" in s
    assert "export MLFLOW_HTTP_REQUEST_MAX_RETRIES=" in s and "unset MLFLOW_RUN_ID" in s
    assert "module load cuda" in s and "PY=/shared/venv/bin/python" in s
    assert "-m mlflow run" in s and "--env-manager local -e train" in s and '--run-id "$RUN_ID"' in s
    for i, cfg in enumerate(cells):  # one case per task, with the cell's exact train parameters
        case = next(line for line in lines if line.strip().startswith(f"{i}) CELL={cfg.content_hash()};"))
        assert f"-P envs={','.join(cfg.envs)}" in case and "-P label=Any" in case and "-P image_size=32" in case
        assert f"-P parent_run_id={'p' * 32}" in case and f"-P cache_dir={cfg.data.cache_dir}" in case
    assert subprocess.run(["bash", "-n"], input=s, text=True).returncode == 0  # valid bash


def test_script_leaves_out_what_was_not_asked_for(cells, tmp_path):
    s = script_for(cells[:1], opts(), tmp_path)
    assert "#SBATCH --array=0-0\n" in s
    assert "--partition" not in s and "--gres" not in s and "--mem" not in s and "--time" not in s


def test_each_case_reproduces_its_cell(cells, tmp_path):
    """The -P values of a task, parsed back as train would, give the same configuration hash."""
    for cfg in cells:
        params = slurm_script.job_params(cfg, "pid", "auto")
        assert config_from_params({**TRAIN_PARAMS, **params}).content_hash() == cfg.content_hash()


# ------------------------------------------------------------------------------------- config file

def test_example_config_parses():
    o = slurm_options.options_from_params({"slurm_config": str(ROOT / "examples" / "slurm.toml")})
    assert o.gpus == 1 and o.partition and o.time and o.extra and o.max_retries >= 1


@pytest.mark.parametrize("name,text", [
    ("s.toml", 'partition = "gpu"\ngpus = 1\ncpus = 6\nmem = "32G"\ntime = "12:00:00"\nextra = ["--account=lab"]\n'
               'max_retries = 3\n'),
    ("s.toml", '[slurm]\npartition = "gpu"\ngpus = 1\ncpus = 6\nmem = "32G"\ntime = "12:00:00"\n'
               'extra = "--account=lab"\nmax_retries = 3\n'),
    ("s.yaml", "partition: gpu\ngpus: 1\ncpus: 6\nmem: 32G\ntime: '12:00:00'\nextra: [--account=lab]\nmax_retries: 3\n"),
])
def test_config_file_formats(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    o = slurm_options.options_from_params({"slurm_config": str(tmp_path / name)})
    assert (o.partition, o.gpus, o.cpus, o.mem, o.time, o.extra, o.max_retries) == \
        ("gpu", 1, 6, "32G", "12:00:00", ["--account=lab"], 3)


def test_parameters_override_the_config_file(tmp_path):
    (tmp_path / "s.toml").write_text('partition = "gpu"\ngpus = 1\nmax_retries = 3\n')
    o = slurm_options.options_from_params({"slurm_config": str(tmp_path / "s.toml"), "slurm_partition": "long",
                                   "slurm_gpus": "4", "slurm_extra": "--account=a;--qos=b", "slurm_max_retries": "0"})
    assert (o.partition, o.gpus, o.extra, o.max_retries) == ("long", 4, ["--account=a", "--qos=b"], 0)


@pytest.mark.parametrize("text,match", [
    ("partiton = 'gpu'\n", "unknown setting.*partiton"),
    ("gpus = 'two'\n", "gpus"),
    ("time = 'tomorrow'\n", "time"),
    ("mem = 'lots'\n", "mem"),
    ("cpus = 0\n", "cpus"),
    ("this is not toml", "cannot parse"),
])
def test_bad_config_is_a_usage_error(tmp_path, text, match):
    (tmp_path / "s.toml").write_text(text)
    with pytest.raises(UsageError, match=match):
        slurm_options.options_from_params({"slurm_config": str(tmp_path / "s.toml")})


def test_launcher_parameters():
    assert launcher_from_params({}).name == "local"
    assert launcher_from_params({"launcher": "Slurm", "slurm_gpus": "1"}).slurm.gpus == 1
    with pytest.raises(UsageError, match="launcher"):
        launcher_from_params({"launcher": "pbs"})
    with pytest.raises(UsageError, match="slurm_partition.*launcher=slurm"):
        launcher_from_params({"launcher": "local", "slurm_partition": "gpu"})
    with pytest.raises(UsageError, match="does not exist"):
        launcher_from_params({"launcher": "slurm", "slurm_config": "/nonexistent/slurm.toml"})
    assert set(LAUNCHER_PARAMS) <= set(__import__("importlib").import_module("cxrstudy.tools.mlproject")
                                       .entry_params("main"))


def test_slurm_needs_a_tracking_server():
    with pytest.raises(UsageError, match="tracking server"):
        launcher_from_params({"launcher": "slurm"}).check("sqlite:///tmp/mlflow.db")


def test_main_rejects_slurm_with_a_sqlite_store_before_any_work(tmp_path):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "CXRSTUDY_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, str(ROOT / "entrypoints" / "main.py"), "--launcher", "slurm"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2 and "tracking server" in out.stderr, out.stderr[-2000:]


# -------------------------------------------------------------------- retries, with a fake Slurm

FAKE = {
    # sbatch: remember the script, print the next job id
    "sbatch": 'n=$(( $(cat "$FAKE_DIR/n" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE_DIR/n"; '
              'cp "${@: -1}" "$FAKE_DIR/job-$n.sbatch"; echo "$n"',
    "squeue": "exit 0",  # every task has already left the queue
    "scancel": "exit 0",
    # sacct: every task of every array FAILED
    "sacct": 'jobs=""; while [ $# -gt 0 ]; do [ "$1" = -j ] && jobs=$2; shift; done; '
             'for j in ${jobs//,/ }; do for t in 0 1 2; do echo "${j}_$t|FAILED|1:0"; done; done',
}


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    d = tmp_path / "fake-slurm"
    d.mkdir()
    for name, body in FAKE.items():
        p = d / name
        p.write_text(f"#!/bin/bash\n{body}\n")
        p.chmod(p.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{d}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_DIR", str(d))
    monkeypatch.setattr(slurm, "adoptable", lambda cells, active: {})
    monkeypatch.setattr(slurm, "mark_orphans_failed", lambda *a, **k: [])
    return d


def _finished_after(monkeypatch, done_hashes: set):
    import cxrstudy.runs.train as tr

    monkeypatch.setattr(tr, "find_trained", lambda c, *a, **k: object() if c.content_hash() in done_hashes else None)


def test_failed_cells_are_resubmitted_up_to_the_limit_then_reported(cells, fake_slurm, monkeypatch, tmp_path, capsys):
    _finished_after(monkeypatch, set())  # nothing ever finishes
    o = opts(max_retries=2, poll_seconds=0.1, log_dir=str(tmp_path / "logs"))
    with pytest.raises(DataError, match="3 of 3 training cells failed on Slurm"):
        slurm.run_slurm(cells, o, parent_run_id="a" * 32, experiment_id="1", tracking_uri="http://127.0.0.1:1")
    scripts = sorted(fake_slurm.glob("job-*.sbatch"))
    assert len(scripts) == 3  # the first submission and two retries, each an array of the 3 cells
    assert all("#SBATCH --array=0-2" in s.read_text() for s in scripts)
    err = capsys.readouterr().err
    assert err.count("resubmitting") == 6 and err.count("giving up after 2 retries") == 3
    assert "FAILED" in err and "exit 1:0" in err


def test_only_unfinished_cells_are_submitted_and_retried(cells, fake_slurm, monkeypatch, tmp_path):
    done = {cells[0].content_hash()}
    _finished_after(monkeypatch, done)
    o = opts(max_retries=1, poll_seconds=0.1, log_dir=str(tmp_path / "logs"))
    submitted = []
    real = slurm.sbatch

    def sbatch(script):
        job = real(script)
        submitted.append(script.read_text().count(") CELL="))
        done.add(cells[1].content_hash())  # cell 1 finishes on its first try, cell 2 never
        return job

    monkeypatch.setattr(slurm, "sbatch", sbatch)
    with pytest.raises(DataError, match="1 of 2 training cells failed") as e:
        slurm.run_slurm(cells, o, parent_run_id="a" * 32, experiment_id="1", tracking_uri="http://127.0.0.1:1")
    assert submitted == [2, 1]  # cells 1 and 2, then only cell 2 again
    assert "cxp+nih" in str(e.value)

    done.add(cells[2].content_hash())  # everything finished: nothing is submitted
    slurm.run_slurm(cells, o, parent_run_id="a" * 32, experiment_id="1", tracking_uri="http://127.0.0.1:1")
    assert submitted == [2, 1]


def test_final_states_fall_back_to_scontrol(fake_slurm):
    (fake_slurm / "sacct").write_text("#!/bin/bash\necho 'Slurm accounting storage is disabled' >&2; exit 1\n")
    (fake_slurm / "scontrol").write_text(
        "#!/bin/bash\necho 'JobId=8 ArrayJobId=7 ArrayTaskId=1 JobName=x JobState=CANCELLED Reason=None ExitCode=0:15'\n")
    (fake_slurm / "scontrol").chmod(0o755)
    assert slurm_commands.final_states(["7"]) == {"7_1": ("CANCELLED", "0:15")}


# -------------------------------------------------------------------------- local launcher, GPUs

def test_auto_workers_is_one_per_gpu_and_slots_never_share_a_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(local, "gpu_count", lambda: 4)
    assert local.visible_gpus() == ["0", "1", "2", "3"]
    assert local.resolve_workers("auto") == 4
    assert [local.worker_env(i, 4, "http://x", "0")["CUDA_VISIBLE_DEVICES"] for i in range(4)] == ["0", "1", "2", "3"]
    assert local.resolve_workers("2") == 2  # fewer workers than GPUs: slots 0 and 1, distinct GPUs
    assert local.worker_env(1, 2, "http://x", "0")["CUDA_VISIBLE_DEVICES"] == "1"
    assert local.worker_env(0, 2, "http://x", "0")["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "10"


def test_workers_follow_the_parents_visible_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    monkeypatch.setattr(local, "gpu_count", lambda: 2)
    assert local.resolve_workers("auto") == 2
    assert [local.worker_env(i, 2, "sqlite:///x", "0")["CUDA_VISIBLE_DEVICES"] for i in range(2)] == ["2", "5"]


def test_more_workers_than_gpus_only_when_asked(monkeypatch, capsys):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(local, "gpu_count", lambda: 2)
    assert local.resolve_workers("3") == 3
    assert "some GPUs run two workers" in capsys.readouterr().err
    assert [local.slot_gpu(i, ["0", "1"]) for i in range(3)] == ["0", "1", "0"]


def test_without_gpus_auto_is_one_worker_per_core_and_cuda_is_left_alone(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(local, "gpu_count", lambda: 0)
    monkeypatch.setattr(local, "usable_cores", lambda: 2)
    assert local.resolve_workers("auto") == 2  # one single-threaded training per core
    monkeypatch.setattr(local, "usable_cores", lambda: 1)
    assert local.resolve_workers("auto") == 1
    assert "CUDA_VISIBLE_DEVICES" not in local.worker_env(0, 2, "sqlite:///x", "0")
    monkeypatch.setattr(local, "gpu_count", lambda: 1)  # one GPU: workers share it, as before
    assert local.resolve_workers("auto") == 1 and "CUDA_VISIBLE_DEVICES" not in local.worker_env(1, 2, "x", "0")
    with pytest.raises(UsageError):
        local.resolve_workers("many")


# ------------------------------------------------------------------------ runs left by a dead worker

def test_orphaned_runs_are_ended_by_one_function_for_both_launchers(store):
    """local (a dead worker's cell), slurm (a dead task) and train (a stale run) end the RUNNING runs
    of one tag value in any experiment, sparing kept, finished and other runs."""
    from mlflow.tracking import MlflowClient

    from cxrstudy.tracking import keys
    from cxrstudy.tracking.runs import mark_orphans_failed

    client = MlflowClient()
    other_exp = client.create_experiment("elsewhere")

    def make(exp, value, status="RUNNING"):
        rid = client.create_run(exp, tags={keys.SLURM_JOB_TAG: value}).info.run_id
        if status != "RUNNING":
            client.set_terminated(rid, status)
        return rid

    dead, dead_elsewhere, kept = make("0", "7_1"), make(other_exp, "7_1"), make("0", "7_1")
    finished, other_task = make("0", "7_1", "FINISHED"), make("0", "7_2")
    ended = mark_orphans_failed(keys.SLURM_JOB_TAG, "7_1", keep={kept}, reason="its task died")
    assert sorted(ended) == sorted([dead, dead_elsewhere])
    status = {rid: client.get_run(rid).info.status for rid in (dead, dead_elsewhere, kept, finished, other_task)}
    assert status == {dead: "FAILED", dead_elsewhere: "FAILED", kept: "RUNNING", finished: "FINISHED",
                      other_task: "RUNNING"}
    assert client.get_run(dead).data.tags[keys.FAILED_REASON_TAG] == "its task died"
    assert mark_orphans_failed(keys.SLURM_JOB_TAG, "7_2", status="KILLED") == [other_task]
    assert client.get_run(other_task).info.status == "KILLED"
    assert keys.FAILED_REASON_TAG not in client.get_run(other_task).data.tags
