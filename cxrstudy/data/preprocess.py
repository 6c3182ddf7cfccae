"""Preprocessing: harmonised tables, the subject-wise split and the image cache, per hospital."""

from __future__ import annotations

import os
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

    roots: dict[str, str] = field(default_factory=dict)  # each hospital's dataset folder

    @property
    def skipped(self) -> pd.DataFrame:
        """Skipped images (corrupt, truncated, unreadable): hospital, split, the image path relative
        to the hospital's dataset folder, and the reason. No subject ids and no absolute paths: it is
        logged as an artifact."""
        frames = [e.skipped().assign(split=split, path=lambda d, env=env: relative_to_root(d["path"], self.roots.get(env)))
                  for (env, split), e in self.entries.items()]
        cols = ["env", "split", "path", "reason"]
        return pd.concat(frames, ignore_index=True)[cols] if frames else pd.DataFrame(columns=cols)


def relative_to_root(paths: pd.Series, root: str | None) -> pd.Series:
    """Paths under ``root`` made relative to it (``/data/nih/images/x.png`` -> ``images/x.png``);
    any other absolute path keeps only its file name."""
    def rel(p: str) -> str:
        if root and os.path.isabs(p):
            r = os.path.relpath(p, root)
            return r if not r.startswith("..") else os.path.basename(p)
        return os.path.basename(p) if os.path.isabs(p) else p

    return paths.astype(str).map(rel)


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
        result.roots[env] = str(getattr(source, "dataset_dir", None) or getattr(source, "root", "") or "")
        result.dropped_missing[env] = source.dropped_missing
        result.notes.extend(source.notes)
        if build_cache and source.has_images:
            for split in SPLITS:
                result.entries[(env, split)] = spec.entry(env, split, workers=workers, progress=progress)
    if not result.tables:
        raise DataError(f"no hospital could be read from source={spec.source} (asked for {', '.join(envs)})")
    return result


