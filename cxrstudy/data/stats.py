"""Dataset statistics: counts and prevalence per hospital, split and label."""

from __future__ import annotations

import pandas as pd

from cxrstudy.labels import LABELS

STATS_COLUMNS = ["env", "split", "label", "n", "positives", "prevalence"]


def dataset_stats(table: pd.DataFrame) -> pd.DataFrame:
    """One row per hospital x split x label: ``env,split,label,n,positives,prevalence`` (a fraction).

    ``table`` is a harmonised table with a ``split`` column.
    """
    grouped = table.groupby(["env", "split"], sort=False)
    n = grouped.size()
    pos = grouped[list(LABELS)].sum()
    rows = []
    for (env, split), count in n.items():
        for lab in LABELS:
            p = int(pos.loc[(env, split), lab])
            rows.append((env, split, lab, int(count), p, p / count if count else float("nan")))
    out = pd.DataFrame(rows, columns=STATS_COLUMNS)
    order = {"train": 0, "val": 1, "test": 2}
    out["_o"] = out["split"].map(order)
    return out.sort_values(["env", "_o"], kind="stable").drop(columns="_o").reset_index(drop=True)


def format_stats(stats: pd.DataFrame) -> str:
    """A compact wide table (rows hospital/split, columns labels, cells prevalence %) for the console."""
    wide = stats.pivot_table(index=["env", "split"], columns="label", values="prevalence", sort=False)
    wide = (wide[list(LABELS)] * 100).round(2)
    n = stats.drop_duplicates(["env", "split"]).set_index(["env", "split"])["n"]
    wide.insert(0, "n", n)
    wide.columns = ["n"] + [c.replace("No Finding", "NoFind")[:8] for c in LABELS]
    return wide.to_string()
