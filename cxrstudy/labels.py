"""The nine binary targets of the protocol and the normalisation of label values."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cxrstudy.errors import DataError, UsageError

DISEASES = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
)
#: The nine targets, each trained on its own. ``Any`` = any of the seven diseases.
LABELS = ("No Finding",) + DISEASES + ("Any",)

_KEY = {lab.lower().replace(" ", "_"): lab for lab in LABELS}


def label_key(label: str) -> str:
    """``'No Finding'`` -> ``'no_finding'``: the spelling used in run names and metric keys."""
    return canonical_label(label).lower().replace(" ", "_")


def canonical_label(name: str) -> str:
    """Case-insensitive, ``_`` or space: ``'no_finding'`` -> ``'No Finding'``."""
    key = str(name).strip().lower().replace(" ", "_").replace("-", "_")
    if key not in _KEY:
        raise UsageError(
            f"unknown label {name!r}; expected one of: {', '.join(_KEY)}"
        )
    return _KEY[key]


def parse_labels(value: str) -> list[str]:
    """A comma list of labels, or ``all``."""
    parts = [p for p in str(value).split(",") if p.strip()]
    if not parts:
        raise UsageError(f"no label given; expected one or more of: {', '.join(_KEY)}")
    if len(parts) == 1 and parts[0].strip().lower() == "all":
        return list(LABELS)
    out = []
    for p in parts:
        lab = canonical_label(p)
        if lab not in out:
            out.append(lab)
    return out


_POSITIVE = {"1", "1.0", "true", "[true]"}
# U-zeros: uncertain (-1) and missing count as 0.
_ZERO = {"0", "0.0", "false", "[false]", "-1", "-1.0", "", "nan", "none"}


def normalise_values(values: pd.Series, *, file: str, column: str) -> np.ndarray:
    """Map 1/0, 1.0/0.0, True/False, "[True]"/"[False]", -1 (uncertain) and missing to 1/0.

    Any other value raises :class:`DataError` naming the file, column and value.
    """
    if values.dtype == bool:
        return values.to_numpy().astype(np.uint8)
    if pd.api.types.is_numeric_dtype(values.dtype):
        arr = values.to_numpy(dtype=float)
        ok = np.isnan(arr) | np.isin(arr, (0.0, 1.0, -1.0))
        if not ok.all():
            bad = arr[~ok][0]
            raise DataError(
                f"{file}: column {column!r} has value {bad!r}; "
                "expected 1, 0, -1 (uncertain), True/False or blank"
            )
        return (arr == 1.0).astype(np.uint8)
    text = values.astype("string").fillna("").str.strip().str.lower()
    pos = text.isin(_POSITIVE).to_numpy()
    zero = text.isin(_ZERO).to_numpy()
    bad = ~(pos | zero)
    if bad.any():
        raw = values[bad].iloc[0]
        raise DataError(
            f"{file}: column {column!r} has value {raw!r}; "
            "expected 1, 0, -1 (uncertain), True/False, \"[True]\"/\"[False]\" or blank"
        )
    return pos.astype(np.uint8)


def add_any(table: pd.DataFrame) -> pd.DataFrame:
    """``Any`` = any of the seven diseases (not No Finding)."""
    table["Any"] = table[list(DISEASES)].max(axis=1).astype(np.uint8)
    return table
