"""Checked up front, one line, no run (issue 22 items 13-18): the device, disk and memory a job
needs, a missing dataset folder, a method's own hyperparameters in a study of several methods,
negative and non-finite numbers as ``mlflow run`` passes them, and the check that runs before
``mlflow run`` talks to a tracking server."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import mlflow
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--envs", "cxp,nih", "--label", "any", "--preset", "cpu", "--image_size", "32", "--backbone", "smallcnn",
        "--synthetic_patients", "100", "--batch_size", "8", "--eval_every", "2", "--max_steps", "4"]


def entry(name: str):
    spec = importlib.util.spec_from_file_location(f"entry_{name}", ROOT / "entrypoints" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_entry(name, argv, capsys):
    with pytest.raises(SystemExit) as e:
        entry(name).main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("preset=auto")]
    return e.value.code, lines


def no_run_and_no_cache(cache: Path) -> bool:
    made = list(cache.rglob("*")) if cache.is_dir() else []
    return not made and mlflow.search_runs(search_all_experiments=True).empty


# ------------------------------------------------------------------------------ 13: the device


@pytest.mark.parametrize("device,message", [
    ("weird", "device='weird' is not a device; expected one of: auto, cpu, cuda"),
    ("gpu", "device='gpu' is not a device"),
    ("cuda:x", "device='cuda:x' is not a device"),
])
def test_a_device_that_is_no_device_is_one_line_exit_2(store, tmp_path, capsys, device, message):
    for name, argv in (("train", TINY), ("main", ["--envs", "cxp,nih", "--preset", "cpu"])):
        code, lines = run_entry(name, [*argv, "--device", device, "--cache_dir", str(tmp_path / "cache")], capsys)
        assert code == 2 and len(lines) == 1 and message in lines[0], (name, lines)
    assert no_run_and_no_cache(tmp_path / "cache")


def test_a_device_this_machine_lacks_is_one_line_exit_2_before_any_work(store, tmp_path, capsys):
    import torch

    missing = [] if torch.backends.mps.is_available() else ["mps"]
    if not torch.cuda.is_available():
        missing.append("cuda")
    missing.append(f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 0}")
    for device in missing:
        code, lines = run_entry("train", [*TINY, "--device", device, "--cache_dir", str(tmp_path / "cache")], capsys)
        assert code == 2 and len(lines) == 1 and f"device={device!r}" in lines[0], lines
        assert "not available" in lines[0] or "visible" in lines[0] or "no " in lines[0], lines
    assert no_run_and_no_cache(tmp_path / "cache")


def test_pick_device_accepts_what_exists():
    import torch

    from cxrstudy.train.device import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device(" CPU ") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert pick_device("cuda:0") == torch.device("cuda:0")


# ---------------------------------------------------------------- 15: a missing dataset folder


def test_preprocess_of_a_missing_data_root_creates_no_run(store, tmp_path, capsys):
    code, lines = run_entry("preprocess", ["--source", "real", "--data_root", str(tmp_path / "nonexistent"),
                                           "--envs", "nih,cxp", "--cache_dir", str(tmp_path / "cache")], capsys)
    assert code == 1 and len(lines) == 1, lines
    assert "folder for hospital 'nih' not found" in lines[0]
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_preprocess_of_a_missing_per_hospital_root_creates_no_run(store, tmp_path, capsys):
    from realdata_fixtures import make_data_root

    root = make_data_root(tmp_path)["data_root"]
    code, lines = run_entry("preprocess", ["--source", "real", "--data_root", str(root), "--envs", "nih,pad",
                                           "--roots", f"pad={tmp_path / 'no-pad'}"], capsys)
    assert code == 1 and len(lines) == 1 and "folder for hospital 'pad' not found" in lines[0], lines
    assert mlflow.search_runs(search_all_experiments=True).empty


# ------------------------------------------------- 16: each method's hyperparameters in a study


def _study_templates(monkeypatch, argv):
    """Run main's parameter handling for real; capture what it would hand to the study."""
    import cxrstudy.runs.study as study

    seen = {}

    def capture(template, envs, labels, seeds, balances, **kw):
        seen.update(kw, template=template)

    monkeypatch.setattr(study, "run_main", capture)
    entry("main").main(argv)
    return seen


def test_a_method_hyperparameter_applies_to_its_method_in_a_multi_method_study(store, monkeypatch, tiny_main_argv):
    seen = _study_templates(monkeypatch, tiny_main_argv("--methods", "erm,groupdro,jtt", "--groupdro_eta", "0.1",
                                                        "--jtt_steps", "20"))
    t = seen["methods"]
    assert list(t) == ["erm", "groupdro", "jtt"]
    assert t["erm"].hparams == {} and seen["template"].method == "erm"
    assert t["groupdro"].hparams == {"groupdro_eta": 0.1}
    assert t["jtt"].hparams["jtt_steps"] == 20 and t["jtt"].hparams["jtt_lambda"] == 20.0  # the default
    # the first method may be the one with the hyperparameter too
    seen = _study_templates(monkeypatch, tiny_main_argv("--methods", "groupdro,erm", "--groupdro_eta", "0.1"))
    assert seen["template"].hparams == {"groupdro_eta": 0.1} and seen["methods"]["erm"].hparams == {}


@pytest.mark.parametrize("extra,message", [
    (["--methods", "erm,groupdro", "--jtt_lambda", "5"], "jtt_lambda='5' belongs to method jtt, which is not in "
                                                        "methods=erm,groupdro"),
    (["--methods", "erm,groupdro", "--groupdro_eta", "50"], "groupdro_eta='50' is out of range"),
    (["--methods", "erm", "--groupdro_eta", "0.1"], "belongs to method groupdro, which is not in methods=erm"),
])
def test_a_hyperparameter_of_no_requested_method_is_still_refused(store, tmp_path, capsys, tiny_main_argv, extra,
                                                                  message):
    code, lines = run_entry("main", tiny_main_argv(*extra), capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert no_run_and_no_cache(tmp_path / "cache")


# ------------------------------------------------------ 17: negative and non-finite numbers


@pytest.mark.parametrize("value,message", [
    ("-1e-3", "parameter lr='-1e-3' is out of range; expected > 0.0 and <= 10.0"),
    ("-0.001", "parameter lr='-0.001' is out of range; expected > 0.0"),
    ("-inf", "parameter lr='-inf' is not a finite number"),
    ("nan", "parameter lr='nan' is not a finite number; expected > 0.0 and <= 10.0"),
    ("inf", "parameter lr='inf' is not a finite number"),
])
def test_lr_as_mlflow_run_passes_it_gets_our_one_line(store, tmp_path, capsys, value, message):
    # `mlflow run . -e train -P lr=-1e-3` runs `python entrypoints/train.py ... --lr -1e-3`: two tokens
    code, lines = run_entry("train", [*TINY, "--lr", value, "--cache_dir", str(tmp_path / "cache")], capsys)
    assert code == 2 and len(lines) == 1 and message in lines[0], lines
    assert no_run_and_no_cache(tmp_path / "cache")


def test_a_negative_lr_through_mlflow_run_gets_our_one_line(store, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "-e", "train",
           "-P", "preset=cpu", "-P", "lr=-1e-3", "-P", f"cache_dir={tmp_path / 'cache'}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "error: parameter lr='-1e-3' is out of range; expected > 0.0 and <= 10.0" in out.stderr, out.stderr[-3000:]
    assert "expected one argument" not in out.stderr


def test_a_value_that_starts_with_a_dash_reaches_its_parameter():
    from cxrstudy.runs import cli
    from cxrstudy.train.config import TRAIN_PARAMS

    raw = cli.parse(TRAIN_PARAMS, ["--lr", "-1e-3", "--weight_decay", "-5", "--shortcut_strength", "-.5",
                                   "--label", "any"])
    assert (raw["lr"], raw["weight_decay"], raw["shortcut_strength"], raw["label"]) == ("-1e-3", "-5", "-.5", "any")
    assert cli.parse(TRAIN_PARAMS, ["--lr=-2e-3"])["lr"] == "-2e-3"
    with pytest.raises(SystemExit):  # an undeclared option is still refused
        cli.parse(TRAIN_PARAMS, ["--learning_rate", "-1"])


@pytest.mark.parametrize("name,value", [("augment_strength", "nan"), ("weight_decay", "inf"),
                                        ("shortcut_strength", "nan"), ("weight_decay", "-1e-3")])
def test_other_numbers_refuse_nan_inf_and_negatives_in_one_line(store, tmp_path, capsys, name, value):
    code, lines = run_entry("train", [*TINY, f"--{name}", value, "--cache_dir", str(tmp_path / "cache")], capsys)
    assert code == 2 and len(lines) == 1 and f"parameter {name}={value!r}" in lines[0], lines
    assert "None" not in lines[0] and ("not a finite number" in lines[0] or "out of range" in lines[0]), lines


# ------------------------------------------------------------------------ 14: disk and memory


def test_preprocess_refuses_a_cache_larger_than_the_disk_naming_both_figures(store, tmp_path, capsys):
    cache = tmp_path / "cache"
    code, lines = run_entry("preprocess", ["--synthetic_patients", "10000000", "--image_size", "1024",
                                           "--cache_dir", str(cache)], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "TiB of disk under cache_dir=" + str(cache) in lines[0] and " free" in lines[0], lines
    assert "images of 1024x1024 px" in lines[0]
    assert no_run_and_no_cache(cache)


def test_main_counts_every_shortcut_strength_against_the_disk(store, tmp_path, capsys):
    # 1024 px images of 1M patients on cxp+nih: ~4 TiB per strength
    argv = ["--envs", "cxp,nih", "--preset", "cpu", "--image_size", "1024", "--synthetic_patients", "1000000",
            "--cache_dir", str(tmp_path / "cache")]

    def images(lines):
        return int(lines[0].split("(")[1].split(" images")[0].replace(",", ""))

    code, three = run_entry("main", [*argv, "--shortcut_strengths", "0,0.5,1"], capsys)
    assert code == 2 and len(three) == 1 and "TiB of disk under cache_dir=" in three[0], three
    code, one = run_entry("main", argv, capsys)
    assert code == 2 and len(one) == 1 and "TiB of disk under cache_dir=" in one[0], one
    assert images(three) == 3 * images(one) > 3_000_000
    assert no_run_and_no_cache(tmp_path / "cache")


def test_train_refuses_a_batch_larger_than_memory_naming_both_figures(store, tmp_path, capsys):
    code, lines = run_entry("train", [*TINY[:-6], "--image_size", "1024", "--batch_size", "65536", "--max_steps", "4",
                                      "--cache_dir", str(tmp_path / "cache")], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert "batch_size=65536 at image_size=1024 needs ~2.1 TiB of memory" in lines[0] and "available" in lines[0]
    assert no_run_and_no_cache(tmp_path / "cache")


def test_check_batch_fits_compares_the_input_tensors_with_the_memory_there():
    import torch

    from cxrstudy.errors import UsageError
    from cxrstudy.train.device import BATCH_BYTES_PER_PIXEL, check_batch_fits

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    need = 128 * 224 * 224 * BATCH_BYTES_PER_PIXEL  # the paper's batch: ~208 MiB (218,365,952 bytes)
    check_batch_fits(128, 224, cpu, ram=need)
    with pytest.raises(UsageError, match=r"batch_size=128 at image_size=224 needs ~208\.2 MiB of memory.*"
                                         r"208\.2 MiB available"):
        check_batch_fits(128, 224, cpu, ram=need - 1)
    check_batch_fits(128, 224, cuda, ram=128 * 224 * 224 * 2, gpu=need)  # on CUDA the host holds the uint8 batch
    with pytest.raises(UsageError, match="of GPU memory .* free on cuda"):
        check_batch_fits(128, 224, cuda, ram=need, gpu=need - 1)
    with pytest.raises(UsageError, match="of memory for one batch"):
        check_batch_fits(128, 224, cuda, ram=128 * 224 * 224 * 2 - 1, gpu=need)
    from cxrstudy.train.device import available_memory

    assert available_memory() is None or available_memory() > 0


def test_cache_need_counts_what_is_still_to_build(store, tmp_path, monkeypatch):
    import cxrstudy.data.dataspec as dataspec
    from cxrstudy.data.dataspec import DataSpec, check_cache_fits
    from cxrstudy.data.synthetic import SyntheticConfig
    from cxrstudy.errors import UsageError

    spec = DataSpec(image_size=16, cache_dir=str(tmp_path / "cache"), synthetic=SyntheticConfig(n_patients=2000))
    images, need = spec.cache_need(["cxp", "nih"])
    assert need == images * 16 * 16 and spec.cache_need(["cxp", "nih"], exact=True) == (images, need)
    drawn = len(spec.table("cxp")) + len(spec.table("nih"))
    assert abs(images - drawn) < 0.05 * drawn  # the estimate from the patient count
    monkeypatch.setattr(dataspec, "free_disk", lambda path: need - 1)
    monkeypatch.setattr("cxrstudy.data.cache.free_disk", lambda path: need - 1)
    with pytest.raises(UsageError, match=r"needs ~.* of disk under cache_dir=.*cache"):
        check_cache_fits([spec], ["cxp", "nih"])
    for split in ("train", "val", "test"):
        spec.entry("cxp", split, progress=False)
    assert spec.cache_need(["cxp"], exact=True) == (0, 0)  # built: a rerun on a full disk is not refused
    assert spec.cache_need(["cxp"])[0] == len(spec.table("cxp"))
    check_cache_fits([spec], ["cxp"])
    nih = len(spec.table("nih"))
    assert spec.cache_need(["cxp", "nih"], exact=True) == (nih, nih * 256)


# ------------------------------------------- 18: the tracking server, before `mlflow run` starts


@contextmanager
def health_server():
    """An HTTP server on 127.0.0.1 that answers ``/health`` with 200 (what the check asks)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200 if self.path == "/health" else 404)
            self.end_headers()
            self.wfile.write(b"OK")

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def closed_port_uri() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the socket is closed


def check_env(uri: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        env.pop(var, None)
    return env


def test_the_check_runs_the_command_only_when_the_server_answers(tmp_path):
    marker = tmp_path / "ran"
    command = [sys.executable, "-m", "cxrstudy.tracking.server", sys.executable, "-c",
               f"open({str(marker)!r}, 'w').write('x'); raise SystemExit(3)"]
    uri = closed_port_uri()
    t0 = time.monotonic()
    p = subprocess.run(command, env=check_env(uri), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 1 and not marker.exists(), p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: MLflow tracking server {uri} is unreachable"), lines
    assert took < 10, took
    with health_server() as uri:
        p = subprocess.run(command, env=check_env(uri), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and marker.read_text() == "x", p.stderr  # the command ran, its exit code is ours
    p = subprocess.run([sys.executable, "-m", "cxrstudy.tracking.server", "no-such-command-cxrstudy"],
                       env=check_env("sqlite:///x.db"), cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert p.returncode == 127 and "cannot run 'no-such-command-cxrstudy'" in p.stderr


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_targets_that_start_mlflow_run_stop_in_seconds_on_a_server_that_is_down(tmp_path):
    makefile = (ROOT / "Makefile").read_text()
    targets = re.findall(r"^(\w+):.*\n((?:\t.*\n)+)", makefile, flags=re.M)
    starting = [name for name, recipe in targets if "mlflow run" in recipe]
    assert {"demo", "bench"} <= set(starting)
    uri = closed_port_uri()
    for name in starting:
        t0 = time.monotonic()
        # -o: take the virtual environment as set up; PY: this interpreter
        p = subprocess.run(["make", "-o", ".venv/.installed", name, f"PY={sys.executable}"], env=check_env(uri),
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        assert p.returncode != 0 and "Traceback" not in p.stderr, (name, p.stderr[-2000:])
        assert f"error: MLflow tracking server {uri} is unreachable" in p.stderr, (name, p.stderr[-2000:])
        assert took < 15, (name, took)
