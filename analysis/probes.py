"""The hospital-identifiability probes of a study: query, summary table, figure, report section.

Probe runs (``mlflow run . -e probe`` or ``main -P probe=true``) log ``probe/<a>_vs_<b>/label<v>/acc``
and friends; :func:`analysis.queries.probe_runs` reads them back.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.hospitals import HOSPITALS
from cxrstudy.tracking import keys

PAIR_METRIC = re.compile(r"^probe/([a-z]+)_vs_([a-z]+)/label([01])/acc$")
#: the paper: mean probe accuracy >= 0.93 for every pair of hospitals
PAPER_MIN_PAIR_ACC = 0.93
SUMMARY_COLUMNS = ["model", "train_envs", "label", "balance", "seed", "probe_envs", "pairs_mean_label0",
                   "pairs_min_label0", "all_label0", "pairs_mean_label1", "control_mean", "label_probe_mean",
                   "run_id"]


def pair_accuracies(runs: pd.DataFrame) -> pd.DataFrame:
    """Long table: ``model, train_envs, pair, label_value, accuracy`` for every pair probe."""
    rows = []
    for r in runs.itertuples():
        for k, v in r.metrics.items():
            m = PAIR_METRIC.match(k)
            if m:
                rows.append({"model": r.model, "train_envs": r.train_envs, "pair": f"{m[1]} vs {m[2]}",
                             "label_value": int(m[3]), "accuracy": float(v)})
    return pd.DataFrame(rows, columns=["model", "train_envs", "pair", "label_value", "accuracy"])


def probe_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per probed model (``SUMMARY_COLUMNS``)."""
    rows = []
    for r in runs.itertuples():
        m = r.metrics

        def mean_of(prefix):
            vals = [v for k, v in m.items() if k.startswith(prefix)]
            return float(np.mean(vals)) if vals else np.nan

        rows.append({"model": r.model, "train_envs": r.train_envs, "label": r.label, "balance": r.balance,
                     "seed": r.seed, "probe_envs": r.probe_envs,
                     "pairs_mean_label0": m.get("probe/pairs_mean/label0/acc", np.nan),
                     "pairs_min_label0": m.get("probe/pairs_min/label0/acc", np.nan),
                     "all_label0": m.get("probe/all/label0/acc", np.nan),
                     "pairs_mean_label1": m.get("probe/pairs_mean/label1/acc", np.nan),
                     "control_mean": mean_of("probe/control/"), "label_probe_mean": mean_of("probe/label/"),
                     "run_id": r.run_id})
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def probe_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """Study-level numbers for the analysis run."""
    out = {"analysis/probe/n_models": float(len(summary))}
    for col in ("pairs_mean_label0", "pairs_min_label0", "control_mean"):
        vals = summary[col].dropna()
        if len(vals):
            out[f"analysis/probe/{col}"] = float(vals.mean() if col != "pairs_min_label0" else vals.min())
    return out


def probe_figure(runs: pd.DataFrame, path: Path, *, synthetic: bool = False) -> Path | None:
    """Probe accuracy per hospital pair (every model a dot, the mean a bar), label 0 and 1, with the
    random-halves control, chance (0.5) and the paper's 0.93."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = pair_accuracies(runs)
    ctrl = [(k.split("/")[2], v) for r in runs.itertuples() for k, v in r.metrics.items()
            if k.startswith("probe/control/")]
    if pairs.empty and not ctrl:
        return None
    order = sorted(pairs["pair"].unique(), key=lambda p: [HOSPITALS.index(h) for h in p.split(" vs ")])
    cats = order + (["control (random halves)"] if ctrl else [])
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cats) + 2), 4.0), dpi=120)
    x = np.arange(len(cats))
    rng = np.random.default_rng(0)
    for j, (lv, color) in enumerate(((0, "tab:blue"), (1, "tab:orange"))):
        sub = pairs[pairs["label_value"] == lv]
        means = [sub.loc[sub["pair"] == p, "accuracy"].mean() if (sub["pair"] == p).any() else np.nan for p in order]
        ax.bar(x[:len(order)] + (j - 0.5) * 0.38, means, width=0.36, color=color, alpha=0.35,
               label=f"hospital probe, label = {lv} (mean)")
        for i, p in enumerate(order):
            v = sub.loc[sub["pair"] == p, "accuracy"].to_numpy()
            ax.scatter(np.full(len(v), i + (j - 0.5) * 0.38) + rng.uniform(-0.08, 0.08, len(v)), v, s=12,
                       color=color, zorder=3)
    if ctrl:
        v = np.array([a for _, a in ctrl])
        ax.bar(x[-1], v.mean(), width=0.36, color="grey", alpha=0.35, label="control (mean)")
        ax.scatter(np.full(len(v), x[-1]) + rng.uniform(-0.08, 0.08, len(v)), v, s=12, color="grey", zorder=3)
    ax.axhline(0.5, color="k", linestyle=":", linewidth=1, label="chance (pairs)")
    ax.axhline(PAPER_MIN_PAIR_ACC, color="tab:red", linestyle="--", linewidth=1, label="paper: >= 0.93")
    ax.set_xticks(x, cats, rotation=20, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("probe accuracy (held-out 20%)")
    ax.set_title(f"Can the embedding tell the hospitals apart? ({len(runs)} model(s))"
                 + ("  [SYNTHETIC DATA]" if synthetic else ""), fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def report_section(summary: pd.DataFrame, figure_rel: str | None) -> list[str]:
    """Markdown lines for report.md."""
    from .report import md_table

    lines = ["## Hospital identifiability probe", ""]
    n = len(summary)
    pm = summary["pairs_mean_label0"].dropna()
    text = (f"{n} model(s) probed. A linear probe on the embedding (StandardScaler + LinearSVC, classes "
            f"undersampled to the smallest, 80/20 split, mean of 5 splits) tells two hospitals apart from "
            f"test images of the same label value; chance is 0.5 for a pair.")
    if len(pm):
        text += (f" Mean pair accuracy at label 0: {pm.mean():.3f} (lowest pair of any model: "
                 f"{summary['pairs_min_label0'].min():.3f}); the random-halves control: "
                 f"{summary['control_mean'].mean():.3f}. The paper found >= {PAPER_MIN_PAIR_ACC} for every pair.")
    lines += [text, ""]
    if figure_rel:
        lines += [f"![probe_accuracy]({figure_rel})", "",
                  "*probe_accuracy*: each dot one model's probe accuracy for a hospital pair (label 0 blue, "
                  "label 1 orange); bars are means; dotted line chance, dashed line the paper's 0.93.", ""]
    t = summary.drop(columns=["run_id"]).rename(columns={
        "pairs_mean_label0": "pairs mean (y=0)", "pairs_min_label0": "pairs min (y=0)", "all_label0": "all (y=0)",
        "pairs_mean_label1": "pairs mean (y=1)", "control_mean": "control", "label_probe_mean": "label probe"})
    lines += [md_table(t), "", "`probe_summary.csv` next to this report holds the numbers.", ""]
    return lines


def probe_accuracy_by_strength(runs: pd.DataFrame) -> dict[float, float]:
    """The mean pair-probe accuracy at label 0 of the models trained at each shortcut strength."""
    if runs.empty or "shortcut_strength" not in runs:
        return {}
    out = {}
    for s, g in runs.dropna(subset=["shortcut_strength"]).groupby("shortcut_strength"):
        accs = [v for m in g["metrics"] for k, v in m.items() if PAIR_METRIC.match(k) and k.endswith("label0/acc")]
        if accs:
            out[float(s)] = float(np.mean(accs))
    return out
