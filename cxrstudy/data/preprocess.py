"""Preprocessing: harmonised tables, the subject-wise split and the image cache, per hospital."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from cxrstudy.data.cache import CacheEntry
from cxrstudy.data.dataspec import DataSpec
from cxrstudy.data.split import SPLITS
from cxrstudy.data.stats import dataset_stats
from cxrstudy.errors import DataError
from cxrstudy.hospitals import canonical_hospital


@dataclass
class PreprocessResult:
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    entries: dict[tuple[str, str], CacheEntry] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    dropped_missing: dict[str, int] = field(default_factory=dict)

    @property
    def stats(self) -> pd.DataFrame:
        return dataset_stats(pd.concat(self.tables.values(), ignore_index=True))

    @property
    def skipped(self) -> pd.DataFrame:
        """Skipped images (corrupt, truncated, unreadable) counted per hospital, split and error type,
        with ``list``: the cache entry's ``skipped.csv`` (relative to the cache folder) that names
        their files and full errors. This table is logged as an artifact, so it names no image: the
        image paths of most datasets hold patient ids (``p10000032/``, ``patient00005/``,
        ``00000004_002.png``), and an error message may hold the path."""
        rows = []
        for (env, split), entry in self.entries.items():
            errors = entry.skipped()["reason"].str.split(":", n=1).str[0]
            for error, n in errors.value_counts().sort_index().items():
                rows.append({"env": env, "split": split, "error": error, "n_images": int(n),
                             "list": f"{entry.place}/skipped.csv"})
        return pd.DataFrame(rows, columns=["env", "split", "error", "n_images", "list"])


def check_sources(spec: DataSpec, envs: list[str]) -> None:
    """Open every hospital's source before any run is created: a missing dataset folder or label
    file is one :class:`DataError` line. Metadata mode's mimic (not shipped) is left to
    :func:`preprocess`, which skips it with a note."""
    for env in envs:
        if not (spec.source == "metadata" and canonical_hospital(env) == "mimic"):
            spec.open(env)


def preprocess(spec: DataSpec, envs: list[str], *, workers: int | None = None, progress: bool = True,
               build_cache: bool = True) -> PreprocessResult:
    """Build every hospital's table, split and (when the source has images) cache entries.

    In metadata mode mimic is skipped with a note (MIMIC-CXR is not shipped in torchxrayvision).
    """
    result = PreprocessResult()
    for env in envs:
        try:
            source = spec.open(env)
        except DataError as e:
            if spec.source == "metadata" and env == "mimic":
                result.notes.append(f"mimic skipped: {e}")
                continue
            raise
        result.tables[env] = spec.table(env)
        result.dropped_missing[env] = source.dropped_missing
        result.notes.extend(source.notes)
        if build_cache and source.has_images:
            for split in SPLITS:
                result.entries[(env, split)] = spec.entry(env, split, workers=workers, progress=progress)
    if not result.tables:
        raise DataError(f"no hospital could be read from source={spec.source} (asked for {', '.join(envs)})")
    return result


