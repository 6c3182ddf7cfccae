"""The shortcut dose-response (synthetic hospitals only): the same grid at several shortcut
strengths -- the same patients, labels and seeds, only the pixels differ -- and, per strength, the
hurt fraction, significant hurt and help, the mean change in WGA with a 95% CI, the mean probe
accuracy when probes ran, and the shortcut-attributable change delta(s) - delta(0) (per setting a
paired patient-bootstrap CI, logged by the study; here its mean over settings with a 95% CI).

The attributable change splits exactly into its two models' parts, because delta = WGA(pair) -
WGA(single): ``pair_change`` = WGA_pair(s) - WGA_pair(0), what the stronger shortcut does to the
two-hospital model (averaged over distinct two-hospital models: settings (A, B) and (B, A) share
one), and ``single_change`` = WGA_single(s) - WGA_single(0), what it does to the
single-hospital model, which is also scored on the added hospital it never saw (the hospitals'
acquisitions drift apart with s, so that model meets a growing domain shift there).
``single_base_change`` and ``single_added_change`` split the single part by hospital: the change of
the single model's WGA over its own hospital's two groups and over the added hospital's.
attributable = pair_change - single_change.

Metrics: ``analysis/dose/<s>/<name>``; table ``dose_response.csv``; figure ``dose_response.png``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.data.synthetic.config import headline_strength as pick_headline_strength
from cxrstudy.tracking import keys
from cxrstudy.train.balancing import BALANCE_NONE

from .methods import mean_ci
from .summary import balance_suffix

DOSE_COLUMNS = ["shortcut_strength", "balance", "n_settings", "n_hurt", "hurt_fraction", "n_hurt_significant",
                "n_helped_significant", "mean_delta", "mean_delta_ci_low", "mean_delta_ci_high",
                "attributable_mean", "attributable_ci_low", "attributable_ci_high", "n_attributable_below_0",
                "n_attributable_above_0", "pair_change_mean", "pair_change_ci_low", "pair_change_ci_high",
                "single_change_mean", "single_change_ci_low", "single_change_ci_high",
                "single_base_change_mean", "single_base_change_ci_low", "single_base_change_ci_high",
                "single_added_change_mean", "single_added_change_ci_low", "single_added_change_ci_high",
                "probe_accuracy"]

#: What identifies one comparison across strengths.
_SETTING = ["base", "added", "label", "balance", "method"]
#: Each part of the attributable change and the settings column it is the change of (the single part
#: also on the model's own hospital and on the added one it never saw).
_PARTS = {"pair_change": "wga_pair", "single_change": "wga_single", "single_base_change": "wga_single_base",
          "single_added_change": "wga_single_added"}


def _change_from_null(settings: pd.DataFrame, column: str) -> pd.Series:
    """``column`` minus its value at strength 0 for the same setting (NaN where strength 0 is missing)."""
    key = [c for c in _SETTING if c in settings]
    null = settings[settings["shortcut_strength"] == 0.0].set_index(key)[column].astype(float)
    null = null[~null.index.duplicated()]
    at0 = pd.MultiIndex.from_frame(settings[key]) if len(key) > 1 else pd.Index(settings[key[0]])
    return settings[column].astype(float) - null.reindex(at0).to_numpy()


def strengths_of(settings: pd.DataFrame) -> list[float]:
    if settings is None or settings.empty or "shortcut_strength" not in settings:
        return []
    return sorted(float(v) for v in settings["shortcut_strength"].dropna().unique())


def headline_strength(settings: pd.DataFrame) -> float | None:
    """The strength whose comparisons make the study's headline when several were run: the default
    (1) when present, else the largest (:func:`cxrstudy.data.synthetic.config.headline_strength`)."""
    strengths = strengths_of(settings)
    if len(strengths) < 2:
        return None
    return pick_headline_strength(strengths)


def dose_table(settings: pd.DataFrame, probe_accuracy: dict | None = None) -> pd.DataFrame:
    """One row per (strength, balance) of the ERM comparisons."""
    s = settings[settings["method"] == keys.DEFAULT_METHOD] if "method" in settings else settings
    s = s.assign(**{part: _change_from_null(s, column) if column in s else np.nan
                    for part, column in _PARTS.items()})
    # (A, B) and (B, A) share one two-hospital model, scored on the same four groups: count it once
    s = s.assign(_pair_model=[",".join(sorted(ab)) for ab in zip(s["base"], s["added"])])
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
                # g is one method, strength and balance: a two-hospital model is (hospitals, label)
                **_mean_with_ci("pair_change", g.drop_duplicates(["_pair_model", "label"])["pair_change"]),
                **_mean_with_ci("single_change", g["single_change"]),
                **_mean_with_ci("single_base_change", g["single_base_change"]),
                **_mean_with_ci("single_added_change", g["single_added_change"]),
                "probe_accuracy": (probe_accuracy or {}).get(strength, np.nan),
            })
    return pd.DataFrame(rows, columns=DOSE_COLUMNS)


def _mean_with_ci(name: str, values: pd.Series) -> dict:
    if not values.notna().any():
        return {f"{name}_mean": np.nan, f"{name}_ci_low": np.nan, f"{name}_ci_high": np.nan}
    lo, hi = mean_ci(values)
    return {f"{name}_mean": float(values.mean()), f"{name}_ci_low": lo, f"{name}_ci_high": hi}


def dose_metrics(table: pd.DataFrame) -> dict[str, float]:
    out = {}
    for _, r in table.iterrows():
        p = f"analysis/dose/{r['shortcut_strength']:g}{balance_suffix(r['balance'])}"
        for k in ("hurt_fraction", "n_hurt_significant", "n_helped_significant", "mean_delta", "mean_delta_ci_low",
                  "mean_delta_ci_high", "attributable_mean", "attributable_ci_low", "attributable_ci_high",
                  "pair_change_mean", "pair_change_ci_low", "pair_change_ci_high", "single_change_mean",
                  "single_change_ci_low", "single_change_ci_high", "single_base_change_mean",
                  "single_added_change_mean", "probe_accuracy", "n_settings"):
            v = r[k]
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                out[f"{p}/{k}"] = float(v)
    return out


def dose_figure(table: pd.DataFrame, path: Path) -> Path | None:
    """Hurt fraction and mean change (95% CI) against the shortcut strength (unbalanced), with the
    shortcut-attributable change, and the mean probe accuracy on a second axis when probes ran."""
    t = table[table["balance"] == BALANCE_NONE].sort_values("shortcut_strength")
    if t.empty:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = t["shortcut_strength"].to_numpy(float)
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.8))
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

    def with_ci(ax, name, dx, fmt, label, color=None):
        mean = t[f"{name}_mean"] if f"{name}_mean" in t else t[name]
        err = np.vstack([mean - t[f"{name}_ci_low"], t[f"{name}_ci_high"] - mean])
        ax.errorbar(x + dx, mean, yerr=np.nan_to_num(err), fmt=fmt, capsize=3, label=label, color=color)

    with_ci(a2, "mean_delta", 0.0, "o-", "mean change in WGA (pair - single)")
    with_ci(a2, "attributable", 0.02, "s--", "shortcut-attributable change, delta(s) - delta(0)")
    a2.set_ylabel("WGA change (95% CI)")
    with_ci(a3, "attributable", 0.0, "s--", "attributable = pair part - single part", color="#555555")
    with_ci(a3, "pair_change", 0.02, "o-", "pair part: WGA_pair(s) - WGA_pair(0)", color="#b2182b")
    with_ci(a3, "single_change", 0.04, "^-", "single part: WGA_single(s) - WGA_single(0)", color="#2166ac")
    a3.set_ylabel("change from strength 0 (95% CI)")
    for ax in (a2, a3):
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("shortcut strength")
        ax.legend(fontsize=7)
    fig.suptitle("Dose-response: adding a hospital as the hospital gets easier to read (SYNTHETIC DATA)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report_section(table: pd.DataFrame, figure: str | None) -> list[str]:
    lines = ["## Dose-response: the shortcut strength", "",
             "The same grid trained at each shortcut strength of the synthetic hospitals: the same patients, "
             "labels and seeds; only the pixels differ. *Attributable* is delta(s) - delta(0) per setting and seed "
             "(its paired patient-bootstrap CI is in settings.csv); here its mean over settings with a 95% CI. "
             "It is exactly the *pair part* (the two-hospital model's WGA at s minus at 0) minus the *single part* "
             "(the same for the single-hospital model, which is also scored on the added hospital it never saw, "
             "whose acquisition drifts further from its own as s grows).", "",
             "| strength | balance | settings | hurt | sig. hurt | sig. helped | mean change [95% CI] | "
             "attributable [95% CI] | pair part [95% CI] | single part [95% CI] | probe accuracy |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]

    def ci(r, name):
        m = r[f"{name}_mean"]
        return "\u2013" if np.isnan(m) else f"{m:+.3f} [{r[f'{name}_ci_low']:+.3f}, {r[f'{name}_ci_high']:+.3f}]"

    for _, r in table.iterrows():
        probe = "\u2013" if np.isnan(r["probe_accuracy"]) else f"{r['probe_accuracy']:.3f}"
        lines.append(f"| {r['shortcut_strength']:g} | {r['balance']} | {r['n_settings']} | {r['n_hurt']} "
                     f"({r['hurt_fraction']:.0%}) | {r['n_hurt_significant']} | {r['n_helped_significant']} | "
                     f"{r['mean_delta']:+.3f} [{r['mean_delta_ci_low']:+.3f}, {r['mean_delta_ci_high']:+.3f}] | "
                     f"{ci(r, 'attributable')} | {ci(r, 'pair_change')} | {ci(r, 'single_change')} | {probe} |")
    split = table[(table["balance"] == BALANCE_NONE) & table["single_added_change_mean"].notna()]
    if len(split):
        lines += ["", "The single part by hospital (unbalanced): the single-hospital model's WGA over its own hospital "
                  "changes by " + ", ".join(f"{r['single_base_change_mean']:+.3f}" for _, r in split.iterrows())
                  + ", over the added hospital it never saw by "
                  + ", ".join(f"{r['single_added_change_mean']:+.3f}" for _, r in split.iterrows())
                  + " (strengths " + ", ".join(f"{v:g}" for v in split["shortcut_strength"]) + ")."]
    if figure:
        lines += ["", f"![dose-response]({figure})"]
    return lines + [""]
