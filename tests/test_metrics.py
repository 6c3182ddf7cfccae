"""Group-wise metrics: hand-worked cases and agreement with scikit-learn."""

import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from cxrstudy.evaluate.metrics import (
    THRESHOLD_GRID,
    binary_metrics,
    evaluate_predictions,
    expected_calibration_error,
    group_accuracy,
    macro_f1_by_threshold,
    predict,
    select_threshold,
    worst_group,
)


# A two-hospital toy whose group accuracies are easy to work out by hand:
#   cxp/y=0: 5 negatives, 4 right -> TNR 0.8     cxp/y=1: 4 positives, 3 right -> TPR 0.75
#   nih/y=0: 4 negatives, 4 right -> TNR 1.0     nih/y=1: 2 positives, 1 right -> TPR 0.5
def toy() -> pd.DataFrame:
    rows = (
        [("cxp", 0, 0)] * 4 + [("cxp", 0, 1)]
        + [("cxp", 1, 1)] * 3 + [("cxp", 1, 0)]
        + [("nih", 0, 0)] * 4
        + [("nih", 1, 1), ("nih", 1, 0)]
    )
    df = pd.DataFrame(rows, columns=["env", "y_true", "y_pred"])
    # Scores consistent with a 0.5 threshold.
    df["y_score"] = np.where(df["y_pred"] == 1, 0.7, 0.2)
    df["subject_id"] = np.arange(len(df)).astype(str)
    # Interleave the hospitals so nothing relies on input order.
    return df.iloc[np.random.default_rng(1).permutation(len(df))].reset_index(drop=True)


# ----------------------------------------------------------------- grid / predict


def test_threshold_grid_is_exact():
    assert len(THRESHOLD_GRID) == 85
    expected = [float(f"0.{k:02d}") for k in range(5, 90)]
    assert THRESHOLD_GRID.tolist() == expected  # exact float equality, no artefacts
    assert THRESHOLD_GRID[0] == 0.05 and THRESHOLD_GRID[-1] == 0.89
    with pytest.raises(ValueError):
        THRESHOLD_GRID[0] = 0.5  # read-only


def test_predict_uses_greater_or_equal():
    out = predict([0.1, 0.3, 0.30000001, 0.2999], 0.3)
    assert out.tolist() == [0, 1, 1, 0]
    assert out.dtype == np.int64
    with pytest.raises(ValueError):
        predict([0.1, np.nan], 0.5)


# --------------------------------------------------------------- group accuracy


def test_group_accuracy_hand_case():
    df = toy()
    g = group_accuracy(df["env"], df["y_true"], df["y_pred"])
    assert list(g.columns) == ["env", "y", "n", "correct", "acc"]
    assert list(zip(g["env"], g["y"])) == [("cxp", 0), ("cxp", 1), ("nih", 0), ("nih", 1)]
    assert g["n"].tolist() == [5, 4, 4, 2]
    assert g["correct"].tolist() == [4, 3, 4, 1]
    assert g["acc"].tolist() == [0.8, 0.75, 1.0, 0.5]
    assert worst_group(g) == (0.5, "nih/y=1")


def test_worst_group_ties_go_to_first_in_sort_order():
    g = pd.DataFrame(
        {"env": ["nih", "cxp", "cxp", "nih"], "y": [0, 1, 0, 1],
         "n": [2, 2, 2, 2], "correct": [1, 1, 2, 2], "acc": [0.5, 0.5, 1.0, 1.0]}
    )
    assert worst_group(g) == (0.5, "cxp/y=1")
    with pytest.raises(ValueError):
        worst_group(g.iloc[:0])


def test_absent_group_is_omitted_or_rejected():
    envs = ["cxp", "cxp", "nih", "nih"]
    y = [0, 1, 0, 0]  # nih has no positives
    p = [0, 1, 1, 0]
    g = group_accuracy(envs, y, p)
    assert list(zip(g["env"], g["y"])) == [("cxp", 0), ("cxp", 1), ("nih", 0)]
    assert (g["n"] > 0).all()
    with pytest.raises(ValueError, match=r"'nih' has no positives \(y=1\)"):
        group_accuracy(envs, y, p, expected_envs=["cxp", "nih"])
    with pytest.raises(ValueError, match=r"'pad' has no"):
        group_accuracy(envs, y, p, expected_envs=["pad"])
    # Passing only hospitals that do have both groups is fine.
    assert len(group_accuracy(envs, y, p, expected_envs=["cxp"])) == 3


def test_group_accuracy_rejects_bad_labels():
    with pytest.raises(ValueError, match="only 0 and 1"):
        group_accuracy(["a", "a"], [0, 2], [0, 1])
    with pytest.raises(ValueError, match="differ in length"):
        group_accuracy(["a", "a"], [0, 1], [0])


# ------------------------------------------------------------ threshold selection


def test_select_threshold_hand_case_with_ties():
    # Every threshold in 0.31..0.80 separates the classes perfectly (0.80 included,
    # because a score equal to the threshold is positive); the smallest wins.
    y = [1, 1, 0, 0]
    s = [0.9, 0.8, 0.1, 0.3]
    assert select_threshold(y, s) == (0.31, 1.0)


def test_select_threshold_constant_scores():
    # All scores 0.5, one positive of four. t <= 0.5: all positive, macro-F1
    # (2/5 + 0) / 2 = 0.2; t > 0.5: all negative, (0 + 6/7) / 2 = 3/7.
    t, f = select_threshold([1, 0, 0, 0], [0.5] * 4)
    assert t == 0.51
    assert f == pytest.approx(3 / 7, abs=1e-15)


def naive_macro_f1(y, s, grid):
    return np.array(
        [f1_score(y, predict(s, t), labels=[0, 1], average="macro", zero_division=0)
         for t in grid]
    )


@pytest.mark.parametrize("case", range(12))
def test_vectorised_threshold_equals_sklearn_loop(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(1, 300))
    prevalence = [0.0, 1.0, 0.03, 0.5, 0.2, 0.9][case % 6]
    y = (rng.random(n) < prevalence).astype(int)
    s = rng.beta(2, 5, n) + 0.3 * y
    s = np.clip(s, 0, 1)
    if case % 2:  # many scores exactly on grid values: checks >= and ties
        s = np.round(s, 2)
    f_fast = macro_f1_by_threshold(y, s)
    f_slow = naive_macro_f1(y, s, THRESHOLD_GRID)
    assert np.array_equal(f_fast, f_slow)  # bit for bit
    i = int(np.argmax(f_slow))
    assert select_threshold(y, s) == (float(THRESHOLD_GRID[i]), float(f_slow[i]))


def test_select_threshold_rejects_bad_input():
    with pytest.raises(ValueError):
        select_threshold([], [])
    with pytest.raises(ValueError):
        select_threshold([0, 1], [0.2, 0.4], grid=[0.5, 0.3])


# ---------------------------------------------------------------- whole-set metrics


def test_ece_hand_case():
    # bin 0: {0.05, y=0} -> 0.05; bin 1: {0.15, y=0} -> 0.15;
    # bin 9: {0.95, 0.95; y=1, 0} -> |0.5 - 0.95| = 0.45, weight 1/2.
    ece = expected_calibration_error([0, 0, 1, 0], [0.05, 0.15, 0.95, 0.95])
    assert ece == pytest.approx(0.25 * 0.05 + 0.25 * 0.15 + 0.5 * 0.45, abs=1e-12)
    # Perfectly calibrated bins, and the edges 0.0 and 1.0 are accepted.
    assert expected_calibration_error([1, 0, 0, 0], [0.25] * 4) == 0.0
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0
    # A score on an inner edge belongs to the upper bin: 0.1 -> [0.1, 0.2).
    assert expected_calibration_error([0, 1], [0.1, 0.19]) == pytest.approx(
        abs(0.5 - 0.145), abs=1e-12
    )
    with pytest.raises(ValueError):
        expected_calibration_error([0], [1.2])


def test_binary_metrics_agree_with_sklearn():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    s = np.clip(rng.random(200) * 0.6 + 0.4 * y, 0, 1)
    p = predict(s, 0.5)
    m = binary_metrics(y, s, p)
    assert m["macro_f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, p))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s))
    assert m["acc"] == pytest.approx(np.mean(y == p))
    assert (m["n_pos"], m["n_neg"]) == (int(y.sum()), int(200 - y.sum()))
    assert 0 <= m["ece"] <= 1


def test_auroc_nan_for_one_class_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = binary_metrics([0, 0, 0], [0.1, 0.6, 0.3], [0, 1, 0])
    assert np.isnan(m["auroc"])
    assert m["balanced_acc"] == pytest.approx(2 / 3)
    assert (m["n_pos"], m["n_neg"]) == (0, 3)


# -------------------------------------------------------------------- evaluation


def test_evaluate_predictions_hand_case():
    df = toy()
    out = evaluate_predictions(df.drop(columns="y_pred"), threshold=0.5)
    assert out["wga"] == 0.5
    assert out["wga_group"] == "nih/y=1"
    assert out["cxp/tpr"] == 0.75 and out["cxp/tnr"] == 0.8
    assert out["nih/tpr"] == 0.5 and out["nih/tnr"] == 1.0
    assert out["cxp/acc"] == 7 / 9 and out["nih/acc"] == 5 / 6
    assert (out["cxp/n_pos"], out["cxp/n_neg"], out["nih/n_pos"], out["nih/n_neg"]) == (4, 5, 2, 4)
    assert out["n_pos"] == 6 and out["n_neg"] == 9 and out["n"] == 15
    assert out["acc"] == 12 / 15
    assert out["threshold"] == 0.5
    for k in ("macro_f1", "balanced_acc", "auroc", "ece", "cxp/auroc", "nih/auroc"):
        assert isinstance(out[k], float)
    assert not any(k.startswith("test/") for k in out)
    # Same result from the y_pred column alone.
    again = evaluate_predictions(df)
    assert {k: v for k, v in again.items() if k != "threshold"} == {
        k: v for k, v in out.items() if k != "threshold"
    }


def test_evaluate_predictions_contract():
    df = toy()
    with pytest.raises(ValueError, match="y_pred"):
        evaluate_predictions(df.drop(columns="y_pred"))  # no threshold, no y_pred
    with pytest.raises(ValueError, match="disagrees"):
        evaluate_predictions(df, threshold=0.9)
    one_class = df[~((df["env"] == "nih") & (df["y_true"] == 1))]
    out = evaluate_predictions(one_class)
    assert np.isnan(out["nih/tpr"]) and np.isnan(out["nih/auroc"])
    assert out["wga_group"] == "cxp/y=1"
    with pytest.raises(ValueError, match="'nih' has no positives"):
        evaluate_predictions(one_class, expected_envs=["cxp", "nih"])
