"""The shortcut dose-response (synthetic hospitals only): the same grid at several shortcut
strengths -- the same patients, labels and seeds, only the pixels differ -- and, per strength, the
hurt fraction, significant hurt and help, the mean change in WGA with a 95% CI, the mean probe
accuracy when probes ran, and the shortcut-attributable change delta(s) - delta(0) (per setting a
paired patient-bootstrap CI, logged by the study; here its mean over settings with a 95% CI).

Metrics: ``analysis/dose/<s>/<name>``; table ``dose_response.csv``; figure ``dose_response.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.tracking import keys

from .methods import mean_ci

DOSE_COLUMNS = ["shortcut_strength", "balance", "n_settings", "n_hurt", "hurt_fraction", "n_hurt_significant",
                "n_helped_significant", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
                "attributable_mean", "attributable_ci_low", "attributable_ci_high", "n_attributable_below_0",
                "n_attributable_above_0", "probe_accuracy"]


def strengths_of(settings: pd.DataFrame) -> list[float]:
    if settings is None or settings.empty or "shortcut_strength" not in settings:
        return []
    return sorted(float(v) for v in settings["shortcut_strength"].dropna().unique())


def headline_strength(settings: pd.DataFrame) -> float | None:
    """The strength whose comparisons make the study's headline when several were run: the default
    (1) when present, else the largest."""
    strengths = strengths_of(settings)
    if len(strengths) < 2:
        return None
    return 1.0 if 1.0 in strengths else strengths[-1]


def dose_table(settings: pd.DataFrame, probe_accuracy: dict | None = None) -> pd.DataFrame:
    """One row per (strength, balance) of the ERM comparisons."""
    s = settings[settings["method"] == keys.DEFAULT_METHOD] if "method" in settings else settings
    rows = []
    for strength in strengths_of(s):
        at = s[s["shortcut_strength"] == strength]
        for bal in at["balance"].drop_duplicates():
            g = at[at["balance"] == bal]
            d = g["delta_mean"].astype(float)
            lo, hi = mean_ci(d)
            att = g["attributable_delta"].astype(float) if "attributable_delta" in g else pd.Series(dtype=float)
            alo, ahi = mean_ci(att)
            rows.append({
                "shortcut_strength": strength, "balance": bal, "n_settings": int(d.notna().sum()),
                "n_hurt": int((d < 0).sum()), "hurt_fraction": float((d < 0).mean()) if len(d) else np.nan,
                "n_hurt_significant": int((g["delta_ci_high"].astype(float) < 0).sum()),
                "n_helped_significant": int((g["delta_ci_low"].astype(float) > 0).sum()),
                "mean_delta": float(d.mean()), "mean_delta_ci_low": lo, "mean_delta_ci_high": hi,
                "attributable_mean": float(att.mean()) if att.notna().any() else (0.0 if strength == 0 else np.nan),
                "attributable_ci_low": alo if att.notna().any() else (0.0 if strength == 0 else np.nan),
                "attributable_ci_high": ahi if att.notna().any() else (0.0 if strength == 0 else np.nan),
                "n_attributable_below_0": int((g.get("attributable_ci_high", pd.Series(dtype=float)).astype(float) < 0).sum()),
                "n_attributable_above_0": int((g.get("attributable_ci_low", pd.Series(dtype=float)).astype(float) > 0).sum()),
                "probe_accuracy": (probe_accuracy or {}).get(strength, np.nan),
            })
    return pd.DataFrame(rows, columns=DOSE_COLUMNS)


def dose_metrics(table: pd.DataFrame) -> dict[str, float]:
    out = {}
    for _, r in table.iterrows():
        bal = "" if r["balance"] == "none" else f"/{'balanced' if r['balance'] == 'hospital_label' else r['balance']}"
        p = f"analysis/dose/{r['shortcut_strength']:g}{bal}"
        for k in ("hurt_fraction", "n_hurt_significant", "n_helped_significant", "mean_delta", "mean_delta_ci_low",
                  "mean_delta_ci_high", "attributable_mean", "attributable_ci_low", "attributable_ci_high",
                  "probe_accuracy", "n_settings"):
            v = r[k]
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                out[f"{p}/{k}"] = float(v)
    return out


def dose_figure(table: pd.DataFrame, path: Path) -> Path | None:
    """Hurt fraction and mean change (95% CI) against the shortcut strength (unbalanced), with the
    shortcut-attributable change, and the mean probe accuracy on a second axis when probes ran."""
    t = table[table["balance"] == "none"].sort_values("shortcut_strength")
    if t.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = t["shortcut_strength"].to_numpy(float)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    a1.plot(x, t["hurt_fraction"], "o-", color="#b2182b", label="fraction of settings hurt")
    a1.set_ylim(0, 1)
    a1.set_xlabel("shortcut strength")
    a1.set_ylabel("fraction hurt")
    if t["probe_accuracy"].notna().any():
        ax = a1.twinx()
        ax.plot(x, t["probe_accuracy"], "s--", color="#2166ac", label="probe accuracy (hospital from embedding)")
        ax.set_ylim(0.4, 1.02)
        ax.set_ylabel("mean probe accuracy")
        ax.legend(loc="lower right", fontsize=7)
    a1.legend(loc="upper left", fontsize=7)
    err = np.vstack([t["mean_delta"] - t["mean_delta_ci_low"], t["mean_delta_ci_high"] - t["mean_delta"]])
    a2.errorbar(x, t["mean_delta"], yerr=np.nan_to_num(err), fmt="o-", capsize=3, label="mean change in WGA")
    aerr = np.vstack([t["attributable_mean"] - t["attributable_ci_low"], t["attributable_ci_high"] - t["attributable_mean"]])
    a2.errorbar(x + 0.02, t["attributable_mean"], yerr=np.nan_to_num(aerr), fmt="s--", capsize=3,
                label="shortcut-attributable change, delta(s) - delta(0)")
    a2.axhline(0, color="black", lw=0.8)
    a2.set_xlabel("shortcut strength")
    a2.set_ylabel("WGA change (95% CI)")
    a2.legend(fontsize=7)
    fig.suptitle("Dose-response: adding a hospital as the hospital gets easier to read (SYNTHETIC DATA)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_section(table: pd.DataFrame, figure: str | None) -> list[str]:
    lines = ["## Dose-response: the shortcut strength", "",
             "The same grid trained at each shortcut strength of the synthetic hospitals: the same patients, "
             "labels and seeds; only the pixels differ. *Attributable* is delta(s) - delta(0) per setting and seed "
             "(its paired patient-bootstrap CI is in settings.csv); here its mean over settings with a 95% CI.", "",
             "| strength | balance | settings | hurt | sig. hurt | sig. helped | mean change [95% CI] | "
             "attributable [95% CI] | probe accuracy |", "|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        probe = "\u2013" if np.isnan(r["probe_accuracy"]) else f"{r['probe_accuracy']:.3f}"
        lines.append(f"| {r['shortcut_strength']:g} | {r['balance']} | {r['n_settings']} | {r['n_hurt']} "
                     f"({r['hurt_fraction']:.0%}) | {r['n_hurt_significant']} | {r['n_helped_significant']} | "
                     f"{r['mean_delta']:+.3f} [{r['mean_delta_ci_low']:+.3f}, {r['mean_delta_ci_high']:+.3f}] | "
                     f"{r['attributable_mean']:+.3f} [{r['attributable_ci_low']:+.3f}, {r['attributable_ci_high']:+.3f}] "
                     f"| {probe} |")
    if figure:
        lines += ["", f"![dose-response]({figure})"]
    return lines + [""]
