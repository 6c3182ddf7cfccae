"""Calibrated evidence: the convergence rule, constant models, and the shortcut dose-response
(the same patients, labels and seeds at every strength; only the pixels differ)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cxrstudy.data.dataspec import DataSpec
from cxrstudy.data.synthetic import SyntheticConfig
from cxrstudy.tracking import keys
from cxrstudy.train.loop import TrainOutcome

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "entrypoints"))


def _outcome(**kw) -> TrainOutcome:
    base = dict(best_state={}, threshold=0.5, best_step=100, best_score=0.8, last_step=400, stopped_early=False,
                history=[{"step": 100, "pred_pos_rate": 0.3}], images_per_s=1.0)
    return TrainOutcome(**{**base, **kw})


def test_the_convergence_rule():
    assert _outcome(best_step=300, last_step=400).converged(400)  # exactly 75%
    assert not _outcome(best_step=301, last_step=400).converged(400)  # still improving near the cap
    assert _outcome(best_step=400, last_step=400, stopped_early=True).converged(400)  # patience exhausted
    assert not _outcome(best_step=400, history=[{"step": 400, "pred_pos_rate": 0.3}]).converged(400)
    assert any("not converged" in w for w in _outcome(best_step=390).warnings(400))
    assert _outcome(best_step=100).warnings(400) == []


def test_a_constant_model_is_recognised_and_warned_about():
    for rate in (0.0, 1.0):
        out = _outcome(history=[{"step": 100, "pred_pos_rate": rate}])
        assert out.constant and out.metrics()["val/constant_model"] == 1.0
        assert any("constant model" in w for w in out.warnings(400))
    assert not _outcome().constant and _outcome().metrics()["val/constant_model"] == 0.0


def test_the_attributable_change_splits_into_the_pair_and_single_parts():
    from analysis.dose import dose_table

    rows = []
    for s, pair, single in ((0.0, 0.6, 0.5), (1.0, 0.4, 0.45)):  # pair part -0.2, single part -0.05
        for base, added, shift in (("cxp", "nih", 0.0), ("nih", "cxp", 0.1)):
            rows.append({"base": base, "added": added, "label": "Effusion", "balance": "none", "method": "erm",
                         "shortcut_strength": s, "wga_pair": pair, "wga_single": single + shift,
                         "delta_mean": pair - single - shift, "delta_ci_low": -1.0, "delta_ci_high": 1.0,
                         "attributable_delta": -0.15 if s else np.nan})
    rows.append({**rows[-1], "base": "mimic", "added": "cxp", "wga_pair": 0.9})  # a pair with no strength-0 twin
    t = dose_table(pd.DataFrame(rows)).set_index("shortcut_strength")
    assert t.loc[0.0, "pair_change_mean"] == 0.0 and t.loc[0.0, "single_change_mean"] == 0.0
    assert t.loc[1.0, "pair_change_mean"] == pytest.approx(-0.2)
    assert t.loc[1.0, "single_change_mean"] == pytest.approx(-0.05)
    # one two-hospital model serves (cxp, nih) and (nih, cxp): its CI comes from one value, not two
    assert t.loc[1.0, "pair_change_ci_low"] == pytest.approx(-0.2) == t.loc[1.0, "pair_change_ci_high"]
    assert t.loc[1.0, "pair_change_mean"] - t.loc[1.0, "single_change_mean"] == pytest.approx(-0.15)


def test_every_strength_has_the_same_patients_labels_and_splits_but_other_pixels(tmp_path):
    specs = [DataSpec(source="synthetic", image_size=32, cache_dir=str(tmp_path),
                      synthetic=SyntheticConfig(n_patients=120, shortcut_strength=s)) for s in (0.0, 2.0)]
    for env in ("cxp", "nih"):
        a, b = (s.table(env) for s in specs)
        cols = [c for c in a.columns if c != "path"]
        pd.testing.assert_frame_equal(a[cols], b[cols])
        ea, eb = (s.entry(env, "test", progress=False) for s in specs)
        assert list(ea.index["subject_id"]) == list(eb.index["subject_id"])
        assert not np.array_equal(np.asarray(ea.images()), np.asarray(eb.images()))
    assert specs[0].fingerprint(["cxp"]) != specs[1].fingerprint(["cxp"])


def test_main_dose_response_logs_the_attributable_change_csv_metrics_and_figure(store, tmp_path, tiny_main_argv):
    import main as main_entry

    main_entry.main(tiny_main_argv("--shortcut_strengths", "0,1"))
    compare = mlflow.search_runs(search_all_experiments=True,
                                 filter_string=f"tags.`{keys.ENTRY_TAG}` = 'compare' and attributes.status = 'FINISHED'")
    assert sorted(compare[f"tags.{keys.SHORTCUT_STRENGTH_TAG}"]) == ["0", "0", "1", "1"]
    at1 = compare[compare[f"tags.{keys.SHORTCUT_STRENGTH_TAG}"] == "1"]
    for k in keys.ATTRIBUTABLE_METRICS:
        assert at1[f"metrics.compare/{k}"].notna().all(), k
    r = at1.iloc[0]
    assert r["metrics.compare/attributable_ci_low"] <= r["metrics.compare/attributable_delta"] \
        <= r["metrics.compare/attributable_ci_high"]
    # the models at both strengths: the same configuration except the shortcut strength
    train = mlflow.search_runs(search_all_experiments=True,
                               filter_string=f"tags.`{keys.ENTRY_TAG}` = 'train' and attributes.status = 'FINISHED'")
    assert len(train) == 6 and train[f"tags.{keys.CONFIG_HASH_TAG}"].is_unique
    analyze = mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`{keys.ENTRY_TAG}` = 'analyze'")
    m = analyze.iloc[0]
    for s in ("0", "1"):
        assert not np.isnan(m[f"metrics.analysis/dose/{s}/hurt_fraction"])
    assert m["metrics.analysis/dose/0/attributable_mean"] == 0.0
    assert not np.isnan(m["metrics.analysis/dose/1/attributable_mean"])
    arts = {a.path for a in MlflowClient().list_artifacts(m.run_id)}
    assert {"dose_response.csv", "dose_response.png", "report.md"} <= arts
    path = MlflowClient().download_artifacts(m.run_id, "dose_response.csv", str(tmp_path))
    table = pd.read_csv(path)
    assert list(table["shortcut_strength"]) == [0.0, 1.0]
    # the attributable change is the pair part minus the single part, and the single part splits by hospital
    for k in keys.PER_HOSPITAL_WGA:
        assert compare[f"metrics.compare/{k}"].between(0, 1).all(), k
    r1 = table.iloc[1]
    assert r1["attributable_mean"] == pytest.approx(r1["pair_change_mean"] - r1["single_change_mean"], abs=1e-9)
    assert not np.isnan(r1["single_added_change_mean"]) and not np.isnan(r1["single_base_change_mean"])


def test_shortcut_strengths_need_the_synthetic_source(capsys):
    import main as main_entry

    with pytest.raises(SystemExit) as e:
        main_entry.main(["--source", "real", "--data_root", "/nonexistent", "--shortcut_strengths", "0,1"])
    assert e.value.code == 2


def test_at_strength_changes_only_the_pixels_setting(tmp_path):
    from cxrstudy.runs.study import at_strength
    from test_train_evaluate import tiny_config

    cfg = tiny_config(tmp_path)
    other = at_strength(cfg, 2.0)
    assert other.data.synthetic.shortcut_strength == 2.0
    assert dataclasses.replace(other.data.synthetic, shortcut_strength=cfg.data.synthetic.shortcut_strength) \
        == cfg.data.synthetic
    assert other.content_hash() != cfg.content_hash() and other.seed == cfg.seed


def test_every_test_group_of_the_default_grid_holds_at_least_100_images():
    """WGA is the smallest group's accuracy: with the defaults no (hospital, label value) group of a
    test split is so small that one image moves it by more than 0.01."""
    import main
    from cxrstudy.data.dataspec import DATA_PARAMS, spec_from_params
    from cxrstudy.hospitals import parse_envs
    from cxrstudy.labels import parse_labels

    spec = spec_from_params(DATA_PARAMS, 32)
    for env in parse_envs(main.PARAMS["envs"]):
        test = spec.rows(env, "test")
        for label in parse_labels(main.PARAMS["labels"]):
            positives = int(test[label].sum())
            assert min(positives, len(test) - positives) >= 100, (env, label, positives, len(test))
