"""One interface over every hospital source (real files, shipped metadata, synthetic)."""

from __future__ import annotations

import gzip
import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.errors import DataError


class Source(ABC):
    """A hospital's data: a harmonised table and a way to read one image.

    ``table()`` returns the columns of :data:`cxrstudy.data.schema.COLUMNS`, frontal images only,
    rows with missing image files already dropped (their count in ``dropped_missing``).
    ``read_image(path, size)`` returns a ``(size, size)`` uint8 grayscale array; it raises
    on a corrupt or missing file (the cache builder counts and skips those).
    Sources must be picklable: the cache builder sends them to worker processes.
    """

    #: hospital name: mimic, cxp, nih or pad
    env: str
    #: "real", "metadata" or "synthetic"
    kind: str
    #: True when images can be read (False for metadata mode)
    has_images: bool = True

    def __init__(self) -> None:
        self.dropped_missing = 0
        self.notes: list[str] = []

    @abstractmethod
    def table(self) -> pd.DataFrame: ...

    @abstractmethod
    def read_image(self, path: str, size: int) -> np.ndarray: ...

    @abstractmethod
    def fingerprint(self) -> str:
        """A string that changes whenever the images or labels this source yields could change."""

    def describe(self) -> str:
        return f"{self.env} ({self.kind})"


def find_file(root: Path, *names: str) -> Path:
    """The first of ``names`` (or its ``.gz``) that exists under ``root``; a clear error otherwise."""
    for n in names:
        for cand in (root / n, root / (n + ".gz")):
            if cand.is_file():
                return cand
    tried = ", ".join(names)
    raise DataError(f"{root}: none of the expected files found ({tried}, plain or .gz)")


def read_csv(path: Path, **kw) -> pd.DataFrame:
    """Read a plain or gzipped CSV; a clear error if it cannot be parsed."""
    try:
        return pd.read_csv(path, low_memory=False, **kw)
    except (OSError, ValueError, gzip.BadGzipFile, pd.errors.ParserError) as e:
        raise DataError(f"{path}: cannot read as CSV ({e})") from e


def require_columns(df: pd.DataFrame, columns, file) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{file}: missing column(s) {missing}; found {list(df.columns)[:20]}")


def files_fingerprint(*paths: Path) -> str:
    """Hash of the paths, sizes and modification times of the given files."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{Path(p).resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def drop_missing_images(source: Source, table: pd.DataFrame) -> pd.DataFrame:
    """Drop rows whose image file does not exist; count them on the source (docs/PROTOCOL.md)."""
    exists = np.fromiter((os.path.isfile(p) for p in table["path"]), dtype=bool, count=len(table))
    source.dropped_missing = int((~exists).sum())
    if source.dropped_missing:
        source.notes.append(f"{source.env}: dropped {source.dropped_missing} rows whose image file is missing")
    return table.loc[exists].reset_index(drop=True)
