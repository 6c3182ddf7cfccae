"""Where a run's images come from: the source, its location, the image size and the cache.

A :class:`DataSpec` is everything that determines the pixels and labels a run sees; train,
evaluate, compare and preprocess all take one, so the same hospital split always resolves to
the same cache entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import pandas as pd

from cxrstudy.data.cache import (CacheEntry, build_entry, built_entries, cache_key, check_free_disk, entry_bytes,
                                 entry_dir, free_disk)
from cxrstudy.data.sources import open_source, parse_source_kind
from cxrstudy.data.sources.base import Source
from cxrstudy.data.split import SPLITS, assign_splits, check_no_leakage
from cxrstudy.data.synthetic import SyntheticConfig
from cxrstudy.errors import DataError, UsageError
from cxrstudy.hospitals import canonical_hospital


#: what a logged data spec holds in place of a path on the machine that ran (see DataSpec.to_log_dict)
PATH_NOT_LOGGED = "<not logged>"


def default_cache_dir() -> str:
    return os.environ.get("CXRSTUDY_CACHE", str(Path.cwd() / ".cache" / "cxrstudy"))


@dataclass(frozen=True)
class DataSpec:
    source: str = "synthetic"
    data_root: str | None = None
    #: per-hospital root overrides, as ((env, path), ...)
    roots: tuple = ()
    image_size: int = 224
    cache_dir: str = field(default_factory=default_cache_dir)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        object.__setattr__(self, "source", parse_source_kind(self.source))
        if not (8 <= int(self.image_size) <= 1024):
            raise UsageError(f"image_size {self.image_size!r} is out of range; expected an integer 8..1024")
        object.__setattr__(self, "image_size", int(self.image_size))
        if self.source == "real" and not self.data_root and not self.roots:
            raise UsageError("source=real needs data_root (a folder with one subfolder per hospital: mimic, cxp, nih, pad)")

    @property
    def is_synthetic(self) -> bool:
        return self.source == "synthetic"

    def at_strength(self, strength: float) -> "DataSpec":
        """The same synthetic hospitals rendered at another shortcut strength: the same patients,
        labels and splits, only the pixels differ."""
        return replace(self, synthetic=replace(self.synthetic, shortcut_strength=float(strength)))

    def to_dict(self) -> dict:
        """What identifies the data (cache_dir excluded: moving the cache changes no result)."""
        d = {"source": self.source, "image_size": self.image_size}
        if self.source == "real":
            d["data_root"] = str(self.data_root)
            d["roots"] = dict(self.roots)
        if self.source == "synthetic":
            d["synthetic"] = self.synthetic.to_dict()
        return d

    def to_log_dict(self) -> dict:
        """:meth:`to_dict` as runs log it (parameters, artifacts): no path of this machine. Real
        data's ``data_root`` and ``roots`` read ``PATH_NOT_LOGGED``; what the data was is the run's
        data fingerprint tag, and whoever loads the model elsewhere says where the images are."""
        d = self.to_dict()
        if self.source == "real":
            d["data_root"] = PATH_NOT_LOGGED if self.data_root else ""
            d["roots"] = {env: PATH_NOT_LOGGED for env in d["roots"]}
        return d

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> "DataSpec":
        """Inverse of :meth:`to_dict` and :meth:`to_log_dict` (the cache dir and data roots may be
        overridden; a path that was not logged is left out, so it must be given)."""
        kw = {"source": d["source"], "image_size": int(d["image_size"])}
        if d.get("data_root") and d["data_root"] != PATH_NOT_LOGGED:
            kw["data_root"] = d["data_root"]
        roots = {env: p for env, p in (d.get("roots") or {}).items() if p != PATH_NOT_LOGGED}
        if roots:
            kw["roots"] = tuple(sorted(roots.items()))
        if "synthetic" in d:
            kw["synthetic"] = SyntheticConfig(**d["synthetic"])
        kw.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**kw)

    def open(self, env: str) -> Source:
        return _open(self, canonical_hospital(env))

    def table(self, env: str) -> pd.DataFrame:
        """The hospital's harmonised table with its ``split`` column (checked for leakage)."""
        return _table(self, canonical_hospital(env))

    def rows(self, env: str, split: str) -> pd.DataFrame:
        t = self.table(env)
        return t.loc[t["split"] == split].drop(columns="split").reset_index(drop=True)

    def fingerprint(self, envs) -> str:
        """The fingerprint of the data a run on ``envs`` reads: each hospital's source fingerprint
        (the label files' sizes and modification times for real data; the generator's settings, the
        label patterns and the renderer version for synthetic data). Part of a training run's identity."""
        parts = {canonical_hospital(e): self.open(e).fingerprint() for e in envs}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def entry_key(self, env: str, split: str) -> str:
        """The cache key of (hospital, split) at this spec's image size, without building the entry."""
        return cache_key(self.open(env), self.rows(env, split), split, self.image_size)

    def entry(self, env: str, split: str, *, workers: int | None = None, progress: bool = True) -> CacheEntry:
        """The cache entry for (hospital, split) at this spec's image size, built on first use."""
        if split not in SPLITS:
            raise UsageError(f"unknown split {split!r}; expected one of {SPLITS}")
        source = self.open(env)
        if not source.has_images:
            raise DataError(f"{env}: source={self.source} has no images; use source=synthetic or source=real")
        return build_entry(source, self.rows(env, split), split, self.image_size, self.cache_dir,
                           workers=workers, progress=progress)

    def cache_need(self, envs, *, exact: bool = False) -> tuple[int, int]:
        """``(images, bytes)`` of the image cache of ``envs`` (every split) at this spec's size.
        Rough (default): every image, built or not; a synthetic hospital is estimated from its patient
        count (:meth:`SyntheticSource.expected_images`: drawing the table of millions of patients
        takes minutes). ``exact``: only the entries not built yet, row by row; a synthetic hospital
        with no entry at this size stays estimated (nothing of it is built)."""
        if self.source == "metadata":  # label tables only: nothing is cached
            return 0, 0
        images = 0
        for env in envs:
            source = self.open(env)
            if not source.has_images:
                continue
            if self.is_synthetic and (not exact or not built_entries(self.cache_dir, source, self.image_size)):
                images += source.expected_images()
                continue
            for split in SPLITS:
                rows = self.rows(env, split)
                built = entry_dir(self.cache_dir, source, split, self.image_size,
                                  cache_key(source, rows, split, self.image_size)) / "manifest.json"
                if not exact or not built.is_file():
                    images += len(rows)
        return images, entry_bytes(images, self.image_size)


def check_cache_fits(specs: list[DataSpec], envs) -> None:
    """Refuse, before any work, an image cache that cannot fit on the cache's disk: one
    :class:`UsageError` line naming the size, the disk's free space and the folder. ``specs``
    share one cache_dir (a study at several shortcut strengths has one spec per strength)."""
    specs = list(specs)
    cache_dir = specs[0].cache_dir
    rough = sum(s.cache_need(envs)[1] for s in specs)
    if rough <= free_disk(cache_dir):
        return
    images, need = (sum(v) for v in zip(*(s.cache_need(envs, exact=True) for s in specs)))
    size = specs[0].image_size
    check_free_disk(cache_dir, need, f"the image cache ({images:,} images of {size}x{size} px)")


@lru_cache(maxsize=32)
def _open(spec: DataSpec, env: str) -> Source:
    roots = dict(spec.roots)
    return open_source(env, spec.source, data_root=spec.data_root, root=roots.get(env), synthetic=spec.synthetic)


@lru_cache(maxsize=32)
def _table(spec: DataSpec, env: str) -> pd.DataFrame:
    table = _open(spec, env).table().copy()
    if table.empty:
        raise DataError(f"{env}: the {spec.source} source yielded no frontal images")
    table["split"] = assign_splits(table)
    check_no_leakage(table, table["split"])
    return table


#: Entry-point parameters that describe the data (shared by preprocess, train, evaluate, ...).
DATA_PARAMS = {
    "source": "synthetic",
    "data_root": "",
    "roots": "",
    "cache_dir": "",
    "synthetic_patients": str(SyntheticConfig.n_patients),
    "shortcut_strength": str(SyntheticConfig.shortcut_strength),
    "synthetic_seed": str(SyntheticConfig.seed),
}


def parse_roots(value: str) -> tuple:
    """``"nih=/data/nih,pad=/mnt/pad"`` -> (("nih", "/data/nih"), ("pad", "/mnt/pad"))."""
    out = []
    for part in [p for p in str(value).split(",") if p.strip()]:
        if "=" not in part:
            raise UsageError(f"parameter roots has {part!r}; expected hospital=path pairs, e.g. nih=/data/nih")
        env, path = part.split("=", 1)
        out.append((canonical_hospital(env), path.strip()))
    return tuple(out)


def spec_from_params(raw: dict, image_size: int) -> DataSpec:
    """Build a DataSpec from raw entry-point parameters (validated; UsageError on bad values)."""
    from cxrstudy.params import as_float, as_int, optional

    synthetic = SyntheticConfig(
        n_patients=as_int("synthetic_patients", raw["synthetic_patients"], lo=10),
        shortcut_strength=as_float("shortcut_strength", raw["shortcut_strength"], lo=0.0, hi=10.0),
        seed=as_int("synthetic_seed", raw["synthetic_seed"], lo=0),
    )
    kwargs = dict(
        source=raw["source"],
        data_root=optional(raw["data_root"]),
        roots=parse_roots(raw["roots"]),
        image_size=image_size,
        synthetic=synthetic,
    )
    if optional(raw["cache_dir"]):
        kwargs["cache_dir"] = str(Path(raw["cache_dir"]).expanduser().resolve())
    return DataSpec(**kwargs)


