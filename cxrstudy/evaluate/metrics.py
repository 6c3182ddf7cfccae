"""Group-wise metrics for one binary label: small pure functions on numpy arrays and frames.

The protocol's groups are (hospital, label value) pairs. A group's accuracy is the
hospital's TPR on its positives (``y=1``) and its TNR on its negatives (``y=0``); the
worst-group accuracy (WGA) is the minimum over the groups present.

The primitives that training's validation uses too (the threshold grid and rule, predictions,
group accuracy, the worst group, AUROC) live below training, in :mod:`cxrstudy.train.scoring`,
and are re-exported here; this module adds the evaluation's own: calibration, the whole-set
metrics and :func:`evaluate_predictions`.

Conventions used throughout:

* ``y_true`` is 0/1 (bools and 0.0/1.0 are accepted); anything else raises ``ValueError``.
* ``y_score`` is the model's probability of the positive class (softmax[:, 1]); it must be
  finite. Only :func:`expected_calibration_error` requires it to lie in [0, 1].
* A prediction is positive when ``score >= threshold`` (see :func:`predict`).
* Nothing here logs anything (no MLflow); callers add prefixes such as ``test/``.

:func:`evaluate_predictions` is the one entry point that evaluation, comparison and
analysis share; the others are its building blocks.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd
from sklearn.metrics import f1_score

from cxrstudy.train.groups import group_name
from cxrstudy.train.scoring import (THRESHOLD_GRID, as_labels, as_scores, auroc_score, group_accuracy,
                                    macro_f1_by_threshold, predict, same_length, select_threshold, worst_group)

__all__ = [
    # from cxrstudy.train.scoring and cxrstudy.train.groups
    "THRESHOLD_GRID",
    "as_labels",
    "predict",
    "group_accuracy",
    "group_name",
    "worst_group",
    "macro_f1_by_threshold",
    "select_threshold",
    # this module's own
    "expected_calibration_error",
    "binary_metrics",
    "evaluate_predictions",
]

#: Number of equal-width bins over [0, 1] used by the expected calibration error.
ECE_BINS = 10


# --------------------------------------------------------------- whole-set metrics


def expected_calibration_error(y_true, y_score, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the positive-class probability.

    ``sum_b n_b / N * |mean(y_true in b) - mean(y_score in b)|`` over ``n_bins``
    equal-width bins of [0, 1]. Bin ``b`` is ``[b/n_bins, (b+1)/n_bins)``, the last one
    closed (a score of 1.0 falls in it); empty bins add nothing. Scores outside [0, 1]
    raise ``ValueError``; an empty input gives NaN.
    """
    y = as_labels(y_true)
    s = as_scores(y_score)
    n = same_length(y_true=y, y_score=s)
    if n == 0:
        return float("nan")
    if (s < 0).any() or (s > 1).any():
        raise ValueError("y_score must lie in [0, 1] for the calibration error")
    inner_edges = np.arange(1, n_bins, dtype=np.int64) / float(n_bins)
    b = np.searchsorted(inner_edges, s, side="right")
    count = np.bincount(b, minlength=n_bins).astype(np.float64)
    sum_y = np.bincount(b, weights=y.astype(np.float64), minlength=n_bins)
    sum_s = np.bincount(b, weights=s, minlength=n_bins)
    used = count > 0
    gap = np.abs(sum_y[used] / count[used] - sum_s[used] / count[used])
    return float(np.sum(count[used] / n * gap))


def binary_metrics(y_true, y_score, y_pred) -> dict:
    """Threshold-free and thresholded metrics of one prediction set.

    Keys: ``macro_f1`` (sklearn's macro F1 over classes 0 and 1, ``zero_division=0``),
    ``balanced_acc`` (mean recall over the classes present in ``y_true``; equals
    sklearn's ``balanced_accuracy_score`` without its warning), ``auroc`` (NaN when
    ``y_true`` holds one class only), ``ece`` (:func:`expected_calibration_error`),
    ``acc``, ``n_pos``, ``n_neg``. ``ValueError`` on empty input.
    """
    y = as_labels(y_true)
    s = as_scores(y_score)
    p = as_labels(y_pred, "y_pred")
    n = same_length(y_true=y, y_score=s, y_pred=p)
    if n == 0:
        raise ValueError("no predictions to evaluate (empty input)")
    n_pos = int(y.sum())
    n_neg = n - n_pos
    correct = p == y
    recalls = []
    if n_neg:
        recalls.append(correct[y == 0].mean())
    if n_pos:
        recalls.append(correct[y == 1].mean())
    auroc = auroc_score(y, s)
    return {
        "macro_f1": float(
            f1_score(y, p, labels=[0, 1], average="macro", zero_division=0)
        ),
        "balanced_acc": float(np.mean(recalls)),
        "auroc": auroc,
        "ece": expected_calibration_error(y, s),
        "acc": float(correct.mean()),
        "n_pos": n_pos,
        "n_neg": n_neg,
    }


# -------------------------------------------------------------------- evaluation

#: Per-hospital metrics :func:`evaluate_predictions` reports as ``"<env>/<name>"``.
PER_ENV_METRICS = ("tpr", "tnr", "auroc", "acc", "n_pos", "n_neg")


def evaluate_predictions(
    df: pd.DataFrame,
    threshold: float | None = None,
    *,
    expected_envs: Iterable[str] | None = None,
) -> dict:
    """Every metric of one model's predictions on one or more hospitals' test images.

    ``df`` has one row per image with columns ``env``, ``y_true``, ``y_score`` and, when
    ``threshold`` is None, ``y_pred`` (``subject_id`` may be present; it is not needed
    here). With ``threshold`` the predictions are ``predict(y_score, threshold)``; a
    ``y_pred`` column that disagrees with them raises ``ValueError``.

    Returns a flat dict without prefixes (the caller adds e.g. ``test/``):

    * ``"<env>/tpr"``, ``"<env>/tnr"``, ``"<env>/auroc"``, ``"<env>/acc"``,
      ``"<env>/n_pos"``, ``"<env>/n_neg"`` for each hospital present (TPR/TNR/AUROC NaN
      when that hospital lacks positives or negatives);
    * ``"wga"`` and ``"wga_group"`` (e.g. ``"nih/y=1"``) over all (hospital, label)
      groups present; ``expected_envs`` makes a missing group an error
      (see :func:`group_accuracy`);
    * ``"macro_f1"``, ``"balanced_acc"``, ``"auroc"``, ``"ece"``, ``"acc"``,
      ``"n_pos"``, ``"n_neg"``, ``"n"`` over all rows pooled;
    * ``"threshold"`` when one was given.
    """
    required = ["env", "y_true", "y_score"] + ([] if threshold is not None else ["y_pred"])
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ValueError(f"prediction table lacks columns {missing}")
    if len(df) == 0:
        raise ValueError("prediction table is empty")

    envs = df["env"].astype(str).to_numpy()
    y = as_labels(df["y_true"].to_numpy())
    s = as_scores(df["y_score"].to_numpy())
    if threshold is not None:
        p = predict(s, threshold)
        if "y_pred" in df.columns and not np.array_equal(
            as_labels(df["y_pred"].to_numpy(), "y_pred"), p
        ):
            raise ValueError(
                f"column y_pred disagrees with y_score >= {threshold}; pass one or the other"
            )
    else:
        p = as_labels(df["y_pred"].to_numpy(), "y_pred")

    groups = group_accuracy(envs, y, p, expected_envs=expected_envs)
    out: dict = {}
    for env in sorted(set(envs)):
        m = envs == env
        ym, sm, pm = y[m], s[m], p[m]
        n_pos = int(ym.sum())
        n_neg = int(len(ym) - n_pos)
        hit = pm == ym
        out[f"{env}/tpr"] = float(hit[ym == 1].mean()) if n_pos else float("nan")
        out[f"{env}/tnr"] = float(hit[ym == 0].mean()) if n_neg else float("nan")
        out[f"{env}/auroc"] = auroc_score(ym, sm)
        out[f"{env}/acc"] = float(hit.mean())
        out[f"{env}/n_pos"] = n_pos
        out[f"{env}/n_neg"] = n_neg

    wga, wga_group = worst_group(groups)
    out["wga"] = wga
    out["wga_group"] = wga_group
    out.update(binary_metrics(y, s, p))
    out["n"] = int(len(y))
    if threshold is not None:
        out["threshold"] = float(threshold)
    return out
