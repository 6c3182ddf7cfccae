"""Training methods inside the training loop and the study: exact resume, DFR's head, JTT's
weights, registry names, the method grid in main and its analysis."""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from cxrstudy.tracking import keys
from cxrstudy.train.config import config_from_params, with_method
from cxrstudy.train.loop import build_method, prepare_data, train_context, train_groups, train_model
from test_train_evaluate import tiny_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "entrypoints"))
CPU = torch.device("cpu")


def _cfg(tmp_path, method, **hp):
    cfg = tiny_config(tmp_path, max_steps=8, eval_every=2, patience=10)
    return with_method(cfg, method, {k: str(v) for k, v in hp.items()})


class Crash(Exception):
    """What :func:`crash_at_step` raises to cut a training short."""


def crash_at_step(cfg, data, checkpoint_dir, step: int) -> None:
    """Train ``cfg`` into ``checkpoint_dir`` and crash at the validation of ``step`` (a killed run)."""

    def crash(at, m):
        if at == step:
            raise Crash

    with pytest.raises(Crash):
        train_model(cfg, data, device=CPU, checkpoint_dir=checkpoint_dir, on_eval=crash, progress=False)


def test_groupdro_resumes_exactly_with_its_state(tmp_path):
    cfg = _cfg(tmp_path, "groupdro", groupdro_eta=0.5)
    data = prepare_data(cfg, progress=False)
    full = train_model(cfg, data, device=CPU, checkpoint_dir=tmp_path / "full", progress=False)

    crash_at_step(cfg, data, tmp_path / "cut", 4)
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert set(saved["method"]) == {"q"} and not torch.allclose(saved["method"]["q"], torch.full((4,), 0.25))
    resumed = train_model(cfg, data, device=CPU, checkpoint_dir=tmp_path / "cut", progress=False)
    assert resumed.history == full.history
    assert torch.equal(resumed.method_state["q"], full.method_state["q"])
    for k in full.best_state:
        assert torch.equal(resumed.best_state[k], full.best_state[k]), k


def test_dfr_changes_only_the_head_of_the_erm_model(tmp_path):
    erm_cfg = _cfg(tmp_path, "erm")
    dfr_cfg = _cfg(tmp_path, "dfr")
    data = prepare_data(erm_cfg, progress=False)
    erm = train_model(erm_cfg, data, device=CPU, checkpoint_dir=tmp_path / "erm", progress=False)
    dfr = train_model(dfr_cfg, data, device=CPU, checkpoint_dir=tmp_path / "dfr", progress=False)
    trunk = [k for k in erm.best_state if not k.startswith("head.")]
    assert trunk and all(torch.equal(erm.best_state[k], dfr.best_state[k]) for k in trunk)
    assert not torch.equal(erm.best_state["head.weight"], dfr.best_state["head.weight"])
    assert dfr.extra["dfr/val_macro_f1_before"] == erm.best_score
    assert 0.05 <= dfr.threshold <= 0.89  # chosen again on validation for the new head


def test_jtt_upweights_exactly_the_identification_models_errors(tmp_path):
    cfg = _cfg(tmp_path, "jtt", jtt_lambda=7, jtt_steps=10)
    data = prepare_data(cfg, progress=False)
    ctx = train_context(cfg, data, device=CPU, checkpoint_dir=tmp_path / "id", progress=False)
    errors = build_method(cfg, data.pools).identification_errors(ctx)
    out = train_model(cfg, data, device=CPU, checkpoint_dir=tmp_path / "jtt", progress=False)
    w = out.method_state["example_weights"].numpy()
    y, _ = train_groups(data.pools)
    assert len(w) == len(y) == len(errors) and 0 < errors.sum() < len(errors)
    assert np.array_equal(w == 7.0, errors) and np.all(w[~errors] == 1.0)
    assert out.extra["jtt/n_errors"] == errors.sum()


def test_reweight_counts_groups_within_their_hospital(tmp_path):
    cfg = _cfg(tmp_path, "reweight")
    data = prepare_data(cfg, progress=False)
    m = build_method(cfg, data.pools)
    _, group = train_groups(data.pools)
    n_h = [len(p.slots) for p in data.pools]
    share = np.array([np.sum(group == g) / n_h[g // 2] for g in range(4)])
    expected = (1 / share) / (1 / share).sum()
    assert np.allclose(m.group_weights.numpy(), expected, atol=1e-6)


def test_unknown_method_or_hyperparameter_is_one_line_and_exit_2(capsys):
    import train as train_entry

    for argv, needle in ((["--method", "magic"], "unknown method 'magic'"),
                         (["--method", "jtt", "--groupdro_eta", "0.1"], "belongs to method groupdro"),
                         (["--method", "groupdro", "--groupdro_eta", "50"], "out of range")):
        with pytest.raises(SystemExit) as e:
            train_entry.main(["--envs", "cxp,nih", "--label", "any", "--preset", "cpu", *argv])
        assert e.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err


def test_a_method_is_part_of_the_identity_the_name_and_the_tags(store, tmp_path):
    from cxrstudy.runs.train import run_training

    erm = tiny_config(tmp_path)
    gdro = with_method(erm, "groupdro")
    assert erm.content_hash() != gdro.content_hash()
    assert with_method(erm, "groupdro", {"groupdro_eta": "0.5"}).content_hash() != gdro.content_hash()
    assert gdro.model_name() == erm.model_name() + "-groupdro"
    raw = {"envs": "cxp,nih", "label": "any", "method": "groupdro", "groupdro_eta": "0.02", "preset": "cpu",
           "synthetic_patients": "200", "shortcut_strength": "1", "synthetic_seed": "0", "source": "synthetic",
           "data_root": "", "roots": "", "cache_dir": str(tmp_path / "c")}
    assert config_from_params(raw).hparams == {"groupdro_eta": 0.02}
    res = run_training(gdro, progress=False)
    tags = MlflowClient().get_run(res["run_id"]).data.tags
    assert tags[keys.METHOD_TAG] == "groupdro" and tags["registered_model"].endswith("-groupdro")
    assert "groupdro" in MlflowClient().get_run(res["run_id"]).info.run_name


def test_main_with_two_methods_reports_per_method_and_reruns_nothing(store, tmp_path, tiny_main_argv):
    import main as main_entry

    argv = tiny_main_argv("--methods", "erm,groupdro")
    main_entry.main(argv)
    train = mlflow.search_runs(search_all_experiments=True,
                               filter_string=f"tags.`{keys.ENTRY_TAG}` = 'train' and attributes.status = 'FINISHED'")
    assert sorted(train[f"tags.{keys.METHOD_TAG}"]) == ["erm"] * 3 + ["groupdro"] * 3
    analyze = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`{keys.ENTRY_TAG}` = 'analyze'")
    m = analyze.iloc[0]
    assert "metrics.analysis/groupdro/hurt_fraction" in analyze and not np.isnan(m["metrics.analysis/groupdro/hurt_fraction"])
    assert not np.isnan(m["metrics.analysis/hurt_fraction"])  # ERM keeps the headline's name
    arts = {a.path for a in MlflowClient().list_artifacts(m.run_id)}
    assert {"methods.csv", "methods_head_to_head.csv", "methods.png"} <= arts
    report = Path(MlflowClient().download_artifacts(m.run_id, "report.md", str(tmp_path))).read_text()
    assert "Which training method prevents the harm?" in report and "| groupdro |" in report
    n_train = len(train)
    main_entry.main(argv)  # a second main retrains nothing
    again = mlflow.search_runs(search_all_experiments=True,
                               filter_string=f"tags.`{keys.ENTRY_TAG}` = 'train' and attributes.status = 'FINISHED'")
    assert len(again[again[f"tags.{keys.CONFIG_HASH_TAG}"].notna()]) == n_train


def test_the_readme_example_method_is_one_class_that_trains(tmp_path, monkeypatch):
    """docs/GUIDE.md's focal-loss example, run as written: registering it is all it takes."""
    import re

    import torch.nn.functional as F

    import cxrstudy.train.methods as methods
    import cxrstudy.train.registry as registry

    monkeypatch.setattr(registry, "METHODS", dict(registry.METHODS))
    code = re.search(r"```python\n(@register\nclass Focal.*?)```", (ROOT / "docs" / "GUIDE.md").read_text(), re.S).group(1)
    ns = {"register": methods.register, "Method": methods.Method, "HParam": methods.HParam, "F": F, "torch": torch}
    exec(code, ns)
    assert "focal" in methods.method_names()
    cfg = _cfg(tmp_path, "focal", focal_gamma=1)
    assert cfg.hparams == {"focal_gamma": 1.0} and cfg.model_name().endswith("-focal")
    data = prepare_data(cfg, progress=False)
    out = train_model(cfg, data, device=CPU, checkpoint_dir=tmp_path / "focal", progress=False)
    assert out.best_state is not None and len(out.history) == 4
