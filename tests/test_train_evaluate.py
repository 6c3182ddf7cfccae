"""Training and evaluation end to end on tiny synthetic hospitals (CPU, seconds)."""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

import cxrstudy.train.loop as trainer_mod
from cxrstudy.train.config import TrainConfig, config_from_params
from cxrstudy.data.dataspec import DataSpec
from cxrstudy.errors import DataError, UsageError
from cxrstudy.evaluate.predict import evaluate
from cxrstudy.tracking.registry import load_trained
from cxrstudy.data.synthetic import SyntheticConfig
from cxrstudy.runs.train import run_training

ROOT = Path(__file__).resolve().parents[1]


def tiny_config(tmp_path, **kw) -> TrainConfig:
    spec = DataSpec(source="synthetic", image_size=32, cache_dir=str(tmp_path / "cache"),
                    synthetic=SyntheticConfig(n_patients=200, seed=0))
    base = dict(envs=("cxp", "nih"), label="Any", data=spec, seed=0, backbone="smallcnn", pretrained="none",
                lr=1e-3, batch_size=16, max_steps=6, eval_every=3, patience=5)
    base.update(kw)
    return TrainConfig(**base)


def history(run_id):
    client = MlflowClient()
    return [(m.step, round(m.value, 6)) for m in client.get_metric_history(run_id, "val/macro_f1")]


def test_train_logs_registers_and_round_trips(store, tmp_path):
    cfg = tiny_config(tmp_path)
    res = run_training(cfg, progress=False)
    run = MlflowClient().get_run(res["run_id"])
    assert run.info.status == "FINISHED"
    tags, params, metrics = run.data.tags, run.data.params, run.data.metrics
    assert tags["registered_model"] == f"cxrstudy-synthetic-cxp-nih-any-none-d{cfg.data_fingerprint()[:8]}" \
        == cfg.model_name()
    assert tags["registered_version"] == "1"
    assert tags["cxrstudy.synthetic"] == "true"
    assert params["cfg.config_hash"] == cfg.content_hash()
    for key in ("data.cxp.train.n_before", "data.nih.val.prev", "data.cxp.train.prev"):
        assert key in params
    assert 0.05 <= metrics["threshold"] <= 0.89
    assert [s for s, _ in history(res["run_id"])] == [3, 6]
    inputs = {d.dataset.name for d in run.inputs.dataset_inputs}
    assert {"cxp-train-32px", "nih-val-32px"} <= inputs
    # registry round trip: models:/name@latest gives the same predictions as the run's model
    trained = load_trained(f"models:/{cfg.model_name()}@latest")
    assert trained.threshold == metrics["threshold"] and trained.label == "Any"
    assert isinstance(trained.model, torch.nn.Module) and not trained.model.training
    by_run = load_trained(res["run_id"])
    x = torch.rand(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(trained.model(x), by_run.model(x))
    # a second identical request trains nothing
    again = run_training(cfg, progress=False)
    assert again["reused"] and again["run_id"] == res["run_id"]
    # forced: a new version, and @latest follows it
    forced = run_training(cfg, force=True, progress=False)
    assert forced["registered_version"] == 2
    assert load_trained(f"models:/{cfg.model_name()}@latest").run_id == forced["run_id"]


def test_same_seed_same_metrics_other_seed_other_metrics(store, tmp_path):
    a = run_training(tiny_config(tmp_path), progress=False)
    b = run_training(tiny_config(tmp_path), force=True, progress=False)
    c = run_training(tiny_config(tmp_path, seed=1), progress=False)
    assert history(a["run_id"]) == history(b["run_id"])
    ha = [m.value for m in MlflowClient().get_metric_history(a["run_id"], "val/loss")]
    hc = [m.value for m in MlflowClient().get_metric_history(c["run_id"], "val/loss")]
    assert ha != hc


def test_interrupted_training_resumes_from_its_checkpoint(store, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path, max_steps=9, seed=3)
    real_validate = trainer_mod.validate
    calls = {"n": 0}

    def killed_during_second_eval(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_validate(*a, **k)

    monkeypatch.setattr(trainer_mod, "validate", killed_during_second_eval)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, progress=False)
    client = MlflowClient()
    all_exps = [e.experiment_id for e in client.search_experiments()]
    killed = client.search_runs(all_exps, "attributes.status = 'KILLED'")
    assert len(killed) == 1 and not client.search_runs(all_exps, "attributes.status = 'FINISHED'")
    monkeypatch.setattr(trainer_mod, "validate", real_validate)

    resumed = run_training(cfg, progress=False)
    run = client.get_run(resumed["run_id"])
    assert run.data.tags.get("cxrstudy.resumed") == "true"
    assert run.info.status == "FINISHED" and not resumed["reused"]
    # the resumed run carries the whole history and ends exactly where an uninterrupted run ends
    reference = run_training(cfg, force=True, progress=False)
    assert history(resumed["run_id"]) == history(reference["run_id"])
    assert [s for s, _ in history(resumed["run_id"])] == [3, 6, 9]


def test_evaluate_metrics_and_predictions(store, tmp_path):
    cfg = tiny_config(tmp_path)
    res = run_training(cfg, progress=False)
    trained = load_trained(res["model_uri"])
    ev = evaluate(trained.model, trained.spec, ["cxp", "nih", "pad"], "Any", trained.threshold, n_bootstrap=200)
    m = ev.metrics
    for e in ("cxp", "nih", "pad"):
        for k in ("tpr", "tnr", "auroc", "acc", "n_pos", "n_neg"):
            assert f"{e}/{k}" in m
    assert m["wga"] == min(m[f"{e}/{k}"] for e in ("cxp", "nih", "pad") for k in ("tpr", "tnr"))
    assert m["wga_ci_low"] <= m["wga"] <= m["wga_ci_high"]
    p = ev.predictions
    assert list(p.columns) == ["env", "subject_id", "y_true", "y_score", "y_pred"]
    assert ((p.y_score >= trained.threshold).astype(int) == p.y_pred).all()
    n_test = sum(len(cfg.data.rows(e, "test")) for e in ("cxp", "nih", "pad"))
    assert len(p) == n_test


def test_evaluate_entry_point_logs_the_named_metrics(store, tmp_path):
    sys.path.insert(0, str(ROOT / "entrypoints"))
    import evaluate as evaluate_entry

    res = run_training(tiny_config(tmp_path), progress=False)
    evaluate_entry.main(["--model_uri", f"models:/{tiny_config(tmp_path).model_name()}@latest", "--envs", "cxp,nih",
                         "--n_bootstrap", "100"])
    runs = mlflow.search_runs(filter_string="tags.`cxrstudy.entry` = 'evaluate'")
    assert len(runs) == 1
    row = runs.iloc[0]
    for key in ("test/cxp/tpr", "test/nih/tnr", "test/wga", "test/macro_f1", "test/balanced_acc", "test/auroc",
                "test/ece", "test/wga_ci_low", "test/wga_ci_high", "test/cxp/n_pos"):
        assert f"metrics.{key}" in row.index and np.isfinite(row[f"metrics.{key}"]), key
    assert row["tags.test/wga_group"].split("/")[0] in ("cxp", "nih")
    local = mlflow.artifacts.download_artifacts(run_id=row.run_id, artifact_path="predictions.csv")
    preds = pd.read_csv(local)
    assert list(preds.columns) == ["env", "subject_id", "y_true", "y_score", "y_pred"]
    assert res["run_id"] == row["tags.train_run_id"]


def test_bad_inputs_get_one_clear_message(store, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "entrypoints"))
    import evaluate as evaluate_entry
    import train as train_entry

    with pytest.raises(SystemExit) as e:
        train_entry.main(["--label", "Fracture"])
    assert e.value.code == 2
    assert "unknown label 'Fracture'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        train_entry.main(["--envs", "cxp,stanford"])
    assert e.value.code == 2 and "unknown hospital 'stanford'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        evaluate_entry.main(["--model_uri", "models:/no-such-model@latest"])
    assert e.value.code == 1 and "no-such-model" in capsys.readouterr().err
    with pytest.raises(UsageError, match="needs at least two"):
        config_from_params({**{k: v for k, v in __import__("cxrstudy.train.config").train.config.TRAIN_PARAMS.items()},
                            "envs": "cxp", "balance": "hospital_label"})


def test_unreachable_tracking_server_is_one_clear_error(monkeypatch, tmp_path, capsys):
    sys.path.insert(0, str(ROOT / "entrypoints"))
    import train as train_entry

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("CXRSTUDY_CACHE", str(tmp_path))
    with pytest.raises(SystemExit) as e:
        train_entry.main(["--max_steps", "2"])
    assert e.value.code == 1
    assert "http://127.0.0.1:9 is unreachable" in capsys.readouterr().err


def test_hospital_without_positives_is_a_clear_error(store, tmp_path):
    cfg = tiny_config(tmp_path, envs=("nih", "pad"), label="Pneumothorax",
                      data=dataclasses.replace(tiny_config(tmp_path).data, synthetic=SyntheticConfig(n_patients=40)))
    with pytest.raises(DataError, match="no positives for label 'Pneumothorax'"):
        run_training(cfg, progress=False)
    runs = mlflow.search_runs(search_all_experiments=True)
    assert (runs["status"] != "FINISHED").all()


def test_train_through_mlflow_run(store, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "mlflow", "run", str(ROOT), "--env-manager", "local", "-e", "train",
           "-P", "envs=nih,CXP", "-P", "label=any", "-P", "preset=cpu", "-P", "image_size=32", "-P", "max_steps=4",
           "-P", "eval_every=2", "-P", "batch_size=16", "-P", "synthetic_patients=200"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`cxrstudy.entry` = 'train'")
    assert len(runs) == 1 and runs.iloc[0]["status"] == "FINISHED"
    assert runs.iloc[0]["params.envs"] == "nih,CXP"  # mlflow run's raw value ...
    assert runs.iloc[0]["params.cfg.envs"] == '["cxp", "nih"]'  # ... and the resolved one
    # the same synthetic hospitals as tiny_config's (200 patients, seed 0, strength 1): the same data
    fp = tiny_config(tmp_path).data_fingerprint()
    assert runs.iloc[0]["tags.registered_model"] == f"cxrstudy-synthetic-cxp-nih-any-none-d{fp[:8]}"
