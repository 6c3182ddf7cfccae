"""The metric primitives that training and evaluation share: small pure functions on numpy arrays.

Validation during training (:mod:`cxrstudy.train.inference`) chooses its threshold and measures
its worst-group accuracy with these; :mod:`cxrstudy.evaluate.metrics` builds the evaluation's
full report on them. The protocol's groups are (hospital, label value) pairs
(:mod:`cxrstudy.train.groups`). A group's accuracy is the hospital's TPR on its positives
(``y=1``) and its TNR on its negatives (``y=0``); the worst-group accuracy (WGA) is the minimum
over the groups present.

Conventions:

* ``y_true`` is 0/1 (bools and 0.0/1.0 are accepted); anything else raises ``ValueError``.
* ``y_score`` is the model's probability of the positive class (softmax[:, 1]); it must be finite.
* A prediction is positive when ``score >= threshold`` (see :func:`predict`).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from cxrstudy.train.groups import group_name

__all__ = ["THRESHOLD_GRID", "as_labels", "as_scores", "same_length", "predict", "auroc_score", "group_accuracy",
           "worst_group", "macro_f1_by_threshold", "select_threshold"]

#: The protocol's candidate decision thresholds 0.05, 0.06, ..., 0.89 (85 values).
#: Built from integers (k / 100) so each value is the double nearest to its two-decimal
#: literal (``THRESHOLD_GRID[2] == 0.07``), with no ``arange`` accumulation error.
#: Read-only.
THRESHOLD_GRID = np.arange(5, 90, dtype=np.int64) / 100.0
THRESHOLD_GRID.flags.writeable = False

# --------------------------------------------------------------------------- inputs


def as_labels(y_true, name: str = "y_true") -> np.ndarray:
    """``y_true`` as a 1-D int64 array of 0/1, or ``ValueError``."""
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {y.shape}")
    if y.dtype == bool:
        return y.astype(np.int64)
    if y.size and not np.issubdtype(y.dtype, np.number):
        raise ValueError(f"{name} must be numeric 0/1, got dtype {y.dtype}")
    if y.size == 0:
        return np.zeros(0, dtype=np.int64)
    bad = ~np.isin(y, (0, 1))
    if bad.any():
        raise ValueError(f"{name} must contain only 0 and 1; found {y[bad][0]!r}")
    return y.astype(np.int64)


def as_scores(y_score, name: str = "y_score") -> np.ndarray:
    """``y_score`` as a 1-D finite float64 array, or ``ValueError``."""
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return s


def same_length(**arrays) -> int:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"inputs differ in length: {lengths}")
    return next(iter(lengths.values()))


# ------------------------------------------------------------------- predictions


def predict(y_score, threshold: float) -> np.ndarray:
    """Hard 0/1 predictions: ``1`` where ``y_score >= threshold``, as int64.

    The comparison is ``>=`` (a score exactly at the threshold is positive), the same
    convention :func:`select_threshold` uses, so the threshold chosen on validation
    reproduces the validation macro-F1 it was chosen for.
    """
    return (as_scores(y_score) >= float(threshold)).astype(np.int64)


def auroc_score(y_true, y_score) -> float:
    """The area under the ROC curve (scikit-learn's), NaN when ``y_true`` holds one class only."""
    y = as_labels(y_true)
    s = as_scores(y_score)
    same_length(y_true=y, y_score=s)
    n_pos = int(y.sum())
    return float(roc_auc_score(y, s)) if n_pos and len(y) - n_pos else float("nan")


# --------------------------------------------------------------- group accuracy


def group_accuracy(
    envs, y_true, y_pred, *, expected_envs: Iterable[str] | None = None
) -> pd.DataFrame:
    """Accuracy of every (hospital, label value) group present in the data.

    Returns one row per group with columns ``env, y, n, correct, acc``, sorted by
    ``env`` (as strings) then ``y``: ``acc = correct / n`` is the hospital's TPR for
    ``y=1`` and its TNR for ``y=0``.

    A group with no images is absent from the result (no row with ``n=0`` and no NaN
    accuracy), so by default a hospital with no positives simply contributes only its
    negatives group. Pass ``expected_envs`` to demand instead that each of those
    hospitals has both positives and negatives: a missing group raises ``ValueError``
    naming the hospital and label value. Hospitals in the data but not in
    ``expected_envs`` are kept (the check is about presence, not a filter).
    """
    e = np.asarray(envs).astype(str)
    y = as_labels(y_true)
    p = as_labels(y_pred, "y_pred")
    same_length(envs=e, y_true=y, y_pred=p)

    frame = pd.DataFrame({"env": e, "y": y, "correct": (p == y).astype(np.int64)})
    out = (
        frame.groupby(["env", "y"], sort=True)["correct"]
        .agg(n="size", correct="sum")
        .reset_index()
    )
    out["n"] = out["n"].astype(np.int64)
    out["correct"] = out["correct"].astype(np.int64)
    out["acc"] = out["correct"] / out["n"]

    if expected_envs is not None:
        present = set(zip(out["env"], out["y"]))
        for env in expected_envs:
            for label, what in ((1, "positives"), (0, "negatives")):
                if (str(env), label) not in present:
                    raise ValueError(
                        f"hospital {env!r} has no {what} (y={label}); "
                        f"its group {group_name(env, label)} cannot be evaluated"
                    )
    return out.loc[:, ["env", "y", "n", "correct", "acc"]]


def worst_group(groups: pd.DataFrame) -> tuple[float, str]:
    """``(wga, group)``: the lowest group accuracy and its name, e.g. ``(0.61, "nih/y=1")``.

    ``groups`` is :func:`group_accuracy`'s frame. Ties go to the first group in
    (env, y) sort order, whatever the frame's row order. ``ValueError`` when empty.
    """
    if len(groups) == 0:
        raise ValueError("no groups to take the worst of (empty input)")
    g = groups.assign(env=groups["env"].astype(str)).sort_values(
        ["env", "y"], kind="mergesort"
    )
    acc = g["acc"].to_numpy(dtype=np.float64)
    if np.isnan(acc).any():
        raise ValueError("group accuracies contain NaN")
    i = int(np.argmin(acc))  # first minimum in sort order
    return float(acc[i]), group_name(g["env"].iloc[i], g["y"].iloc[i])


# ------------------------------------------------------------ threshold selection


def macro_f1_by_threshold(y_true, y_score, grid=THRESHOLD_GRID) -> np.ndarray:
    """Macro-F1 (classes 0 and 1, ``zero_division=0``) of ``predict(y_score, t)`` for
    every ``t`` in ``grid``, all at once.

    Counts come from sorted scores: the positives predicted positive at ``t`` are those
    with score ``>= t`` (``searchsorted(..., side="left")``), likewise the negatives.
    Each class's F1 is ``2 TP / (true + predicted)`` and the macro value their mean,
    the same float operations sklearn performs, so the values agree bit for bit with
    ``f1_score(y, predict(s, t), labels=[0, 1], average="macro", zero_division=0)``.
    """
    y = as_labels(y_true)
    s = as_scores(y_score)
    same_length(y_true=y, y_score=s)
    t = np.asarray(grid, dtype=np.float64)
    pos = np.sort(s[y == 1])
    neg = np.sort(s[y == 0])
    n_pos, n_neg = len(pos), len(neg)
    tp = n_pos - np.searchsorted(pos, t, side="left")  # positives with score >= t
    fp = n_neg - np.searchsorted(neg, t, side="left")  # negatives with score >= t
    fn = n_pos - tp
    tn = n_neg - fp

    def f1(hit, true_sum, pred_sum):
        denom = (true_sum + pred_sum).astype(np.float64)
        num = 2.0 * hit.astype(np.float64)
        zero = denom == 0
        return np.where(zero, 0.0, num / np.where(zero, 1.0, denom))

    f_pos = f1(tp, n_pos, tp + fp)
    f_neg = f1(tn, n_neg, tn + fn)
    return (f_neg + f_pos) / 2.0


def select_threshold(y_true, y_score, grid=THRESHOLD_GRID) -> tuple[float, float]:
    """``(threshold, macro_f1)``: the grid value with the highest macro-F1 on the given
    (validation) data; ties go to the smallest such threshold.

    This is the protocol's threshold rule (grid 0.05..0.89, validation macro-F1 at the
    kept checkpoint); the threshold is then used unchanged on every test set. ``grid``
    must be sorted ascending so that "first maximum" means "smallest threshold".
    """
    t = np.asarray(grid, dtype=np.float64)
    if t.ndim != 1 or t.size == 0:
        raise ValueError("grid must be a non-empty 1-D sequence of thresholds")
    if np.any(np.diff(t) <= 0):
        raise ValueError("grid must be strictly increasing")
    if len(np.asarray(y_true)) == 0:
        raise ValueError("cannot select a threshold on empty data")
    f = macro_f1_by_threshold(y_true, y_score, t)
    i = int(np.argmax(f))  # first maximum = smallest threshold among ties
    return float(t[i]), float(f[i])
