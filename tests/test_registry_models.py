"""A registered model a user can use: version tags, description and meaningful aliases; a
state-dict pyfunc model that predicts on raw images and serves over HTTP; a crafted pickle is
refused without running; a killed run resumes from the checkpoint on the tracking server."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from PIL import Image

import cxrstudy.runs.train as train_run_mod
from cxrstudy.data.dataspec import PATH_NOT_LOGGED, DataSpec
from cxrstudy.errors import DataError
from cxrstudy.runs.train import checkpoint_dir, run_training
from cxrstudy.tracking import keys, registry
from cxrstudy.tracking.pyfunc_model import MAX_PIXELS, read_image_files
from cxrstudy.tracking.registry import load_model, load_trained
from cxrstudy.tracking.server import free_port
from cxrstudy.train.config import TrainConfig
from cxrstudy.train.models import BinaryClassifier
from test_pyfunc_inputs import png_claiming as _png_claiming
from test_train_evaluate import history, tiny_config

ROOT = Path(__file__).resolve().parents[1]


def test_versions_carry_tags_description_and_aliases_that_stay_true(store, tmp_path, capsys):
    cfg0, cfg1 = tiny_config(tmp_path), tiny_config(tmp_path, seed=1)
    name = cfg0.model_name()
    v1 = run_training(cfg0, progress=False)
    v2 = run_training(cfg1, progress=False)
    capsys.readouterr()
    v3 = run_training(cfg0, force=True, progress=False)  # seed 0 again, after seed 1
    assert [v["registered_version"] for v in (v1, v2, v3)] == [1, 2, 3]
    client = MlflowClient()
    mv = client.get_model_version(name, "3")
    t = mv.tags
    assert t["label"] == "Any" and t["hospitals"] == "cxp,nih" and t["balance"] == "none" and t["seed"] == "0"
    assert t[keys.METHOD_TAG] == "erm" and t["cxrstudy.synthetic"] == "true"
    assert t["cxrstudy.config_hash"] == cfg0.content_hash()
    assert t["cxrstudy.data_fingerprint"] == cfg0.data_fingerprint()
    run = client.get_run(v3["run_id"])
    assert float(t["threshold"]) == pytest.approx(run.data.metrics["threshold"], abs=1e-4)
    best_step = int(run.data.metrics["best_step"])
    at_best = {s: v for s, v in history(v3["run_id"])}[best_step]
    assert float(t["val/macro_f1"]) == pytest.approx(at_best, abs=1e-5)
    for k in ("val/wga", "val/auroc", "val/loss"):
        assert np.isfinite(float(t[k])), k
    assert "Any" in mv.description and "cxp+nih" in mv.description and "SYNTHETIC" in mv.description
    assert "\n" not in mv.description.strip()
    # seed<k> is the newest version of seed k; @latest is MLflow's newest; best has the top val WGA
    assert int(client.get_model_version_by_alias(name, "seed0").version) == 3
    assert int(client.get_model_version_by_alias(name, "seed1").version) == 2
    assert mlflow.pyfunc.load_model(f"models:/{name}@latest").metadata.run_id == v3["run_id"]
    wga = {v: float(client.get_model_version(name, str(v)).tags["val/wga"]) for v in (1, 2, 3)}
    top = max(wga.values())
    assert int(client.get_model_version_by_alias(name, "best").version) == min(v for v in wga if wga[v] == top)
    # the printed line is true: v3's aliases, and @latest is v3
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("model: "))
    assert line == v3["model_line"]
    aliases = sorted(client.get_model_version(name, "3").aliases)
    assert line.startswith(f"model: models:/{name}/3 (aliases: ") and line.endswith(f"models:/{name}@latest is v3)")
    assert sorted(line.split("(aliases: ")[1].split(";")[0].split(", ")) == aliases
    # v1 lost seed0 to v3; its line says so and points @latest at v3, not at itself
    assert "seed0" not in client.get_model_version(name, "1").aliases
    assert registry.describe_version(name, 1).endswith(f"models:/{name}@latest is v3)")
    # best is recomputed from the tags at each registration: a better version takes it
    client.set_model_version_tag(name, "2", "val/wga", "1.5")
    assert registry.update_best_alias(name) == 2
    assert int(client.get_model_version_by_alias(name, "best").version) == 2


def _images(n=4, h=50, w=70, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w), dtype=np.uint8)


def test_pyfunc_predicts_on_raw_images_and_image_bytes_and_matches_the_torch_model(store, tmp_path):
    cfg = tiny_config(tmp_path)
    res = run_training(cfg, progress=False)
    uri = f"models:/{cfg.model_name()}@latest"
    pyf = mlflow.pyfunc.load_model(uri)
    x = _images()
    out = pyf.predict(x)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == ["probability", "prediction"] and len(out) == 4
    trained = load_trained(uri)
    assert isinstance(trained.model, torch.nn.Module) and hasattr(trained.model, "embed")
    resized = np.stack([np.asarray(Image.fromarray(a).resize((32, 32), Image.BILINEAR, reducing_gap=None)) for a in x])
    with torch.no_grad():
        ref = torch.softmax(trained.model(torch.from_numpy(resized).unsqueeze(1).float() / 255), 1)[:, 1].numpy()
    np.testing.assert_allclose(out["probability"].to_numpy(), ref, rtol=1e-5, atol=1e-6)
    assert (out["prediction"] == (out["probability"] >= trained.threshold).astype(int)).all()
    # image files, read by the caller, give the same answers (PNG is lossless; same resize); the
    # model itself opens no file, even in process
    paths = []
    for i, a in enumerate(x):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(a).save(p)
        paths.append(str(p))
    by_file = pyf.predict(read_image_files(paths))
    np.testing.assert_allclose(by_file["probability"].to_numpy(), out["probability"].to_numpy(), rtol=1e-6)
    with pytest.raises(MlflowException, match="input 0 is not a base64-encoded PNG or JPEG image"):
        pyf.predict(paths)
    # another size, and a single image as one-element batch
    assert len(pyf.predict(_images(n=1, h=20, w=20))) == 1
    # signature and input example say what goes in and out; no pickle among the artifacts
    meta = pyf.metadata
    assert [c["name"] for c in json.loads(meta.to_dict()["signature"]["outputs"])] == ["probability", "prediction"]
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "dl")))
    example = json.loads((local / "input_example.json").read_text())
    assert np.asarray(example).shape == (2, 32, 32)
    files = {p.name for p in local.rglob("*") if p.is_file()}
    assert {"weights.pt", "config.json", "model_code.py"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pth"))], files
    config = json.loads((local / "artifacts" / "config.json").read_text())
    assert config["backbone"] == "smallcnn" and config["image_size"] == 32 and config["label"] == "Any"
    assert config["threshold"] == pytest.approx(trained.threshold)
    # the stored model code only imports the package's class
    assert "from cxrstudy.tracking.pyfunc_model import ClassifierModel" in (local / "model_code.py").read_text()
    assert res["registered_version"] == 1


def test_a_real_data_model_logs_no_path_of_this_machine_and_loads_where_the_data_is(store, tmp_path):
    """No absolute path in what a model's run and the model itself log: the data spec names no
    data root (the fingerprint tag says what the data was), the MLmodel no temporary directory.
    Loading it elsewhere takes data_root (and roots) from the caller, with one line if missing."""
    root, pad = tmp_path / "where" / "the" / "data" / "is", tmp_path / "pad-elsewhere"
    spec = DataSpec(source="real", data_root=str(root), roots=(("pad", str(pad)),), image_size=32,
                    cache_dir=str(tmp_path / "cache"))
    cfg = TrainConfig(envs=("cxp", "pad"), label="Any", data=spec, backbone="smallcnn", pretrained="none")
    logged = cfg.to_log_dict()
    assert str(tmp_path) not in json.dumps(logged) and logged["data"]["data_root"] == PATH_NOT_LOGGED
    assert logged["data"]["roots"] == {"pad": PATH_NOT_LOGGED}
    assert cfg.to_dict()["data"]["data_root"] == str(root)  # the identity (hashed) is unchanged
    # a model logged as train logs it (same params, same registration code), without training
    name = "cxrstudy-real-cxp-pad-any-none"
    mlflow.set_experiment("real-model")  # its artifacts under this test's folder
    with mlflow.start_run() as run:
        mlflow.log_params({"cfg.data_spec": json.dumps(spec.to_log_dict()), "cfg.label": "Any",
                           "cfg.envs": json.dumps(["cxp", "pad"])})
        mlflow.log_metric("threshold", 0.5)
        torch.manual_seed(0)
        registry.log_and_register(BinaryClassifier("smallcnn").eval(), name, image_size=32, threshold=0.5,
                                  label="Any", tags=registry.version_tags(
                                      label="Any", hospitals=cfg.envs, method="erm", balance="none", seed=0,
                                      threshold=0.5, config_hash="0" * 16, data_fingerprint="0" * 16, synthetic=False,
                                      image_size=32, val_metrics={}, best_step=0))
    params = MlflowClient().get_run(run.info.run_id).data.params
    assert not [k for k, v in params.items() if str(tmp_path) in v or "/where/" in v], params
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/1", dst_path=str(tmp_path / "dl")))
    meta = yaml.safe_load((local / "MLmodel").read_text())
    meta.pop("artifact_path")  # the store's own address of the model (MLflow's, not this machine's files)
    mlmodel = yaml.safe_dump(meta)
    for where in ("cxrstudy-model-", tempfile.gettempdir() + "/", str(tmp_path), str(ROOT)):  # temp dir, package
        assert where not in mlmodel, (where, mlmodel)
    assert meta["flavors"]["python_function"]["model_code_path"] == "model_code.py"
    arts = meta["flavors"]["python_function"]["artifacts"]
    assert {k: v["uri"] for k, v in arts.items()} == {"weights": "artifacts/weights.pt", "config": "artifacts/config.json"}
    assert len(mlflow.pyfunc.load_model(f"models:/{name}/1").predict(_images(n=2))) == 2  # still loads and predicts
    uri = f"models:/{name}/1"
    with pytest.raises(DataError) as e:
        load_trained(uri)
    assert "\n" not in str(e.value) and "data_root and roots pad=<path>" in str(e.value) and uri in str(e.value)
    with pytest.raises(DataError, match="give roots pad=<path>"):
        load_trained(uri, data_root=str(root))
    trained = load_trained(uri, data_root=str(root), roots=(("pad", str(pad)),), cache_dir=str(tmp_path / "c2"))
    assert trained.spec == DataSpec(source="real", data_root=str(root), roots=(("pad", str(pad)),), image_size=32,
                                    cache_dir=str(tmp_path / "c2"))
    assert trained.envs == ["cxp", "pad"] and trained.threshold == 0.5


class _Evil:
    """Unpickling this writes a marker file (what a crafted model version could do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def _register_dir(src: Path, name: str) -> str:
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(src), artifact_path="model")
    client = MlflowClient()
    client.create_registered_model(name)
    client.create_model_version(name, f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return f"models:/{name}/1"


def test_a_crafted_pickle_is_refused_without_running(store, tmp_path):
    cfg = tiny_config(tmp_path)
    run_training(cfg, progress=False)
    marker = tmp_path / "marker"
    genuine = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{cfg.model_name()}@latest",
                                                       dst_path=str(tmp_path / "genuine")))
    # 1. the cxrstudy format, with weights.pt replaced by a pickle that runs code
    crafted = tmp_path / "crafted"
    shutil.copytree(genuine, crafted)
    torch.save(_Evil(marker), crafted / "artifacts" / "weights.pt")
    uri = _register_dir(crafted, "crafted-weights")
    with pytest.raises(DataError) as e:
        load_model(uri)
    msg = str(e.value)
    assert "\n" not in msg and uri in msg and "refusing" in msg
    assert not marker.exists()
    with pytest.raises(Exception):  # the pyfunc loader reads the weights the same way
        mlflow.pyfunc.load_model(uri)
    assert not marker.exists()
    # 2. the old mlflow.pytorch pickle flavour: not even downloaded into torch.load
    old = tmp_path / "old"
    (old / "data").mkdir(parents=True)
    (old / "data" / "model.pth").write_bytes(pickle.dumps(_Evil(marker)))
    (old / "MLmodel").write_text(yaml.safe_dump({"flavors": {
        "pytorch": {"model_data": "data", "pytorch_version": str(torch.__version__), "serialization_format": "pickle"},
        "python_function": {"loader_module": "mlflow.pytorch", "data": "data", "pickle_module_name": "pickle"}}}))
    uri = _register_dir(old, "old-pickle")
    with pytest.raises(DataError) as e:
        load_trained(uri)
    msg = str(e.value)
    assert "\n" not in msg and uri in msg and "not a cxrstudy state-dict model" in msg and "pytorch" in msg
    assert not marker.exists()


def _post(url: str, payload) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/invocations", data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _png_b64(a: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_served_model_answers_what_http_clients_send_and_opens_no_file(store, tmp_path):
    """One server, several requests: pixel arrays and base64 PNGs give the in-process
    probabilities; a request naming a server file (one that exists and is an image, /etc/passwd,
    a folder, nothing) gets the same one-line 400 answer each time, and nothing is scored."""
    cfg = tiny_config(tmp_path)
    run_training(cfg, progress=False)
    uri = f"models:/{cfg.model_name()}@latest"
    x = _images(n=3, h=40, w=40, seed=1)
    expected = mlflow.pyfunc.load_model(uri).predict(x)
    on_disk = tmp_path / "patient.png"  # an image the server could read, if it read files
    Image.fromarray(x[0]).save(on_disk)
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": store,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("MLFLOW_RUN_ID", None)
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 50
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server did not answer /ping: " + (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.3)
        answers = {
            "pixels": _post(url, {"inputs": x.tolist()}),
            "png": _post(url, {"inputs": [_png_b64(a) for a in x]}),
            "rgb": _post(url, {"inputs": np.stack([x[0]] * 3, axis=-1).tolist()}),  # one (H, W, 3) image
            "bomb": _post(url, {"inputs": [base64.b64encode(_png_claiming(100_000, 100_000)).decode()]}),
            **{f"file:{p}": _post(url, {"inputs": [p]}) for p in
               (str(on_disk), "/etc/passwd", str(tmp_path), str(tmp_path / "no-such.png"))},
        }
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
    for kind in ("pixels", "png"):
        status, body = answers[kind]
        assert status == 200, (kind, body)
        got = pd.DataFrame(body["predictions"])
        np.testing.assert_allclose(got["probability"].to_numpy(), expected["probability"].to_numpy(), rtol=1e-6)
        assert got["prediction"].tolist() == expected["prediction"].tolist()
    status, body = answers["rgb"]  # one colour image: one answer, that of its gray version
    assert status == 200 and len(body["predictions"]) == 1
    assert body["predictions"][0]["probability"] == pytest.approx(expected["probability"][0], rel=1e-6)
    status, body = answers["bomb"]
    assert status == 400 and f"{MAX_PIXELS:,} pixels" in body["message"] and "Traceback" not in json.dumps(body)
    files = {k: v for k, v in answers.items() if k.startswith("file:")}
    assert {status for status, _ in files.values()} == {400}, files
    errors = {body["message"].split("Error: ", 1)[-1] for _, body in files.values()}
    assert len(errors) == 1, errors  # nothing tells an existing file from a secret, a folder or nothing
    error = errors.pop()
    assert error.startswith("input 0 is not a base64-encoded PNG or JPEG image") and "\n" not in error
    assert not any("predictions" in body for _, body in files.values())


def test_a_killed_run_resumes_on_another_machine_from_the_server_checkpoint(store, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, max_steps=12, seed=3, patience=10)
    real = train_run_mod.validation_metrics
    calls = {"n": 0}

    def crash_at_third_validation(m):
        calls["n"] += 1
        if calls["n"] == 3:  # after two validations (and their checkpoint uploads)
            raise RuntimeError("machine lost")
        return real(m)

    monkeypatch.setattr(train_run_mod, "validation_metrics", crash_at_third_validation)
    with pytest.raises(RuntimeError, match="machine lost"):
        run_training(cfg, progress=False)
    monkeypatch.setattr(train_run_mod, "validation_metrics", real)
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    (dead,) = client.search_runs(exps, "attributes.status != 'FINISHED'")
    assert [a.path for a in client.list_artifacts(dead.info.run_id, "checkpoints")] == ["checkpoints/last.pt"]
    shutil.rmtree(checkpoint_dir(cfg))  # "another machine": nothing local
    resumed = run_training(cfg, progress=False)
    run = client.get_run(resumed["run_id"])
    assert run.data.tags.get("cxrstudy.resumed") == "true" and not resumed["reused"]
    reference = run_training(cfg, force=True, progress=False)
    ref = client.get_run(reference["run_id"])
    assert history(resumed["run_id"]) == history(reference["run_id"])
    assert [s for s, _ in history(resumed["run_id"])] == [3, 6, 9, 12]
    for k in ("threshold", "best_step", "val/best_macro_f1"):
        assert run.data.metrics[k] == ref.data.metrics[k], k
    summary = [json.loads(Path(mlflow.artifacts.download_artifacts(run_id=r, artifact_path="train_summary.json",
                                                                   dst_path=str(tmp_path / r))).read_text())
               for r in (resumed["run_id"], reference["run_id"])]
    assert summary[0]["history"] == summary[1]["history"] and summary[0]["threshold"] == summary[1]["threshold"]
