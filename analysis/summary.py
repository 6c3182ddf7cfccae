"""The headline numbers and the hypothesis-2 (balancing) table from a settings table.

``settings`` is what :func:`analysis.queries.comparison_table` returns: one row per setting with
``delta_mean`` (mean over seeds of WGA(A+B) - WGA(A)) and its 95% CI ``delta_ci_low``,
``delta_ci_high``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrstudy.train.balancing import BALANCE_HOSPITAL_LABEL, BALANCE_MODES, BALANCE_NONE, BALANCE_SIZE_MATCHED

from .queries import known_order, sort_settings


def model_flag_counts(settings: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Per setting, how many of its models are constant (predict one class on validation) and how many
    unconverged (cut off while still improving): ``compare``'s two counts, 0 where a comparison logged
    neither (older runs)."""
    def count(col):
        return settings[col].fillna(0) if col in settings else pd.Series(0, index=settings.index)

    return count("n_constant_models"), count("n_unconverged_models")


#: The paper's headline (Compton et al. 2023): adding a hospital hurt WGA in 43% of 108 settings.
PAPER_HURT_FRACTION = 0.43
PAPER_N_SETTINGS = 108

H2_COLUMNS = ["base", "added", "label", "source", "wga_single", "wga_pair", "wga_balanced",
              "delta_pair", "delta_balanced", "balanced_minus_pair", "balanced_minus_pair_ci_low",
              "balanced_minus_pair_ci_high", "balanced_beats_pair", "balanced_beats_both", "balanced_worse_than_both",
              "balanced_beats_both_significant", "balanced_worse_than_both_significant", "run_id_none",
              "run_id_balanced"]
_H2_FLAGS = ("balanced_beats_pair", "balanced_beats_both", "balanced_worse_than_both",
             "balanced_beats_both_significant", "balanced_worse_than_both_significant")


def _fraction(k: int, n: int) -> float:
    return k / n if n else float("nan")


def headline(settings: pd.DataFrame) -> dict:
    """Per balance mode: ``{balance: {hurt_fraction, hurt_fraction_significant,
    helped_fraction_significant, n_settings, n_hurt, n_hurt_significant, n_helped_significant,
    mean_delta, median_delta}}``.

    hurt: mean delta < 0; hurt significantly: the whole seed-aware 95% CI is below 0
    (``delta_ci_high < 0``); helped significantly: the whole CI is above 0 (``delta_ci_low > 0``). A
    missing CI counts as not significant. ``n_same_sign``: of the ``n_multi_seed`` settings compared
    over several seeds, those whose every seed's delta has the same sign. Balance modes come in protocol order (none, hospital_label, size_matched).
    """
    out = {}
    if settings is None or settings.empty:
        return out
    for bal in known_order(settings["balance"], BALANCE_MODES):
        s = settings[settings["balance"] == bal]
        d = s["delta_mean"].astype(float)
        n = int(d.notna().sum())
        n_hurt = int((d < 0).sum())
        n_hurt_sig = int((s["delta_ci_high"].astype(float) < 0).sum())
        n_help_sig = int((s["delta_ci_low"].astype(float) > 0).sum())
        multi = s[s["n_seeds"].astype(float) > 1] if "n_seeds" in s else s.iloc[:0]
        same = multi["seeds_same_sign"].astype(float) if "seeds_same_sign" in multi else pd.Series(dtype=float)
        out[bal] = {
            "n_settings": n,
            "n_hurt": n_hurt,
            "n_hurt_significant": n_hurt_sig,
            "n_helped_significant": n_help_sig,
            "hurt_fraction": _fraction(n_hurt, n),
            "hurt_fraction_significant": _fraction(n_hurt_sig, n),
            "helped_fraction_significant": _fraction(n_help_sig, n),
            "mean_delta": float(d.mean()) if n else float("nan"),
            "median_delta": float(d.median()) if n else float("nan"),
            # settings over several seeds whose per-seed deltas all lie on one side of 0
            "n_multi_seed": int(len(multi)), "n_same_sign": int((same == 1).sum()),
        }
    return out


def hypothesis2_table(settings: pd.DataFrame, balanced: str = BALANCE_HOSPITAL_LABEL) -> pd.DataFrame:
    """Hypothesis 2 (does hospital-label balancing fix the drop?), one row per (base, added, label,
    source) that has both a ``none`` and a ``balanced`` comparison.

    ``wga_single`` and ``wga_pair`` come from the unbalanced comparison, ``wga_balanced`` is the
    balanced comparison's two-hospital WGA. ``balanced_beats_both``: the balanced model's WGA is
    above both the single-hospital and the unbalanced pair model's; ``balanced_worse_than_both``:
    below both (the paper reports such settings exist). ``..._significant``: the same by the study's
    seed-aware rule, i.e. the balanced comparison's CI (balanced pair vs single) and the CI of
    balanced pair vs unbalanced pair (``balanced_minus_pair_ci_*``, logged by the balanced comparison)
    both above 0 (or both below); False where that CI is missing.
    """
    if settings is None or settings.empty:
        return pd.DataFrame(columns=H2_COLUMNS)
    key = ["base", "added", "label", "source"]
    s = settings if "source" in settings else settings.assign(source="unknown")
    none = s[s["balance"] == BALANCE_NONE].set_index(key)
    bal = s[s["balance"] == balanced].set_index(key)
    common = none.index.intersection(bal.index)
    if not len(common):
        return pd.DataFrame(columns=H2_COLUMNS)
    a, b = none.loc[common], bal.loc[common]
    single = a["wga_single"].astype(float).to_numpy()
    pair = a["wga_pair"].astype(float).to_numpy()
    balw = b["wga_pair"].astype(float).to_numpy()
    def col(df, name):
        return df[name].astype(float).to_numpy() if name in df else np.full(len(df), np.nan)

    bmp_lo, bmp_hi = col(b, "balanced_minus_pair_ci_low"), col(b, "balanced_minus_pair_ci_high")
    bal_lo, bal_hi = col(b, "delta_ci_low"), col(b, "delta_ci_high")
    out = pd.DataFrame({
        "wga_single": single,
        "wga_pair": pair,
        "wga_balanced": balw,
        "delta_pair": pair - single,
        "delta_balanced": balw - single,
        "balanced_minus_pair": balw - pair,
        "balanced_minus_pair_ci_low": bmp_lo,
        "balanced_minus_pair_ci_high": bmp_hi,
        "balanced_beats_pair": balw > pair,
        "balanced_beats_both": (balw > single) & (balw > pair),
        "balanced_worse_than_both": (balw < single) & (balw < pair),
        "balanced_beats_both_significant": (bal_lo > 0) & (bmp_lo > 0),
        "balanced_worse_than_both_significant": (bal_hi < 0) & (bmp_hi < 0),
        "run_id_none": a["run_id"].to_numpy() if "run_id" in a else None,
        "run_id_balanced": b["run_id"].to_numpy() if "run_id" in b else None,
    }, index=common).reset_index()
    out = out.assign(balance=balanced)
    return sort_settings(out).drop(columns="balance")[H2_COLUMNS]


def hypothesis2_summary(h2: pd.DataFrame) -> dict:
    """Counts and shares of the hypothesis-2 flags."""
    n = len(h2)
    res = {"n_settings": n}
    for flag in _H2_FLAGS:
        k = int(h2[flag].astype(bool).sum()) if n and flag in h2 else 0
        res[f"n_{flag}"] = k
        res[f"{flag}_fraction"] = _fraction(k, n)
    res["mean_balanced_minus_pair"] = float(h2["balanced_minus_pair"].astype(float).mean()) if n else float("nan")
    return res


_HOW = {BALANCE_NONE: "", BALANCE_HOSPITAL_LABEL: " with hospital-label balancing",
        BALANCE_SIZE_MATCHED: " (size-matched to the base hospital)"}


def balance_suffix(balance: str) -> str:
    """How a balance mode extends an ``analysis/...`` metric prefix: nothing for none,
    ``/balanced`` for hospital_label, ``/<mode>`` for any other mode."""
    return {BALANCE_NONE: "", BALANCE_HOSPITAL_LABEL: "/balanced"}.get(balance, f"/{balance}")


def headline_sentence(h: dict, balance: str = BALANCE_NONE) -> str:
    """The one-sentence headline of one balance mode's numbers."""
    n = h["n_settings"]

    def pct(k):
        return f"{100 * k / n:.0f}%" if n else "n/a"

    how = _HOW.get(balance, f" (balance={balance})")
    same = (f"; {h['n_same_sign']} of {h['n_multi_seed']} kept one sign in every seed"
            if h.get("n_multi_seed") else "")
    return (f"Adding a second hospital{how} lowered WGA in {h['n_hurt']} of {n} settings ({pct(h['n_hurt'])}); "
            f"in {h['n_hurt_significant']} ({pct(h['n_hurt_significant'])}) the whole seed-aware 95% CI was below "
            f"0, and in {h['n_helped_significant']} ({pct(h['n_helped_significant'])}) it was above 0 "
            f"(mean change {h['mean_delta']:+.3f}{same}).")


def as_metrics(head: dict, h2: pd.DataFrame | None = None) -> dict[str, float]:
    """MLflow metric names: ``analysis/<name>`` for balance=none, ``analysis/balanced/<name>`` for
    hospital_label, ``analysis/<mode>/<name>`` for any other mode; ``analysis/h2/...`` for hypothesis 2."""
    out = {}
    for bal, h in head.items():
        prefix = "analysis" + balance_suffix(bal)
        for k in ("hurt_fraction", "hurt_fraction_significant", "helped_fraction_significant", "n_settings",
                  "mean_delta"):
            v = h[k]
            if v is not None and not (isinstance(v, float) and np.isnan(v)):
                out[f"{prefix}/{k}"] = float(v)
    if h2 is not None and len(h2):
        s = hypothesis2_summary(h2)
        out["analysis/h2/n_settings"] = float(s["n_settings"])
        for flag in _H2_FLAGS:
            out[f"analysis/h2/{flag}_fraction"] = float(s[f"{flag}_fraction"])
    return out
