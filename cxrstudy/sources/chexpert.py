"""CheXpert v1.0 (full or ``-small``), read as distributed: ``train.csv`` + ``valid.csv`` + images.

The hospital folder is the unpacked dataset folder (the one holding ``train.csv``, ``valid.csv``,
``train/`` and ``valid/``); a folder holding exactly one ``CheXpert-v1.0*`` dataset folder is
accepted too. The CSV's ``Path`` column (``CheXpert-v1.0-small/train/patient00001/study1/
view1_frontal.jpg``) is resolved relative to that dataset folder: its first component is
dropped unless it is already ``train`` or ``valid``.

Subject id: the digits of the ``patientNNNNN`` folder **as written, zero-padded**
(``"00001"``), so lexicographic order equals numeric order. Study id: ``"<subject>_<study
folder>"`` (``"00001_study1"``). Frontal rows only (``Frontal/Lateral == Frontal``); view from
``AP/PA``. Labels from the CSV's columns with ``Pleural Effusion`` renamed ``Effusion`` and
U-zeros (:func:`cxrstudy.labels.normalise_values`).

This module also holds the pieces shared by the four real adapters (:func:`read_columns`,
:func:`label_columns`, :class:`CsvRealSource`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from ..images import decode_image
from ..labels import DISEASES, add_any, normalise_values
from ..schema import age_bin, finalize, sex_code
from .base import Source, drop_missing_images, files_fingerprint, find_file, read_csv, require_columns

# ----------------------------------------------------------------------------------------------
# Shared by the real adapters


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
    """Build the harmonised table (:data:`cxrstudy.schema.COLUMNS`) from aligned columns."""
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
    is missing dropped and counted; images decoded by :func:`cxrstudy.images.decode_image`;
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

CSV_NAMES = ("train.csv", "valid.csv")
REQUIRED = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")


def dataset_dir(root: Path) -> Path:
    """The folder holding ``train.csv``: ``root`` itself or its single ``CheXpert-v1.0*`` subfolder."""
    root = Path(root)
    if any((root / n).is_file() for n in ("train.csv", "train.csv.gz")):
        return root
    subs = [
        d
        for d in sorted(root.glob("CheXpert-v1.0*"))
        if d.is_dir() and any((d / n).is_file() for n in ("train.csv", "train.csv.gz"))
    ]
    if len(subs) == 1:
        return subs[0]
    return root  # find_file then names what is missing


def read_chexpert_csv(path: Path) -> pd.DataFrame:
    """The columns the adapter uses from one CheXpert CSV (clear error if any is missing)."""
    header = read_csv(path, nrows=0)
    label_cols = list(csv_label_sources(header.columns).values())
    return read_columns(path, [*REQUIRED, *label_cols], dtype={"Path": str, "Sex": str, "Frontal/Lateral": str, "AP/PA": str})


def relative_paths(paths: pd.Series) -> pd.Series:
    """``CheXpert-v1.0-small/train/...`` -> ``train/...``; ``train/...``/``valid/...`` unchanged."""
    p = paths.astype(str).str.strip().str.replace("\\", "/", regex=False).str.lstrip("/")
    return p.str.replace(r"^(?!(?:train|valid)/)[^/]+/", "", regex=True)


def harmonise(csv: pd.DataFrame, *, file, image_root=None) -> pd.DataFrame:
    """One CheXpert CSV -> harmonised table of its frontal rows.

    ``image_root`` is the dataset folder (paths become absolute) or None (metadata mode:
    paths stay relative to it, e.g. ``train/patient00001/study1/view1_frontal.jpg``).
    Pure: no file access.
    """
    require_columns(csv, REQUIRED, file)
    frontal = csv.loc[csv["Frontal/Lateral"].astype(str).str.strip() == "Frontal"].reset_index(drop=True)
    rel = relative_paths(frontal["Path"])
    ids = rel.str.extract(r"(?:^|/)patient(\d+)/(study\d+)/")
    bad = ids[0].isna()
    if bad.any():
        raise DataError(
            f"{file}: column 'Path' has value {frontal['Path'][bad].iloc[0]!r}; "
            "expected .../patientNNNNN/studyN/<image>.jpg"
        )
    return assemble(
        env="cxp",
        subject=ids[0],
        study=ids[0] + "_" + ids[1],
        path=join_root(image_root, rel),
        view=frontal["AP/PA"],
        sex=frontal["Sex"],
        age=pd.to_numeric(frontal["Age"], errors="coerce"),
        labels=label_columns(frontal, file=file),
    )


class CheXpertSource(CsvRealSource):
    """CheXpert v1.0 on disk (train + valid), frontal images only."""

    env = "cxp"

    def _locate_files(self) -> list[Path]:
        self.dataset_dir = dataset_dir(self.root)
        return [find_file(self.dataset_dir, n) for n in CSV_NAMES]

    def _build(self) -> pd.DataFrame:
        parts = [harmonise(read_chexpert_csv(p), file=p, image_root=self.dataset_dir) for p in self.csv_files]
        return pd.concat(parts, ignore_index=True)
