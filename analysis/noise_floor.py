"""The A/A noise floor of a study: how many comparisons of a configuration with itself (two disjoint
seed sets, nothing added; :mod:`cxrstudy.evaluate.noise_floor`) the study's seed-aware rule calls
significant. A calibrated rule calls about 5% of them; the headline's "significantly hurt" counts
are read against this floor.

Metrics: ``analysis/noise_floor/<name>``; table ``noise_floor.csv``; a report section.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


#: The share of A/A comparisons a calibrated 95% rule calls significant.
EXPECTED_FRACTION = 0.05


def noise_floor_summary(runs: pd.DataFrame) -> dict:
    """Per strength (None for real data) and overall: comparisons, how many significant (either
    side), and the largest |delta|."""
    sig = runs["significant"].astype(float)
    n = int(sig.notna().sum())
    k = int((sig != 0).sum())
    return {"n_comparisons": n, "n_significant": k, "n_significant_hurt": int((sig < 0).sum()),
            "n_significant_helped": int((sig > 0).sum()), "fraction_significant": k / n if n else float("nan"),
            "max_abs_delta": float(runs["delta_wga"].abs().max()) if n else float("nan"),
            "seeds": runs["seeds"].iloc[0] if n else "", "seeds_b": runs["seeds_b"].iloc[0] if n else ""}


def noise_floor_metrics(summary: dict) -> dict[str, float]:
    return {f"analysis/noise_floor/{k}": float(v) for k, v in summary.items()
            if isinstance(v, (int, float)) and not (isinstance(v, float) and np.isnan(v))}


def noise_floor_sentence(summary: dict) -> str:
    """One line for the console and the report's headline."""
    n, k = summary["n_comparisons"], summary["n_significant"]
    return (f"A/A noise floor: comparing each unbalanced configuration with itself (seeds {summary['seeds']} vs "
            f"{summary['seeds_b']}, nothing added), the same rule called {k} of {n} significant "
            f"({100 * k / n:.0f}%; a calibrated rule calls about {EXPECTED_FRACTION:.0%}); largest |delta| "
            f"{summary['max_abs_delta']:.3f}.")


def report_section(runs: pd.DataFrame, summary: dict) -> list[str]:
    lines = ["## Noise floor: A/A comparisons", "",
             noise_floor_sentence(summary), "",
             "Each row compares one configuration trained with the study's seeds against the same configuration "
             "trained with as many other seeds; a single-hospital model is scored on every study hospital's test "
             "split, a two-hospital model on its two. The interval is the study's seed-aware 95% CI "
             "(docs/PROTOCOL.md \"Statistics\").", "",
             "| hospitals | label | scored on | delta [95% CI] | significant |", "|---|---|---|---|---|"]
    for _, r in runs.iterrows():
        verdict = {-1: "**below 0**", 1: "**above 0**"}.get(int(r["significant"]) if pd.notna(r["significant"]) else 0, "")
        lines.append(f"| {r['hospitals']} | {r['label']} | {r['eval_hospitals']} | {r['delta_wga']:+.3f} "
                     f"[{r['delta_ci_low']:+.3f}, {r['delta_ci_high']:+.3f}] | {verdict} |")
    return lines + [""]
