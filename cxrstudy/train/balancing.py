"""Hospital-label balancing (docs/PROTOCOL.md "Balancing") and the size-matched variant.

``hospital_label``: with training hospitals A, B and label y, p* = max over hospitals of the
train-split prevalence. In each hospital's train and val split the negatives are undersampled,
without replacement, until the prevalence is p*; positives are all kept. (The published code
also bootstrapped the positives of the hospital that already had p*, creating duplicates; we
do not.) ``size_matched``: the multi-hospital training set is undersampled, stratified by
hospital and label, to the size of the first (base) hospital's set. Test splits are never
resampled. Sampling uses imbalanced-learn's RandomUnderSampler, seeded by the training seed.
"""

from __future__ import annotations

import numpy as np
from imblearn.under_sampling import RandomUnderSampler

from cxrstudy.errors import DataError, UsageError

# --- the balance modes: one definition (parameters, tags, tables and titles use these) --------------
BALANCE_NONE = "none"
BALANCE_HOSPITAL_LABEL = "hospital_label"
BALANCE_SIZE_MATCHED = "size_matched"
BALANCE_MODES = (BALANCE_NONE, BALANCE_HOSPITAL_LABEL, BALANCE_SIZE_MATCHED)
BALANCE_TITLES = {BALANCE_NONE: "no balancing", BALANCE_HOSPITAL_LABEL: "hospital-label balancing",
                  BALANCE_SIZE_MATCHED: "size-matched"}


def parse_balance(value: str) -> str:
    v = str(value).strip().lower().replace("-", "_")
    if v not in BALANCE_MODES:
        raise UsageError(f"unknown balance {value!r}; expected one of: {', '.join(BALANCE_MODES)}")
    return v


def parse_balance_list(value: str, allowed=BALANCE_MODES) -> list[str]:
    """``"none,hospital_label"`` -> the balance modes in order, each once (UsageError when empty or
    when a mode is not among ``allowed``)."""
    out = []
    for part in [p for p in str(value).split(",") if p.strip()]:
        mode = parse_balance(part)
        if mode not in allowed:
            raise UsageError(f"parameter balances: {mode!r} is not available here; expected some of: {', '.join(allowed)}")
        if mode not in out:
            out.append(mode)
    if not out:
        raise UsageError(f"parameter balances is empty; expected e.g. {BALANCE_NONE},{BALANCE_HOSPITAL_LABEL}")
    return out


def prevalence(y: np.ndarray) -> float:
    return float(np.mean(y)) if len(y) else float("nan")


def negative_weight(p: float, target: float) -> float:
    """The weight of a negative, relative to a positive, that takes a hospital of prevalence ``p`` to
    the prevalence ``target``, as undersampling its negatives would in expectation:
    ``p(1-t) / (t(1-p))``; 1 when either prevalence is 0 or 1."""
    return p * (1 - target) / (target * (1 - p)) if 0 < p < 1 and 0 < target < 1 else 1.0


def _undersample(y: np.ndarray, counts: dict[int, int], seed: int) -> np.ndarray:
    """Indices (sorted) of a subsample of ``y`` with the given count per class, no replacement."""
    counts = {c: n for c, n in counts.items() if (y == c).any()}
    rus = RandomUnderSampler(sampling_strategy=counts, random_state=seed)
    rus.fit_resample(np.zeros((len(y), 1)), y)
    return np.sort(rus.sample_indices_)


def undersample_negatives_to(y: np.ndarray, target: float, seed: int, *, what: str) -> np.ndarray:
    """Indices keeping every positive and enough negatives for prevalence ``target``."""
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0:
        raise DataError(f"{what}: no positives, so hospital-label balancing cannot reach prevalence {target:.4f}")
    want_neg = min(n_neg, int(round(n_pos * (1 - target) / target)))
    if want_neg == 0:
        raise DataError(f"{what}: balancing to prevalence {target:.4f} leaves no negatives")
    return _undersample(y, {0: want_neg, 1: n_pos}, seed)


def hospital_label_balance(train_y: dict[str, np.ndarray], val_y: dict[str, np.ndarray], seed: int,
                           label: str = "label") -> tuple[dict, dict, float]:
    """Per-hospital kept indices for train and val, and p*."""
    target = max(prevalence(y) for y in train_y.values())
    if not target > 0:
        raise DataError(f"{label}: no training hospital has positives, nothing to balance")
    keep_train = {e: undersample_negatives_to(y, target, seed, what=f"{e}/train/{label}") for e, y in train_y.items()}
    keep_val = {e: undersample_negatives_to(y, target, seed + 1, what=f"{e}/val/{label}") for e, y in val_y.items()}
    return keep_train, keep_val, target


def size_match(train_y: dict[str, np.ndarray], base: str, seed: int) -> dict[str, np.ndarray]:
    """Undersample every hospital, stratified by label, so the total equals the base's size."""
    total = sum(len(y) for y in train_y.values())
    frac = len(train_y[base]) / total
    keep = {}
    for e, y in train_y.items():
        counts = {c: max(1, int(round((y == c).sum() * frac))) for c in (0, 1) if (y == c).any()}
        keep[e] = _undersample(y, counts, seed)
    return keep
