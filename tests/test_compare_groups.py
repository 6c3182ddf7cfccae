"""One comparison's numbers from known predictions: WGA per arm over both hospitals, each arm's
WGA per hospital, and the size of the group each WGA rests on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cxrstudy.data.dataspec import DataSpec
from cxrstudy.evaluate.compare import Setting
from cxrstudy.runs.compare import compare_setting
from cxrstudy.train.config import TrainConfig


def _predictions(path: Path, env: str, n_pos: int, n_neg: int, tpr: float, tnr: float) -> None:
    """A prediction table with exactly the given hit rates (predictions cached as compare expects)."""
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    hit = np.r_[np.arange(n_pos) < round(tpr * n_pos), np.arange(n_neg) < round(tnr * n_neg)]
    pred = np.where(hit, y, 1 - y)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"env": env, "subject_id": [f"{env}{i}" for i in range(len(y))], "y_true": y,
                  "y_score": pred * 0.8 + 0.1, "y_pred": pred}).to_csv(path, index=False)


def test_compare_reports_each_arm_per_hospital_and_its_worst_group(tmp_path):
    template = TrainConfig(envs=("cxp",), label="Effusion", backbone="smallcnn", pretrained="none",
                           data=DataSpec(source="synthetic", image_size=32, cache_dir=str(tmp_path)))
    pred = tmp_path / "predictions"
    # the single model (cxp alone) is good at home and fails the positives of nih, which it never saw
    _predictions(pred / "single" / "cxp.csv", "cxp", 40, 60, tpr=0.9, tnr=0.8)
    _predictions(pred / "single" / "nih.csv", "nih", 20, 80, tpr=0.25, tnr=0.95)
    # the two-hospital model is fair to both
    _predictions(pred / "pair" / "cxp.csv", "cxp", 40, 60, tpr=0.75, tnr=0.7)
    _predictions(pred / "pair" / "nih.csv", "nih", 20, 80, tpr=0.6, tnr=0.9)

    def train(cfg):
        arm = "single" if len(cfg.envs) == 1 else "pair"
        # predictions are cached: nothing is loaded; the pair model was cut off while still improving
        return {"run_id": arm, "model_uri": f"runs:/{arm}/model", "converged": arm == "single"}

    res = compare_setting(Setting("cxp", "nih", "Effusion"), template, [0], train, n_bootstrap=50)
    assert res["wga_single"] == pytest.approx(0.25) and res["wga_pair"] == pytest.approx(0.6)
    assert res["delta_wga"] == pytest.approx(0.35) and res["worst_group_n_single"] == 20
    assert res["wga_single_base"] == pytest.approx(0.8) and res["wga_single_added"] == pytest.approx(0.25)
    assert res["wga_pair_base"] == pytest.approx(0.7) and res["wga_pair_added"] == pytest.approx(0.6)
    assert res["per_seed"][0]["group_single"] == "nih/y=1"
    assert res["n_unconverged_models"] == 1 and res["n_constant_models"] == 0


def test_analyze_flags_comparisons_that_use_a_constant_or_unconverged_model():
    from analysis.pipeline import model_flags

    settings = pd.DataFrame([
        {"base": "cxp", "added": "nih", "label": "Any", "balance": "none", "method": "erm", "shortcut_strength": 2.0,
         "delta_mean": 0.1, "n_constant_models": 0, "n_unconverged_models": 1},
        {"base": "nih", "added": "cxp", "label": "Any", "balance": "none", "method": "erm", "shortcut_strength": 2.0,
         "delta_mean": -0.1, "n_constant_models": 1, "n_unconverged_models": np.nan},
        {"base": "cxp", "added": "mimic", "label": "Any", "balance": "none", "method": "erm", "shortcut_strength": 2.0,
         "delta_mean": 0.0, "n_constant_models": 0, "n_unconverged_models": 0},
    ])
    text = "\n".join(model_flags(settings))
    assert "2 of 3 settings" in text
    assert "cxp+nih / Any / none / erm / strength 2: 1 unconverged model(s)" in text
    assert "nih+cxp / Any / none / erm / strength 2: 1 constant model(s)" in text and "cxp+mimic" not in text
    assert model_flags(settings.iloc[[2]]) == []
