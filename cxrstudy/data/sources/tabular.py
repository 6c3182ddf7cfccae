"""Pieces shared by the real adapters whose datasets are described by CSV files.

:func:`read_columns` reads only the needed columns and checks them; :func:`label_columns` maps a
CSV's label columns to the protocol's labels with U-zeros; :func:`assemble` builds the
harmonised table; :class:`CsvRealSource` caches the table, drops rows whose image is missing,
decodes images and fingerprints the CSVs it read.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.data.images import decode_image
from cxrstudy.data.schema import age_bin, finalize, sex_code
from cxrstudy.data.sources.base import Source, drop_missing_images, files_fingerprint, read_csv, require_columns
from cxrstudy.labels import DISEASES, add_any, normalise_values


def read_columns(path: Path, required, optional=(), dtype=None) -> pd.DataFrame:
    """Read only the named columns of a (plain or gzipped) CSV.

    A missing required column raises :class:`DataError` naming the file and listing what it
    has. ``dtype`` entries for columns that are absent are ignored.
    """
    header = read_csv(path, nrows=0)
    require_columns(header, list(required), path)
    wanted = list(dict.fromkeys([*required, *[c for c in optional if c in header.columns]]))
    dtype = {k: v for k, v in (dtype or {}).items() if k in wanted}
    return read_csv(path, usecols=wanted, dtype=dtype or None)


#: The protocol's labels as CheXpert-style column names (CheXpert, MIMIC-CXR NegBio/CheXpert).
CSV_LABEL_COLUMNS = {lab: ("Pleural Effusion" if lab == "Effusion" else lab) for lab in ("No Finding",) + DISEASES}


def csv_label_sources(columns) -> dict[str, str]:
    """Protocol label -> the CSV column holding it (``Pleural Effusion``, or ``Effusion`` if so named)."""
    out = {}
    for lab, col in CSV_LABEL_COLUMNS.items():
        if col not in columns and lab in columns:
            col = lab
        out[lab] = col
    return out


def label_columns(df: pd.DataFrame, *, file) -> pd.DataFrame:
    """The eight CSV label columns normalised to 0/1 (U-zeros) plus ``Any``; same index as ``df``."""
    sources = csv_label_sources(df.columns)
    require_columns(df, list(sources.values()), file)
    out = pd.DataFrame(index=df.index)
    for lab, col in sources.items():
        out[lab] = normalise_values(df[col], file=str(file), column=col)
    return add_any(out)


def assemble(*, env: str, subject, study, path, view, sex, age, labels: pd.DataFrame) -> pd.DataFrame:
    """Build the harmonised table (:data:`cxrstudy.data.schema.COLUMNS`) from aligned columns."""
    n = len(labels)
    t = pd.DataFrame(
        {
            "env": np.full(n, env, dtype=object),
            "subject_id": _text(subject),
            "study_id": _text(study),
            "path": _text(path),
            "view": _text(view),
            "sex": sex_code(pd.Series(np.asarray(sex, dtype=object))).to_numpy(),
            "age_bin": age_bin(pd.Series(np.asarray(age, dtype=float))).to_numpy(),
        }
    )
    for c in labels.columns:
        t[c] = labels[c].to_numpy(dtype=np.uint8)
    return finalize(t)


def _text(values) -> np.ndarray:
    s = pd.Series(np.asarray(values, dtype=object))
    return s.where(s.notna(), "").astype(str).str.strip().to_numpy(dtype=object)


def join_root(image_root, rel: pd.Series) -> pd.Series:
    """``image_root/rel`` as strings; ``rel`` unchanged when ``image_root`` is None (metadata mode)."""
    if image_root is None:
        return rel
    return str(image_root) + os.sep + rel


class CsvRealSource(Source):
    """Shared behaviour of the real adapters: the table is built once (cached), rows whose image
    is missing dropped and counted; images decoded by :func:`cxrstudy.data.images.decode_image`;
    fingerprint = the label CSVs read. The cached table is not pickled (workers only read images).
    """

    kind = "real"

    def __init__(self, root) -> None:
        super().__init__()
        self.root = Path(root).resolve()
        self._table: pd.DataFrame | None = None
        self.csv_files: list[Path] = self._locate_files()

    def _locate_files(self) -> list[Path]:
        raise NotImplementedError

    def _build(self) -> pd.DataFrame:
        raise NotImplementedError

    def _fingerprint_extra(self) -> str:
        return ""

    def table(self) -> pd.DataFrame:
        if self._table is None:
            self._table = drop_missing_images(self, self._build())
        return self._table.copy(deep=False)

    def read_image(self, path: str, size: int) -> np.ndarray:
        return decode_image(path, size)

    def fingerprint(self) -> str:
        fp = files_fingerprint(*self.csv_files)
        extra = self._fingerprint_extra()
        return f"{fp}-{extra}" if extra else fp

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_table"] = None
        return state


# ----------------------------------------------------------------------------------------------
# CheXpert
