"""The harmonised table every source produces: one row per frontal image."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrstudy.labels import LABELS

#: Identity and metadata columns, in order; the nine label columns follow.
ID_COLUMNS = ("env", "subject_id", "study_id", "path", "view", "sex", "age_bin")
COLUMNS = ID_COLUMNS + LABELS

AGE_BINS = ("0-20", "20-40", "40-60", "60-80", "80+")
SEXES = ("M", "F", "O")


def age_bin(age) -> pd.Series:
    """Ages (years) to the protocol's bins; unknown ages become ``""``."""
    a = pd.to_numeric(pd.Series(age), errors="coerce")
    edges = [-np.inf, 20, 40, 60, 80, np.inf]
    binned = pd.cut(a, edges, right=False, labels=AGE_BINS)
    return binned.astype(object).where(binned.notna(), "").astype(str)


def sex_code(sex) -> pd.Series:
    """Any spelling of male/female to M/F; everything else (unknown, other, blank) to O."""
    s = pd.Series(sex).astype("string").fillna("").str.strip().str.upper()
    out = pd.Series("O", index=s.index, dtype=object)
    out[s.isin(["M", "MALE"])] = "M"
    out[s.isin(["F", "FEMALE"])] = "F"
    return out


def finalize(table: pd.DataFrame) -> pd.DataFrame:
    """Check a source's table has every column with the right types and return it in order."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"harmonised table lacks columns {missing}")
    out = table.loc[:, list(COLUMNS)].copy()
    for c in ID_COLUMNS:
        out[c] = out[c].astype(str)
    for c in LABELS:
        out[c] = out[c].astype(np.uint8)
    return out.reset_index(drop=True)
