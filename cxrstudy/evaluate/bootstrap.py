"""Patient-level bootstrap confidence intervals for worst-group accuracy (WGA).

Images are nested in subjects (patients) and subjects in hospitals, so the unit resampled
is the subject: each resample draws, within each hospital separately (stratified), as
many subjects as the hospital has, uniformly with replacement, and keeps all images of
every drawn subject (a subject drawn twice counts twice). Intervals are 95% percentile
intervals by default.

Prediction tables have one row per test image and the columns ``env``, ``subject_id``,
``y_true`` and ``y_pred`` (0/1). A subject is the pair (``env``, ``subject_id``), with
``subject_id`` compared as a string, so equal ids in two hospitals are different people.

How it is fast: the images are summarised once per subject as an S x G matrix of
counts (images, and correct predictions of each model, in each (hospital, label)
group); a resample is a vector of how often each subject was drawn, and the group
counts of a whole block of resamples are one matrix product. 1,000 resamples of ~30k
subjects take well under a second or two.

Random draws (a documented contract, so that a slow reference can replay them):
``rng = numpy.random.default_rng(seed)``; subjects are ordered by (env, subject_id) as
strings; for each resample in turn and, inside it, each hospital in sorted order,
``rng.integers(0, n_h, size=n_h)`` gives positions into that hospital's ordered
subjects. Results therefore depend only on the seed and the data, not on block sizes.

A group (hospital, label value) whose subjects all miss a resample has no accuracy in
it; that resample's WGA is the minimum over the groups it does contain (the count of
such resamples is reported as ``n_incomplete``). Every hospital keeps at least one
group in every resample, so WGA is always defined.

Paired comparisons (two models, or two per seed) must be evaluated on the SAME test
images in the SAME row order: see :func:`check_aligned`. One subject resample is then
applied to every model, which is what makes the interval of a difference narrow.

Training randomness (docs/PROTOCOL.md "Statistics"): the patient bootstrap measures test
sampling only; models trained with other seeds (or on other hardware) give other deltas.
The intervals of seed-averaged differences (:func:`mean_delta_bootstrap`,
:func:`difference_in_delta_bootstrap`) are therefore *seed-aware*
(:func:`seed_aware_interval`): each side's patient-bootstrap half-width and the
training half-width ``t(0.975, K-1) * sd(per-seed values) / sqrt(K)`` are added in
quadrature. Seeds that agree give the patient bootstrap's interval; seeds that
disagree widen it. With one seed the training part cannot be measured and the
interval is the patient bootstrap's (``n_seeds = 1`` says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from cxrstudy.evaluate.metrics import as_labels, group_accuracy, group_name, worst_group

__all__ = [
    "BOOTSTRAP_COLUMNS",
    "IMAGE_KEY_COLUMNS",
    "check_aligned",
    "wga_bootstrap",
    "paired_delta_bootstrap",
    "mean_delta_bootstrap",
    "difference_in_delta_bootstrap",
    "seed_aware_interval",
]

#: Columns every prediction table must have.
BOOTSTRAP_COLUMNS = ("env", "subject_id", "y_true", "y_pred")
#: Optional per-image key columns; when a table has one, every aligned table must have
#: it with the same values row by row.
IMAGE_KEY_COLUMNS = ("image_id", "path")

#: Upper bound on resamples x subjects held in memory at once (int64 + float64 each).
_BLOCK_CELLS = 4_000_000


# ------------------------------------------------------------------ validation


def _check_columns(df: pd.DataFrame, name: str) -> None:
    missing = [c for c in BOOTSTRAP_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{name} lacks columns {missing}")
    if len(df) == 0:
        raise ValueError(f"{name} is empty")


def check_aligned(frames: Sequence[pd.DataFrame], names: Sequence[str] | None = None) -> None:
    """Raise ``ValueError`` unless all prediction tables describe the same images.

    The contract: rows are matched by position (the pandas index is ignored); every
    table has the same number of rows and, row by row, the same ``env``, ``subject_id``
    (as strings) and ``y_true``. A key column from :data:`IMAGE_KEY_COLUMNS`
    (``image_id``, ``path``) present in any table must be present in all and equal row
    by row. Only ``y_pred`` (and scores) may differ. Sort both tables the same way
    (e.g. by ``image_id``) before calling if they come from different sources.
    """
    if names is None:
        names = [f"table {i}" for i in range(len(frames))]
    for f, n in zip(frames, names):
        _check_columns(f, n)
    if len(frames) < 2:
        return
    ref, ref_name = frames[0], names[0]
    for f, n in zip(frames[1:], names[1:]):
        if len(f) != len(ref):
            raise ValueError(
                f"{n} has {len(f)} rows but {ref_name} has {len(ref)}; "
                "paired tables must hold the same test images"
            )
        cols = ["env", "subject_id"] + [
            c for c in IMAGE_KEY_COLUMNS if c in f.columns or c in ref.columns
        ]
        for c in cols:
            if c not in f.columns or c not in ref.columns:
                raise ValueError(
                    f"key column {c!r} is in one of {ref_name}, {n} but not the other"
                )
            a = ref[c].astype(str).to_numpy()
            b = f[c].astype(str).to_numpy()
            diff = np.flatnonzero(a != b)
            if diff.size:
                i = int(diff[0])
                raise ValueError(
                    f"{n} and {ref_name} differ in column {c!r} at row {i} "
                    f"({b[i]!r} vs {a[i]!r}); paired tables must list the same images "
                    "in the same order"
                )
        ya = as_labels(ref["y_true"].to_numpy())
        yb = as_labels(f["y_true"].to_numpy())
        diff = np.flatnonzero(ya != yb)
        if diff.size:
            raise ValueError(
                f"{n} and {ref_name} differ in column 'y_true' at row {int(diff[0])}"
            )


# ---------------------------------------------------------------------- design


@dataclass(frozen=True)
class _Design:
    """The test set summarised per subject (shared by every aligned model)."""

    envs: np.ndarray  # per row, str
    y: np.ndarray  # per row, 0/1
    row_subject: np.ndarray  # per row, subject code (sorted by env, subject_id)
    row_group: np.ndarray  # per row, group code (sorted by env, y)
    groups: tuple[str, ...]  # group names, e.g. "cxp/y=0"
    env_offsets: np.ndarray  # subjects of hospital h are [offsets[h], offsets[h+1])
    n_subjects: int

    def per_subject(self, weights: np.ndarray) -> np.ndarray:
        """S x G sums of ``weights`` (one per row) by subject and group."""
        g = len(self.groups)
        flat = self.row_subject * g + self.row_group
        out = np.bincount(flat, weights=weights, minlength=self.n_subjects * g)
        return out.reshape(self.n_subjects, g)


def _design(df: pd.DataFrame) -> _Design:
    envs = df["env"].astype(str).to_numpy()
    sids = df["subject_id"].astype(str).to_numpy()
    y = as_labels(df["y_true"].to_numpy())
    keys = pd.DataFrame({"env": envs, "sid": sids, "y": y})
    row_subject = keys.groupby(["env", "sid"], sort=True).ngroup().to_numpy(np.int64)
    row_group = keys.groupby(["env", "y"], sort=True).ngroup().to_numpy(np.int64)
    subj = keys.drop_duplicates(["env", "sid"]).sort_values(["env", "sid"])
    sub_counts = subj.groupby("env", sort=True).size().to_numpy()
    offsets = np.concatenate([[0], np.cumsum(sub_counts)]).astype(np.int64)
    grp = keys.drop_duplicates(["env", "y"]).sort_values(["env", "y"])
    groups = tuple(group_name(e, v) for e, v in zip(grp["env"], grp["y"]))
    return _Design(envs, y, row_subject, row_group, groups, offsets, int(offsets[-1]))


def _predictions(df: pd.DataFrame, name: str) -> np.ndarray:
    return as_labels(df["y_pred"].to_numpy(), f"{name} y_pred")


# ---------------------------------------------------------------- resampling


def _resample_wga(
    design: _Design, correct_rows: Sequence[np.ndarray], n_resamples: int, seed
) -> tuple[np.ndarray, int]:
    """WGA of each model in each resample: array (n_models, n_resamples), and the number
    of resamples in which some group was empty."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")
    rng = np.random.default_rng(seed)
    S, G, M = design.n_subjects, len(design.groups), len(correct_rows)
    # Columns: images per group, then correct per group for each model.
    stacked = np.hstack(
        [design.per_subject(np.ones(len(design.y)))]
        + [design.per_subject(c) for c in correct_rows]
    )
    spans = [(int(lo), int(hi)) for lo, hi in zip(design.env_offsets[:-1], design.env_offsets[1:])]
    block = max(1, min(n_resamples, _BLOCK_CELLS // max(S, 1)))
    wga = np.empty((M, n_resamples), dtype=np.float64)
    n_incomplete = 0
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        idx = np.empty((b, S), dtype=np.int64)
        for r in range(b):
            for lo, hi in spans:
                idx[r, lo:hi] = rng.integers(0, hi - lo, size=hi - lo)
                idx[r, lo:hi] += lo
        idx += (np.arange(b, dtype=np.int64) * S)[:, None]
        times = np.bincount(idx.ravel(), minlength=b * S).reshape(b, S)
        counts = times.astype(np.float64) @ stacked  # b x (G * (1 + M)), exact integers
        n = counts[:, :G]
        present = n > 0
        n_incomplete += int((~present).any(axis=1).sum())
        safe_n = np.where(present, n, 1.0)
        for m in range(M):
            acc = counts[:, G * (m + 1) : G * (m + 2)] / safe_n
            wga[m, start : start + b] = np.where(present, acc, np.inf).min(axis=1)
    wga[np.isinf(wga)] = np.nan  # cannot happen with >= 1 subject per hospital
    return wga, n_incomplete


def _interval(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    if not 0 < alpha < 1:
        raise ValueError("alpha must be between 0 and 1")
    lo, hi = np.nanpercentile(samples, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def seed_aware_interval(per_seed: Sequence[float], samples: np.ndarray, alpha: float = 0.05) -> dict:
    """The interval of a seed-averaged estimate that covers training randomness and test sampling.

    ``per_seed``: the estimate of each training seed (K values); ``samples``: the patient-bootstrap
    resamples of their mean (each resample applied to every seed's models). The estimate is the
    mean of ``per_seed``. Each side's half-width is ``sqrt(h_patients**2 + h_seeds**2)``, with
    ``h_patients`` the distance from the estimate to that side's percentile bound and
    ``h_seeds = t(1 - alpha/2, K-1) * sd(per_seed, ddof=1) / sqrt(K)`` (0 for K = 1).

    Returns ``estimate``, ``low``, ``high``, ``patient_low``, ``patient_high`` (the patient
    bootstrap's percentile interval), ``seed_sd``, ``seed_halfwidth`` and ``n_seeds``.
    """
    from scipy.stats import t as student_t

    v = np.asarray(per_seed, dtype=float)
    if v.size == 0:
        raise ValueError("no per-seed values given")
    estimate = float(v.mean())
    p_low, p_high = _interval(np.asarray(samples, dtype=float), alpha)
    k = int(v.size)
    sd = float(v.std(ddof=1)) if k > 1 else 0.0
    h_seed = float(student_t.ppf(1 - alpha / 2, k - 1) * sd / np.sqrt(k)) if k > 1 else 0.0
    h_low, h_high = max(estimate - p_low, 0.0), max(p_high - estimate, 0.0)
    return {"estimate": estimate, "low": estimate - float(np.hypot(h_low, h_seed)),
            "high": estimate + float(np.hypot(h_high, h_seed)), "patient_low": p_low, "patient_high": p_high,
            "seed_sd": sd, "seed_halfwidth": h_seed, "n_seeds": k}


def _point(design: _Design, y_pred: np.ndarray, expected_envs) -> tuple[float, str]:
    groups = group_accuracy(design.envs, design.y, y_pred, expected_envs=expected_envs)
    return worst_group(groups)


def _correct(design: _Design, y_pred: np.ndarray) -> np.ndarray:
    return (y_pred == design.y).astype(np.float64)


# ------------------------------------------------------------------------ API


def wga_bootstrap(
    df: pd.DataFrame,
    n_resamples: int = 1000,
    seed=0,
    alpha: float = 0.05,
    *,
    expected_envs: Iterable[str] | None = None,
) -> dict:
    """Percentile CI of one model's WGA under patient-level, hospital-stratified resampling.

    ``df``: columns ``env, subject_id, y_true, y_pred``, one row per image. ``seed``: an
    int (or anything ``numpy.random.default_rng`` accepts). ``expected_envs``: as in
    :func:`cxrstudy.evaluate.metrics.group_accuracy`, makes a hospital without positives or
    negatives an error.

    Returns ``estimate`` (WGA on the data), ``group`` (its worst group), ``low``,
    ``high`` (the ``alpha/2`` and ``1-alpha/2`` percentiles), ``samples`` (the
    ``n_resamples`` WGAs), ``n_resamples``, ``n_subjects`` and ``n_incomplete``.
    """
    check_aligned([df], ["df"])
    design = _design(df)
    y_pred = _predictions(df, "df")
    estimate, group = _point(design, y_pred, expected_envs)
    wga, n_incomplete = _resample_wga(design, [_correct(design, y_pred)], n_resamples, seed)
    low, high = _interval(wga[0], alpha)
    return {
        "estimate": estimate,
        "group": group,
        "low": low,
        "high": high,
        "samples": wga[0],
        "n_resamples": int(n_resamples),
        "n_subjects": design.n_subjects,
        "n_incomplete": n_incomplete,
    }


def mean_delta_bootstrap(
    pairs: Sequence[tuple[pd.DataFrame, pd.DataFrame]],
    n_resamples: int = 1000,
    seed=0,
    alpha: float = 0.05,
    *,
    expected_envs: Iterable[str] | None = None,
) -> dict:
    """Seed-aware CI of the seed-averaged WGA difference ``mean_k [WGA(b_k) - WGA(a_k)]``.

    ``pairs`` holds one ``(df_a, df_b)`` per training seed, e.g. (model trained on A
    alone, model trained on A and B). All tables must describe the same test images
    (:func:`check_aligned`); each subject resample is applied to every table (test-set
    sampling of the seed-averaged delta), and :func:`seed_aware_interval` widens that
    interval by the spread of the per-seed deltas (training randomness). The protocol's
    "hurt" criterion is mean delta < 0.

    Returns ``estimate`` (mean delta on the data), ``low``, ``high`` (seed-aware),
    ``patient_low``, ``patient_high`` (test sampling alone), ``seed_sd``,
    ``seed_halfwidth``, ``n_seeds``, ``samples`` (mean delta per resample), ``per_seed``
    (list of point deltas), ``wga_a`` and ``wga_b`` (lists of point WGAs per seed),
    ``group_a`` and ``group_b`` (lists of worst groups per seed), ``n_resamples``,
    ``n_subjects``, ``n_incomplete``.
    """
    if len(pairs) == 0:
        raise ValueError("no (df_a, df_b) pairs given")
    frames, names = [], []
    for k, pair in enumerate(pairs):
        if len(pair) != 2:
            raise ValueError(f"pair {k} is not a (df_a, df_b) tuple")
        frames += [pair[0], pair[1]]
        names += (
            ["df_a", "df_b"] if len(pairs) == 1 else [f"pair {k} df_a", f"pair {k} df_b"]
        )
    check_aligned(frames, names)
    design = _design(frames[0])
    preds = [_predictions(f, n) for f, n in zip(frames, names)]
    points = [_point(design, p, expected_envs) for p in preds]
    wga_a = [w for w, _ in points[0::2]]
    wga_b = [w for w, _ in points[1::2]]
    per_seed = [b - a for a, b in zip(wga_a, wga_b)]
    correct = [_correct(design, p) for p in preds]
    wga, n_incomplete = _resample_wga(design, correct, n_resamples, seed)
    samples = (wga[1::2] - wga[0::2]).mean(axis=0)
    return {
        **seed_aware_interval(per_seed, samples, alpha),
        "samples": samples,
        "per_seed": per_seed,
        "wga_a": wga_a,
        "wga_b": wga_b,
        "group_a": [g for _, g in points[0::2]],
        "group_b": [g for _, g in points[1::2]],
        "n_resamples": int(n_resamples),
        "n_subjects": design.n_subjects,
        "n_incomplete": n_incomplete,
    }


def paired_delta_bootstrap(
    df_a: pd.DataFrame,
    df_b: pd.DataFrame,
    n_resamples: int = 1000,
    seed=0,
    alpha: float = 0.05,
    *,
    expected_envs: Iterable[str] | None = None,
) -> dict:
    """CI of ``WGA(b) - WGA(a)`` for two models evaluated on the same test images (one
    training seed: the patient bootstrap's percentile interval).

    ``df_a`` and ``df_b`` must satisfy :func:`check_aligned` (same images, same row
    order). Each resample draws subjects once and evaluates both models on it.

    Returns ``estimate`` (the delta on the data), ``low``, ``high``, ``samples`` (delta
    per resample), ``wga_a``, ``wga_b``, ``group_a``, ``group_b`` (point WGAs and worst
    groups), ``n_resamples``, ``n_subjects``, ``n_incomplete``. Identical predictions
    give a delta of exactly 0 in every resample.
    """
    res = mean_delta_bootstrap(
        [(df_a, df_b)], n_resamples, seed, alpha, expected_envs=expected_envs
    )
    return {
        "estimate": res["per_seed"][0],
        "low": res["low"],
        "high": res["high"],
        "samples": res["samples"],
        "wga_a": res["wga_a"][0],
        "wga_b": res["wga_b"][0],
        "group_a": res["group_a"][0],
        "group_b": res["group_b"][0],
        "n_resamples": res["n_resamples"],
        "n_subjects": res["n_subjects"],
        "n_incomplete": res["n_incomplete"],
    }


def difference_in_delta_bootstrap(
    quads: Sequence[tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]],
    n_resamples: int = 1000,
    seed=0,
    alpha: float = 0.05,
    *,
    expected_envs: Iterable[str] | None = None,
) -> dict:
    """CI of ``mean_k [(WGA(b_k) - WGA(a_k)) - (WGA(d_k) - WGA(c_k))]``: how much of a delta one
    condition adds over a reference (e.g. the shortcut-attributable change delta(s) - delta(0)).

    ``quads`` holds one ``(a, b, c, d)`` per seed: (single, pair) under the condition, then
    (single, pair) under the reference. All tables must describe the same test subjects, labels and
    rows (the synthetic hospitals at two shortcut strengths do: only the pixels differ); each
    subject resample is applied to all of them, so the interval is paired; like
    :func:`mean_delta_bootstrap`'s it is seed-aware (:func:`seed_aware_interval`).
    """
    if len(quads) == 0:
        raise ValueError("no (a, b, c, d) tables given")
    frames = [f for q in quads for f in q]
    names = [f"seed {k} {n}" for k in range(len(quads)) for n in ("a", "b", "c", "d")]
    check_aligned(frames, names)
    design = _design(frames[0])
    preds = [_predictions(f, n) for f, n in zip(frames, names)]
    points = np.array([_point(design, p, expected_envs)[0] for p in preds]).reshape(len(quads), 4)
    per_seed = (points[:, 1] - points[:, 0]) - (points[:, 3] - points[:, 2])
    wga, n_incomplete = _resample_wga(design, [_correct(design, p) for p in preds], n_resamples, seed)
    w = wga.reshape(len(quads), 4, -1)
    samples = ((w[:, 1] - w[:, 0]) - (w[:, 3] - w[:, 2])).mean(axis=0)
    return {**seed_aware_interval(per_seed, samples, alpha), "per_seed": per_seed.tolist(),
            "n_resamples": int(n_resamples), "n_subjects": design.n_subjects, "n_incomplete": n_incomplete}
