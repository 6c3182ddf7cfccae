"""Figures of the analysis (matplotlib, Agg backend), faceted by label so the full
108-setting grid (12 ordered hospital pairs x 9 labels) stays readable.

- ``wga_bars``: Figure-2 style grouped bars, per setting WGA of the single-hospital model, the
  two-hospital model and (when present) the balanced two-hospital model(s); hurt settings
  (mean delta < 0) carry a red triangle, filled when the whole 95% CI is below 0.
- ``delta_heatmap_<balance>``: base x added grid of the mean WGA change per label, diverging
  colormap centred at 0 (red = adding the hospital lowered WGA), each cell annotated with the
  delta and ``*`` when its 95% CI excludes 0.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.colors import TwoSlopeNorm  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from cxrstudy.hospitals import HOSPITALS  # noqa: E402
from cxrstudy.labels import LABELS  # noqa: E402
from cxrstudy.train.balancing import (BALANCE_HOSPITAL_LABEL, BALANCE_MODES, BALANCE_NONE, BALANCE_SIZE_MATCHED,
                                      BALANCE_TITLES)

from .queries import known_order  # noqa: E402

BAR_COLORS = {"single": "#9e9e9e", BALANCE_NONE: "#d95f02", BALANCE_HOSPITAL_LABEL: "#1b9e77",
              BALANCE_SIZE_MATCHED: "#7570b3"}
BAR_NAMES = {"single": "base hospital only", BALANCE_NONE: "base + added",
             BALANCE_HOSPITAL_LABEL: "base + added, hospital-label balanced",
             BALANCE_SIZE_MATCHED: "base + added, size-matched"}
HURT_COLOR = "#b2182b"
DPI = 110


def _grid(n: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max_cols, max(n, 1))
    return math.ceil(max(n, 1) / cols), cols


def _panels(nrows: int, ncols: int, panel_w: float, panel_h: float, *, left: float, right: float, top: float,
            bottom: float, wgap: float, hgap: float, min_width: float = 0.0, **kw):
    """A grid of panels laid out in inches (no tight_layout: it is slow and shifts with the text);
    at least ``min_width`` wide (the extra goes to both sides)."""
    body = ncols * panel_w + (ncols - 1) * wgap
    extra = max(0.0, min_width - (left + right + body)) / 2
    left, right = left + extra, right + extra
    w = left + right + body
    h = top + bottom + nrows * panel_h + (nrows - 1) * hgap
    fig, axes = plt.subplots(nrows, ncols, figsize=(w, h), squeeze=False, **kw)
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                        wspace=wgap / panel_w, hspace=hgap / panel_h)
    return fig, axes


def _suptitle(fig, text: str, synthetic: bool) -> None:
    h = fig.get_figheight()
    fig.suptitle(text, fontsize=13, y=1 - 0.12 / h, va="top")
    if synthetic:
        n_lines = text.count("\n") + 1
        fig.text(0.5, 1 - (0.2 + 0.26 * n_lines) / h, "SYNTHETIC DATA: procedurally rendered hospitals, not patients",
                 ha="center", va="top", fontsize=11, color=HURT_COLOR, fontweight="bold")


def _title_height(text: str, synthetic: bool) -> float:
    return 0.35 + 0.26 * (text.count("\n") + 1) + (0.3 if synthetic else 0.0)


def _title_width(text: str) -> float:
    """Inches the 13-pt title needs (plus a margin)."""
    return 0.1 * max(len(line) for line in text.split("\n")) + 0.6


def wga_bars(settings: pd.DataFrame, path: Path, *, title: str = "", synthetic: bool = False) -> Path:
    """Grouped bars per setting, one panel per label."""
    labels = known_order(settings["label"], LABELS)
    series = ["single"] + known_order(settings["balance"], BALANCE_MODES)
    b_rank = {h: i for i, h in enumerate(known_order(settings["base"], HOSPITALS))}
    a_rank = {h: i for i, h in enumerate(known_order(settings["added"], HOSPITALS))}
    rows = {(r.label, r.base, r.added, r.balance): r for r in settings.itertuples()}
    pairs_of = {lab: sorted({(b, a) for (lb, b, a, _) in rows if lb == lab}, key=lambda p: (b_rank[p[0]], a_rank[p[1]]))
                for lab in labels}
    max_pairs = max(len(p) for p in pairs_of.values())

    nrows, ncols = _grid(len(labels))
    group_w = 0.8
    bar_w = group_w / len(series)
    panel_w = max(3.2, min(6.6, (0.1 * len(series) + 0.2) * max_pairs + 0.3))
    title = title or "Worst-group accuracy per setting (test splits of both hospitals)"
    fig, axes = _panels(nrows, ncols, panel_w, 2.3, left=0.75, right=0.2, top=_title_height(title, synthetic) + 0.1,
                        bottom=0.95, wgap=0.3, hgap=0.95, min_width=max(_title_width(title), 8.0), sharey=True)
    for ax in axes.flat[len(labels):]:
        ax.set_visible(False)
    for ax, lab in zip(axes.flat, labels):
        pairs = pairs_of[lab]
        x = np.arange(len(pairs))
        rects, colors = [], []  # one PolyCollection per panel: much faster than hundreds of Rectangles
        for j, ser in enumerate(series):
            vals, hurt, sig = [], [], []
            for base, added in pairs:
                if ser == "single":
                    r = rows.get((lab, base, added, BALANCE_NONE)) or next(
                        (rows[k] for k in rows if k[:3] == (lab, base, added)), None)
                    vals.append(float(r.wga_single) if r is not None else np.nan)
                    hurt.append(False)
                    sig.append(False)
                else:
                    r = rows.get((lab, base, added, ser))
                    vals.append(float(r.wga_pair) if r is not None else np.nan)
                    hurt.append(r is not None and bool(r.delta_mean < 0))
                    sig.append(r is not None and bool(r.delta_ci_high < 0))
            xs = x - group_w / 2 + bar_w * (j + 0.5)
            vals = np.asarray(vals, dtype=float)
            half = bar_w * 0.46
            rects.extend([[(xi - half, 0), (xi - half, v), (xi + half, v), (xi + half, 0)]
                          for xi, v in zip(xs, vals) if not np.isnan(v)])
            colors.extend([BAR_COLORS.get(ser, "#666666")] * int((~np.isnan(vals)).sum()))
            hx = [(xi, min(v + 0.05, 1.08), s) for xi, v, h, s in zip(xs, vals, hurt, sig) if h and not np.isnan(v)]
            for filled in (False, True):
                pts = [(xi, y) for xi, y, s in hx if s == filled]
                if pts:
                    ax.plot(*zip(*pts), linestyle="", marker="v", markersize=5, color=HURT_COLOR,
                            markerfacecolor=HURT_COLOR if filled else "white", markeredgewidth=1.0, clip_on=False)
        ax.add_collection(PolyCollection(rects, facecolors=colors, edgecolors="none"))
        ax.set_xticks(x)
        ax.set_xticklabels([f"{b}\n+{a}" for b, a in pairs], fontsize=8)
        ax.set_xlim(-0.55, len(pairs) - 0.45)
        ax.set_ylim(0, 1.1)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.tick_params(axis="y", labelsize=8)
        ax.grid(axis="y", color="#dddddd", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.set_title(lab, fontsize=11, fontweight="bold")
        for sp in ("top", "right"):
            ax.spines[sp].set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("worst-group accuracy", fontsize=9)
    handles = [Patch(color=BAR_COLORS.get(s, "#666666"), label=BAR_NAMES.get(s, s)) for s in series]
    handles += [Line2D([], [], marker="v", linestyle="", color=HURT_COLOR, markerfacecolor="white",
                       label="hurt: mean delta < 0"),
                Line2D([], [], marker="v", linestyle="", color=HURT_COLOR, markerfacecolor=HURT_COLOR,
                       label="hurt: whole 95% CI < 0")]
    _suptitle(fig, title, synthetic)
    ncol = min(len(handles), 3 if fig.get_figwidth() < 9 else 6)
    fig.legend(handles=handles, loc="lower center", ncol=ncol, fontsize=9, frameon=False,
               bbox_to_anchor=(0.5, 0.02 / fig.get_figheight()))
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def delta_heatmap(settings: pd.DataFrame, path: Path, *, balance: str = BALANCE_NONE, title: str = "",
                  synthetic: bool = False) -> Path:
    """Base (rows) x added (columns) grid of the mean WGA change, one panel per label (in
    percentage points)."""
    sub = settings[settings["balance"] == balance]
    labels = known_order(sub["label"], LABELS)
    hosps = known_order(list(sub["base"]) + list(sub["added"]), HOSPITALS)
    k = len(hosps)
    d = 100 * sub["delta_mean"].astype(float).abs()
    vmax = max(float(np.nanmax(d)) if d.notna().any() else 0.0, 1.0)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-vmax, vmax=vmax)
    cmap = plt.get_cmap("RdBu").with_extremes(bad="#f0f0f0")

    nrows, ncols = _grid(len(labels))
    panel = max(1.7, 0.68 * k)
    title = title or (f"Mean WGA change from adding a hospital ({BALANCE_TITLES.get(balance, balance)})"
                      "\nred: the added hospital lowered WGA; * and bold: 95% CI excludes 0")
    fig, axes = _panels(nrows, ncols, panel, panel, left=0.85, right=1.45, top=_title_height(title, synthetic) + 0.1,
                        bottom=0.55, wgap=0.7, hgap=0.6, min_width=_title_width(title))
    for ax in axes.flat[len(labels):]:
        ax.set_visible(False)
    im = None
    for ax, lab in zip(axes.flat, labels):
        grid = np.full((k, k), np.nan)
        mark = np.zeros((k, k), dtype=bool)
        for r in sub[sub["label"] == lab].itertuples():
            i, j = hosps.index(r.base), hosps.index(r.added)
            grid[i, j] = 100 * r.delta_mean
            mark[i, j] = bool(r.delta_ci_high < 0 or r.delta_ci_low > 0)
        im = ax.imshow(np.ma.masked_invalid(grid), cmap=cmap, norm=norm)
        for i in range(k):
            for j in range(k):
                v = grid[i, j]
                if np.isnan(v):
                    if i != j:  # the diagonal (a hospital added to itself) stays a plain grey cell
                        ax.text(j, i, "n/a", ha="center", va="center", fontsize=8, color="#aaaaaa")
                    continue
                txt = f"{v:+.1f}".replace("-", "\u2212") + ("*" if mark[i, j] else "")
                ax.text(j, i, txt, ha="center", va="center", fontsize=8.5,
                        color="white" if abs(v) > 0.6 * vmax else "black",
                        fontweight="bold" if mark[i, j] else "normal")
        ax.set_xticks(range(k))
        ax.set_xticklabels(hosps, fontsize=8.5)
        ax.set_yticks(range(k))
        ax.set_yticklabels(hosps, fontsize=8.5)
        edges = np.arange(0.5, k - 0.5)
        ax.vlines(edges, -0.5, k - 0.5, colors="white", linewidth=1.5)
        ax.hlines(edges, -0.5, k - 0.5, colors="white", linewidth=1.5)
        ax.tick_params(length=0)
        for sp in ax.spines.values():
            sp.set_visible(False)
        ax.set_title(lab, fontsize=11, fontweight="bold", pad=4)
    for ax in axes[:, 0]:
        ax.set_ylabel("base hospital", fontsize=9)
    for i, ax in enumerate(axes.flat):  # x label on the lowest visible panel of each column
        if ax.get_visible() and i + ncols >= len(labels):
            ax.set_xlabel("added hospital", fontsize=9)
    _suptitle(fig, title, synthetic)
    w, h = fig.get_figwidth(), fig.get_figheight()
    body_top = 1 - (_title_height(title, synthetic) + 0.1) / h
    body_bottom = 0.55 / h
    right_edge = fig.subplotpars.right * w  # inches
    cax = fig.add_axes([(right_edge + 0.4) / w, body_bottom + 0.1 * (body_top - body_bottom), 0.16 / w,
                        0.8 * (body_top - body_bottom)])
    cb = fig.colorbar(im, cax=cax)
    cb.set_label("mean WGA change (pct. points)" if h > 4 else "WGA change (pp)", fontsize=9)
    cb.ax.tick_params(labelsize=8)
    path = Path(path)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def make_figures(settings: pd.DataFrame, out_dir: Path) -> dict[str, Path]:
    """All figures of ``settings`` into ``out_dir``; returns {name: path}. One set per data source
    (file names get ``_<source>`` when there are several)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figs: dict[str, Path] = {}
    if settings is None or settings.empty:
        return figs
    sources = known_order(settings["source"], ("real", "synthetic")) if "source" in settings else [None]
    for src in sources:
        sub = settings if src is None else settings[settings["source"] == src]
        suffix = f"_{src}" if len(sources) > 1 else ""
        synthetic = bool(sub["synthetic"].any()) if "synthetic" in sub else src == "synthetic"
        what = f" [{src}]" if len(sources) > 1 else ""
        figs[f"wga_bars{suffix}"] = wga_bars(
            sub, out_dir / f"wga_bars{suffix}.png", synthetic=synthetic,
            title=f"Worst-group accuracy per setting{what} (test splits of both hospitals)")
        for bal in known_order(sub["balance"], BALANCE_MODES):
            name = f"delta_heatmap_{bal}{suffix}"
            figs[name] = delta_heatmap(
                sub, out_dir / f"{name}.png", balance=bal, synthetic=synthetic,
                title=f"Mean WGA change from adding a hospital{what} ({BALANCE_TITLES.get(bal, bal)})"
                      "\nred: the added hospital lowered WGA; * and bold: 95% CI excludes 0")
    return figs
