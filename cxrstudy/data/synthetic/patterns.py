"""Label patterns of the synthetic hospitals: the packaged table and how it is rebuilt.

``cxrstudy/data/synthetic_label_patterns.csv.gz`` holds, per hospital, the count of every
distinct (sex, age_bin, No Finding, 7 diseases) combination of that hospital's real label
table, so the synthetic hospitals inherit the real prevalence gaps and co-occurrences:

- cxp, nih, pad: counted from torchxrayvision's shipped label CSVs, harmonised by
  :mod:`cxrstudy.data.sources.metadata` exactly as the metadata source does.
- mimic (not shipped): the cxp table reweighted by iterative proportional fitting (raking) so
  that its nine marginals (the eight base labels and ``Any``) equal docs/PROTOCOL.md's published
  mimic train-split prevalences; its counts are fractional and sum to about 243k images.

Only the rebuild (``python -m cxrstudy.data.synthetic --rebuild-patterns``) needs torchxrayvision;
the runtime reads the packaged file.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.data.schema import AGE_BINS, SEXES
from cxrstudy.errors import DataError
from cxrstudy.hospitals import HOSPITALS
from cxrstudy.labels import DISEASES, LABELS

PATTERN_FILE = "synthetic_label_patterns.csv.gz"
#: the eight labels stored per pattern; ``Any`` is derived with :func:`cxrstudy.labels.add_any`
BASE_LABELS = ("No Finding",) + DISEASES
PATTERN_COLUMNS = ("env", "sex", "age_bin") + BASE_LABELS + ("count",)

#: docs/PROTOCOL.md: published mimic train-split prevalence (percent), all nine labels.
MIMIC_PUBLISHED = {
    "Pneumonia": 6.82,
    "Cardiomegaly": 17.05,
    "Edema": 11.83,
    "Effusion": 23.18,
    "Atelectasis": 20.11,
    "Pneumothorax": 4.19,
    "Consolidation": 4.67,
    "Any": 50.73,
    "No Finding": 34.76,
}
#: docs/PROTOCOL.md: "about 243k frontal images" (the scale of mimic's fractional counts)
MIMIC_IMAGES = 243_000


def packaged_path() -> Path:
    return Path(str(resources.files("cxrstudy") / "data" / PATTERN_FILE))


def _validate(df: pd.DataFrame, origin) -> pd.DataFrame:
    missing = [c for c in PATTERN_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{origin}: label-pattern table lacks column(s) {missing}")
    df = df.loc[:, list(PATTERN_COLUMNS)].copy()
    df["env"] = df["env"].astype(str)
    df["sex"] = df["sex"].astype(str)
    df["age_bin"] = df["age_bin"].fillna("").astype(str)
    bad_env = sorted(set(df["env"]) - set(HOSPITALS))
    bad_sex = sorted(set(df["sex"]) - set(SEXES))
    bad_age = sorted(set(df["age_bin"]) - set(AGE_BINS) - {""})
    if bad_env or bad_sex or bad_age:
        raise DataError(f"{origin}: unexpected values env={bad_env} sex={bad_sex} age_bin={bad_age}")
    for c in BASE_LABELS:
        if not df[c].isin([0, 1]).all():
            raise DataError(f"{origin}: column {c!r} must be 0/1")
        df[c] = df[c].astype(np.uint8)
    df["count"] = pd.to_numeric(df["count"], errors="raise").astype(float)
    if (df["count"] <= 0).any():
        raise DataError(f"{origin}: pattern counts must be positive")
    missing_env = [e for e in HOSPITALS if e not in set(df["env"])]
    if missing_env:
        raise DataError(f"{origin}: no patterns for hospital(s) {missing_env}")
    return df.reset_index(drop=True)


@lru_cache(maxsize=4)
def _load(path: str) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, keep_default_na=False, na_values=[], dtype={"age_bin": str, "sex": str})
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the synthetic label patterns ({e})") from e
    return _validate(df, path)


def load_patterns(path=None) -> pd.DataFrame:
    """The pattern table (columns :data:`PATTERN_COLUMNS`), the packaged one by default."""
    p = Path(path) if path is not None else packaged_path()
    if not p.is_file():
        raise DataError(
            f"{p}: synthetic label patterns not found (the package data is missing; "
            "rebuild with `python -m cxrstudy.data.synthetic --rebuild-patterns`)"
        )
    return _load(str(p)).copy()


@lru_cache(maxsize=4)
def patterns_digest(path=None) -> str:
    """Hash of the pattern file's bytes (part of the synthetic sources' fingerprint)."""
    p = Path(path) if path is not None else packaged_path()
    return hashlib.sha256(p.read_bytes()).hexdigest()[:16]


def prevalence(patterns: pd.DataFrame, env: str) -> pd.Series:
    """The nine labels' prevalence (fraction) implied by ``env``'s patterns."""
    p = patterns.loc[patterns["env"] == env]
    w = p["count"].to_numpy(float)
    out = {c: float(np.dot(w, p[c].to_numpy(float)) / w.sum()) for c in BASE_LABELS}
    any_ = p[list(DISEASES)].to_numpy().max(axis=1)
    out["Any"] = float(np.dot(w, any_) / w.sum())
    return pd.Series(out)[list(LABELS)]


# ---------------------------------------------------------------------------------------
# rebuilding (needs torchxrayvision's shipped CSVs through the metadata source)


def count_patterns(table: pd.DataFrame, env: str) -> pd.DataFrame:
    """Counts of the distinct (sex, age_bin, 8 base labels) rows of a harmonised table."""
    keys = ["sex", "age_bin", *BASE_LABELS]
    t = table.loc[:, keys].copy()
    t["age_bin"] = t["age_bin"].fillna("").astype(str)
    counts = t.groupby(keys, sort=True, dropna=False).size().rename("count").reset_index()
    counts.insert(0, "env", env)
    return counts


def rake(patterns: pd.DataFrame, targets: dict, *, tol: float = 1e-10, max_iter: int = 10_000) -> np.ndarray:
    """Iterative proportional fitting: weights close to ``patterns['count']`` whose label
    marginals equal ``targets`` (fractions; base labels and/or ``Any``)."""
    w = patterns["count"].to_numpy(float).copy()
    cols = {}
    for lab in targets:
        if lab == "Any":
            cols[lab] = patterns[list(DISEASES)].to_numpy().max(axis=1).astype(bool)
        else:
            cols[lab] = patterns[lab].to_numpy().astype(bool)
    for _ in range(max_iter):
        worst = 0.0
        for lab, target in targets.items():
            pos = cols[lab]
            cur = w[pos].sum() / w.sum()
            worst = max(worst, abs(cur - target))
            if cur <= 0 or cur >= 1:
                raise DataError(f"raking: label {lab!r} has no positive or no negative pattern to reweight")
            w[pos] *= target / cur
            w[~pos] *= (1 - target) / (1 - cur)
        if worst < tol:
            return w
    raise DataError(f"raking did not converge (largest marginal error {worst:.2e})")


def build_patterns() -> pd.DataFrame:
    """The pattern table from torchxrayvision's shipped CSVs (cxp, nih, pad) and raked mimic."""
    from cxrstudy.data.sources.metadata import MetadataSource  # torchxrayvision's CSVs: only when rebuilding

    parts = {}
    for env in ("cxp", "nih", "pad"):
        parts[env] = count_patterns(MetadataSource(env).table(), env)
    mimic = parts["cxp"].copy()
    mimic["env"] = "mimic"
    w = rake(mimic, {k: v / 100.0 for k, v in MIMIC_PUBLISHED.items()})
    mimic["count"] = w * (MIMIC_IMAGES / w.sum())
    mimic = mimic.loc[mimic["count"] > 1e-3].reset_index(drop=True)
    out = pd.concat([mimic] + [parts[e] for e in ("cxp", "nih", "pad")], ignore_index=True)
    return _validate(out, "rebuilt patterns")


def write_patterns(df: pd.DataFrame, path) -> Path:
    """Write the table as a reproducible gzip CSV (no timestamp in the gzip header)."""
    import gzip

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df = df.copy()
    df["count"] = df["count"].round(4)
    text = df.to_csv(index=False, float_format="%.4f", lineterminator="\n")
    # integer counts without ".0000"
    text = text.replace(".0000\n", "\n")
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
        gz.write(text.encode())
    _load.cache_clear()
    patterns_digest.cache_clear()
    return path
