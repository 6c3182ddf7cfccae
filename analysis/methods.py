"""Which training method prevents the harm? Per method (and balance mode): the hurt fraction,
significant hurt and help, the mean change in WGA with a 95% CI, and a head-to-head table:
in each setting, does the method's two-hospital model beat ERM's single-hospital model?

ERM's numbers are the study's headline and keep their metric names (``analysis/...``); every
other method's go under ``analysis/<method>/...`` (``analysis/<method>/balanced/...`` for
hospital-label balancing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.tracking import keys
from cxrstudy.train.balancing import BALANCE_TITLES
from cxrstudy.train.methods import method_names, method_suffix

from .queries import known_order
from .summary import balance_suffix, headline

METHOD_COLUMNS = ["method", "balance", "n_settings", "n_hurt", "hurt_fraction", "n_hurt_significant",
                  "n_helped_significant", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high"]
H2H_COLUMNS = ["base", "added", "label", "balance", "method", "wga_erm_single", "wga_method_pair",
               "beats_erm_single", "wga_method_single", "delta"]
N_BOOT = 2000


def mean_ci(values, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean over settings (settings resampled with replacement)."""
    v = np.asarray(values, dtype=float)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float(v[0])
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def methods_of(settings: pd.DataFrame) -> list[str]:
    if settings is None or settings.empty or "method" not in settings:
        return []
    return known_order(settings["method"], method_names())


def method_table(settings: pd.DataFrame) -> pd.DataFrame:
    """One row per (method, balance): the headline numbers and the mean delta's bootstrap CI."""
    rows = []
    for m in methods_of(settings):
        sub = settings[settings["method"] == m]
        for bal, h in headline(sub).items():
            d = sub.loc[sub["balance"] == bal, "delta_mean"].astype(float)
            lo, hi = mean_ci(d)
            rows.append({"method": m, "balance": bal, "n_settings": h["n_settings"], "n_hurt": h["n_hurt"],
                         "hurt_fraction": h["hurt_fraction"], "n_hurt_significant": h["n_hurt_significant"],
                         "n_helped_significant": h["n_helped_significant"], "mean_delta": h["mean_delta"],
                         "mean_delta_ci_low": lo, "mean_delta_ci_high": hi})
    return pd.DataFrame(rows, columns=METHOD_COLUMNS)


def head_to_head(settings: pd.DataFrame) -> pd.DataFrame:
    """For each setting and non-ERM method: the method's two-hospital WGA against ERM's
    single-hospital WGA on the same setting (same base, added, label, balance, source)."""
    if settings is None or settings.empty:
        return pd.DataFrame(columns=H2H_COLUMNS)
    key = ["base", "added", "label", "balance", "source"]
    erm = settings[settings["method"] == keys.DEFAULT_METHOD].set_index(key)["wga_single"]
    rows = []
    for _, r in settings[settings["method"] != keys.DEFAULT_METHOD].iterrows():
        k = tuple(r[c] for c in key)
        if k not in erm.index:
            continue
        single = float(erm.loc[k])
        rows.append({"base": r["base"], "added": r["added"], "label": r["label"], "balance": r["balance"],
                     "method": r["method"], "wga_erm_single": single, "wga_method_pair": float(r["wga_pair"]),
                     "beats_erm_single": bool(float(r["wga_pair"]) > single),
                     "wga_method_single": float(r["wga_single"]), "delta": float(r["delta_mean"])})
    return pd.DataFrame(rows, columns=H2H_COLUMNS)


def _prefix(method: str, balance: str) -> str:
    return "analysis" + method_suffix(method, "/") + balance_suffix(balance)


def method_metrics(table: pd.DataFrame, h2h: pd.DataFrame) -> dict[str, float]:
    """``analysis/<method>/...`` for every method but ERM (whose names are the headline's), plus
    ``.../mean_delta_ci_low|high`` for every method and ``analysis/<method>/beats_erm_single_fraction``."""
    out = {}
    for _, r in table.iterrows():
        p = _prefix(r["method"], r["balance"])
        names = ("mean_delta_ci_low", "mean_delta_ci_high")
        if r["method"] != keys.DEFAULT_METHOD:
            names += ("hurt_fraction", "n_settings", "mean_delta")
            n = r["n_settings"]
            out[f"{p}/hurt_fraction_significant"] = float(r["n_hurt_significant"] / n) if n else float("nan")
            out[f"{p}/helped_fraction_significant"] = float(r["n_helped_significant"] / n) if n else float("nan")
        for k in names:
            out[f"{p}/{k}"] = float(r[k])
    for (m, bal), g in h2h.groupby(["method", "balance"]) if len(h2h) else []:
        out[f"{_prefix(m, bal)}/beats_erm_single_fraction"] = float(g["beats_erm_single"].mean())
    return {k: v for k, v in out.items() if not np.isnan(v)}


def method_figure(table: pd.DataFrame, path: Path, *, synthetic: bool = False) -> Path | None:
    """Hurt fraction and mean delta (95% CI) by method, one bar per balance mode."""
    if table.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(table["method"]))
    balances = list(dict.fromkeys(table["balance"]))
    width = 0.8 / max(len(balances), 1)
    x = np.arange(len(methods))
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.3 * len(methods), 3.6))
    for j, bal in enumerate(balances):
        t = table[table["balance"] == bal].set_index("method").reindex(methods)
        off = x - 0.4 + width * (j + 0.5)
        label = BALANCE_TITLES.get(bal, bal)
        axes[0].bar(off, t["hurt_fraction"], width, label=label)
        err = np.vstack([t["mean_delta"] - t["mean_delta_ci_low"], t["mean_delta_ci_high"] - t["mean_delta"]])
        axes[1].bar(off, t["mean_delta"], width, yerr=np.nan_to_num(err), capsize=3, label=label)
    axes[0].set_ylabel("fraction of settings hurt")
    axes[0].set_ylim(0, 1)
    axes[1].set_ylabel("mean change in WGA (95% CI)")
    axes[1].axhline(0, color="black", lw=0.8)
    for ax in axes:
        ax.set_xticks(x, methods)
    axes[0].legend(fontsize=7)
    fig.suptitle("Adding a hospital, by training method" + (" (SYNTHETIC DATA)" if synthetic else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_section(table: pd.DataFrame, h2h: pd.DataFrame, figure: str | None) -> list[str]:
    """Markdown lines for report.md."""
    lines = ["## Which training method prevents the harm?", "",
             "Each method trains both arms of every setting (the base hospital alone, and base + added). "
             "Hurt: mean change in WGA below 0; significant: the whole 95% patient-bootstrap CI on one side "
             "of 0. The CI of the mean is a bootstrap over settings.", "",
             "| method | balance | settings | hurt | sig. hurt | sig. helped | mean change [95% CI] | "
             "two-hospital model beats ERM's single-hospital model |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        g = h2h[(h2h["method"] == r["method"]) & (h2h["balance"] == r["balance"])] if len(h2h) else h2h
        beats = "(reference)" if r["method"] == keys.DEFAULT_METHOD else (
            f"{int(g['beats_erm_single'].sum())}/{len(g)}" if len(g) else "\u2013")
        lines.append(f"| {r['method']} | {r['balance']} | {r['n_settings']} | {r['n_hurt']} "
                     f"({r['hurt_fraction']:.0%}) | {r['n_hurt_significant']} | {r['n_helped_significant']} | "
                     f"{r['mean_delta']:+.3f} [{r['mean_delta_ci_low']:+.3f}, {r['mean_delta_ci_high']:+.3f}] | "
                     f"{beats} |")
    if figure:
        lines += ["", f"![by method]({figure})"]
    return lines + [""]
