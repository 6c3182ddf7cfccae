"""CheXpert v1.0 (full or ``-small``), read as distributed: ``train.csv`` + ``valid.csv`` + images.

The hospital folder is the unpacked dataset folder (the one holding ``train.csv``, ``valid.csv``,
``train/`` and ``valid/``); a folder holding exactly one ``CheXpert-v1.0*`` dataset folder is
accepted too. The CSV's ``Path`` column (``CheXpert-v1.0-small/train/patient00001/study1/
view1_frontal.jpg``) is resolved relative to that dataset folder: its first component is
dropped unless it is already ``train`` or ``valid``.

Subject id: the number of the ``patientNNNNN`` folder parsed as an integer and written back
**without zero padding** (``patient00010`` -> ``"10"``), as the published code does. Ids are
sorted as strings for the split, so ``"10"`` sorts before ``"2"``: this order sets the split.
Study id: ``"<subject>_<study folder>"`` (``"1_study1"``). Frontal rows only (``Frontal/Lateral == Frontal``); view from
``AP/PA``. Labels from the CSV's columns with ``Pleural Effusion`` renamed ``Effusion`` and
U-zeros (:func:`cxrstudy.labels.normalise_values`).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cxrstudy.data.sources.base import find_file, read_csv, require_columns
from cxrstudy.data.sources.tabular import (CsvRealSource, assemble, csv_label_sources, join_root, label_columns,
                                           read_columns)
from cxrstudy.errors import DataError

CSV_NAMES = ("train.csv", "valid.csv")
# Bumped whenever the id rule changes: part of the source fingerprint, hence of a run's identity.
ID_RULE = "ids-int"
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


def subject_ids(digits: pd.Series) -> pd.Series:
    """``"00010"`` -> ``"10"``: the folder number as the published code parses it (int, then str)."""
    return digits.astype(str).map(lambda d: str(int(d)))


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
    subject = subject_ids(ids[0])
    return assemble(
        env="cxp",
        subject=subject,
        study=subject + "_" + ids[1],
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

    def _fingerprint_extra(self) -> str:
        return ID_RULE

    def _build(self) -> pd.DataFrame:
        parts = [harmonise(read_chexpert_csv(p), file=p, image_root=self.dataset_dir) for p in self.csv_files]
        return pd.concat(parts, ignore_index=True)
