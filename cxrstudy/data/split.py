"""The protocol's fixed subject-wise 80/10/10 split (the same for every training seed).

Unique subject ids are taken as strings and sorted lexicographically; NumPy's global
generator is seeded with 0 (its previous state is restored afterwards) and one
``np.random.uniform()`` is drawn per subject in that order: <= 0.8 train, (0.8, 0.9] val,
> 0.9 test.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrstudy.errors import UsageError

SPLITS = ("train", "val", "test")


def parse_split(value: str) -> str:
    v = str(value).strip().lower()
    if v not in SPLITS:
        raise UsageError(f"unknown split {value!r}; expected one of: {', '.join(SPLITS)}")
    return v


def subject_splits(subject_ids) -> dict[str, str]:
    """Map each unique subject id (as a string) to ``train``, ``val`` or ``test``."""
    subjects = sorted({str(s) for s in subject_ids})
    state = np.random.get_state()
    try:
        np.random.seed(0)
        draws = np.array([np.random.uniform() for _ in subjects], dtype=float)
    finally:
        np.random.set_state(state)
    names = np.where(draws <= 0.8, "train", np.where(draws <= 0.9, "val", "test"))
    return dict(zip(subjects, names.tolist()))


def assign_splits(table: pd.DataFrame) -> pd.Series:
    """The split of every row of a harmonised table, by its ``subject_id``."""
    mapping = subject_splits(table["subject_id"].unique())
    return table["subject_id"].astype(str).map(mapping).rename("split")


#: the label values each split must hold for one hospital and label: training and the threshold need
#: positives (train/loop.py); the test split is scored per (hospital, label value) group, so it needs both
NEEDED_VALUES = {"train": (1,), "val": (1,), "test": (1, 0)}


def missing_label_values(table: pd.DataFrame, label: str) -> list[str]:
    """What a hospital's table (with its ``split`` column) lacks for ``label``, as ``"<split> has no
    positives"`` / ``"<split> has no negatives"``; empty when every split holds what it needs."""
    out = []
    for split, values in NEEDED_VALUES.items():
        present = set(table.loc[table["split"] == split, label].astype(int))
        out += [f"{split} has no {'positives' if v else 'negatives'}" for v in values if v not in present]
    return out


def check_no_leakage(table: pd.DataFrame, split: pd.Series) -> None:
    """Raise AssertionError if any subject appears in more than one split."""
    per_subject = pd.Series(split.to_numpy(), index=table["subject_id"].astype(str)).groupby(level=0).nunique()
    leaked = per_subject[per_subject > 1]
    if len(leaked):
        raise AssertionError(f"{len(leaked)} subjects appear in more than one split, e.g. {leaked.index[0]!r}")
