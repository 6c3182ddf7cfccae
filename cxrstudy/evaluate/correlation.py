"""Correlation-strength test sets (docs/PROTOCOL.md): how much does a two-hospital model lean on the hospital?

From the test splits of the two hospitals A and B, each (hospital, label) cell is undersampled to
the smallest cell, ``n`` images. For a strength ``r`` in 0.0, 0.1, ..., 1.0 the test set takes
``k = round(n (1 + r) / 2)`` positives and ``n - k`` negatives from the *positive* hospital (the
one with the higher test prevalence), and ``n - k`` positives and ``k`` negatives from the other.
Every set has ``2n`` images, half of them positive, ``n`` per hospital, and the Pearson (phi)
correlation between "is the positive hospital" and the label is ``(2k - n) / n``: exactly ``r``
when ``n (1 + r) / 2`` is a whole number. At r = 0 the hospital says nothing about the label; at
r = 1 it gives it away. The cells are permuted once per draw and each set takes their first
images, so the sets of one draw are nested and differ only by the images the correlation moves.

A model that ignores the hospital has the same WGA at every r (up to sampling noise); a model
that uses it looks better on the r = 1 set, whose groups agree with the shortcut.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.evaluate.metrics import evaluate_predictions
from cxrstudy.train.groups import group_name

R_VALUES = tuple(round(0.1 * i, 1) for i in range(11))


def positive_hospital(frame: pd.DataFrame, envs: tuple[str, str]) -> str:
    """The hospital of the two with the higher prevalence in ``frame`` (the first on a tie)."""
    prev = {e: float(frame.loc[frame["env"] == e, "y_true"].mean()) for e in envs}
    return max(envs, key=lambda e: (prev[e], -envs.index(e)))


def balanced_cells(frame: pd.DataFrame, envs: tuple[str, str], seed: int = 0) -> tuple[dict, int]:
    """Row positions of each (hospital, label) cell, permuted and cut to the smallest cell's size."""
    rng = np.random.default_rng(seed)
    env = frame["env"].to_numpy()
    y = frame["y_true"].to_numpy()
    cells = {(e, v): np.flatnonzero((env == e) & (y == v)) for e in envs for v in (0, 1)}
    n = min(len(c) for c in cells.values())
    if n == 0:
        empty = [group_name(e, v) for (e, v), c in cells.items() if len(c) == 0]
        raise ValueError(f"correlation sets need every (hospital, label) cell; empty: {', '.join(empty)}")
    return {k: rng.permutation(c)[:n] for k, c in cells.items()}, n


def correlation_set(cells: dict, n: int, pos_env: str, neg_env: str, r: float) -> np.ndarray:
    """Row positions of the strength-``r`` test set (see the module docstring)."""
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"correlation strength r={r} outside [0, 1]")
    k = int(round(n * (1 + r) / 2))
    parts = [cells[pos_env, 1][:k], cells[pos_env, 0][:n - k], cells[neg_env, 1][:n - k], cells[neg_env, 0][:k]]
    return np.sort(np.concatenate(parts))


def hospital_label_correlation(frame: pd.DataFrame, pos_env: str) -> float:
    """Pearson (phi) correlation between ``env == pos_env`` and the label."""
    h = (frame["env"].to_numpy() == pos_env).astype(float)
    y = frame["y_true"].to_numpy().astype(float)
    if h.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(h, y)[0, 1])


def correlation_sweep(predictions: pd.DataFrame, envs: tuple[str, str], threshold: float, *,
                      r_values=R_VALUES, draws: int = 5, seed: int = 0, pos_env: str | None = None) -> pd.DataFrame:
    """WGA and AUROC of fixed predictions on the correlation-strength sets, averaged over ``draws``.

    ``predictions``: columns ``env, y_true, y_score`` (as ``evaluate`` writes them). Returns one
    row per r: ``r, n_images, n_per_cell, correlation, wga, wga_std, auroc, auroc_std, pos_env``.
    WGA is over the groups present (at r = 1 the positive hospital has no negatives).
    """
    envs = tuple(envs)
    if len(envs) != 2:
        raise ValueError(f"the correlation sweep needs exactly two hospitals, got {list(envs)}")
    frame = predictions[predictions["env"].isin(envs)].reset_index(drop=True)
    pos_env = pos_env or positive_hospital(frame, envs)
    neg_env = envs[1] if pos_env == envs[0] else envs[0]
    per_r: dict[float, list] = {r: [] for r in r_values}
    n = 0
    for d in range(draws):
        cells, n = balanced_cells(frame, envs, seed=seed + d)
        for r in r_values:
            sub = frame.iloc[correlation_set(cells, n, pos_env, neg_env, r)]
            m = evaluate_predictions(sub, threshold=threshold)
            per_r[r].append((m["wga"], m["auroc"], hospital_label_correlation(sub, pos_env), len(sub)))
    rows = []
    for r, vals in per_r.items():
        a = np.array(vals, dtype=float)
        rows.append({"r": r, "n_images": int(a[0, 3]), "n_per_cell": n, "correlation": float(a[:, 2].mean()),
                     "wga": float(a[:, 0].mean()), "wga_std": float(a[:, 0].std()),
                     "auroc": float(a[:, 1].mean()), "auroc_std": float(a[:, 1].std()), "pos_env": pos_env})
    return pd.DataFrame(rows)


def sweep_metrics(sweep: pd.DataFrame) -> dict[str, float]:
    """``corr/<r>/wga``, ``corr/<r>/auroc``, ``corr/<r>/correlation`` and the WGA drop from r=0 to r=1."""
    out = {}
    for row in sweep.itertuples():
        for k in ("wga", "auroc", "correlation"):
            v = getattr(row, k)
            if np.isfinite(v):
                out[f"corr/{row.r:.1f}/{k}"] = float(v)
    if {0.0, 1.0} <= set(sweep["r"]):
        out["corr/wga_gain_r1_minus_r0"] = float(sweep.loc[sweep["r"] == 1.0, "wga"].iloc[0]
                                                 - sweep.loc[sweep["r"] == 0.0, "wga"].iloc[0])
    return out


def plot_sweep(sweep: pd.DataFrame, path: Path, *, title: str = "", synthetic: bool = False) -> Path:
    """WGA and AUROC against the hospital-label correlation strength, with +-1 s.d. over draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=120)
    r = sweep["r"].to_numpy()
    for col, color in (("wga", "tab:red"), ("auroc", "tab:blue")):
        m, s = sweep[col].to_numpy(), sweep[f"{col}_std"].to_numpy()
        ax.plot(r, m, marker="o", color=color, label=col.upper())
        ax.fill_between(r, m - s, m + s, color=color, alpha=0.15, linewidth=0)
    ax.set_xlabel(f"hospital-label correlation strength r (positives at {sweep['pos_env'].iloc[0]})")
    ax.set_ylabel("metric on the strength-r test set")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    n = int(sweep["n_per_cell"].iloc[0])
    ax.set_title((title + "\n" if title else "") + f"{n} images per (hospital, label) cell"
                 + ("  [SYNTHETIC DATA]" if synthetic else ""), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
