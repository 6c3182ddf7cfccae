"""NIH ChestX-ray14, read as distributed: ``Data_Entry_2017.csv`` (or ``_v2020``) + PNG images.

Images may lie in ``images/`` (the NIH box archives all unpack there) or in the Kaggle layout
``images_001/images/``, ``images_002/images/``, ...; each file's location is found once by
listing those folders (one directory scan, no per-file stat). Every image is frontal.

A label is 1 when its exact name is among ``Finding Labels`` split on ``|``; a value outside the
15 NIH findings (:data:`NIH_FINDINGS`) is an error naming the file and the value. Subject id =
``Patient ID`` (as written in the CSV, e.g. ``"1"``); study id = ``"<Patient ID>_<Follow-up #>"``.
Age may be a number or the 2017 form ``058Y`` (``M``/``W``/``D`` suffixes are converted to years).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.data.sources.base import find_file, require_columns
from cxrstudy.data.sources.tabular import CsvRealSource, assemble, join_root, read_columns
from cxrstudy.errors import DataError
from cxrstudy.labels import DISEASES, add_any

CSV_NAMES = ("Data_Entry_2017_v2020.csv", "Data_Entry_2017.csv")
REQUIRED = ("Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender")
OPTIONAL = ("View Position",)
_DTYPE = {"Image Index": str, "Finding Labels": str, "Follow-up #": str, "Patient ID": str, "Patient Gender": str, "View Position": str}
_AGE_UNIT = {"": 1.0, "Y": 1.0, "M": 1 / 12, "W": 1 / 52, "D": 1 / 365}


def read_entries_csv(path: Path) -> pd.DataFrame:
    return read_columns(path, REQUIRED, OPTIONAL, dtype=_DTYPE)


def parse_age(values: pd.Series) -> pd.Series:
    """Ages as numbers or like ``058Y`` / ``011M`` -> years (float; NaN when unreadable)."""
    if pd.api.types.is_numeric_dtype(values.dtype):
        return values.astype(float)
    m = values.astype("string").str.strip().str.upper().str.extract(r"^(\d+(?:\.\d+)?)\s*([YMWD]?)$")
    num = pd.to_numeric(m[0], errors="coerce")
    unit = m[1].fillna("").map(_AGE_UNIT).astype(float)
    return (num * unit).astype(float)


#: the 15 values ``Finding Labels`` may hold (the 14 findings and ``No Finding``), as NIH writes them
NIH_FINDINGS = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema", "Fibrosis",
                "Hernia", "Infiltration", "Mass", "No Finding", "Nodule", "Pleural_Thickening", "Pneumonia",
                "Pneumothorax")


def check_findings(findings: pd.Series, file) -> None:
    """A DataError naming the file, the first unknown value and the allowed findings when a
    ``Finding Labels`` entry holds anything but ``|``-separated NIH findings (blank is left alone)."""
    tokens = findings.dropna().astype(str).str.split("|").explode().str.strip()
    tokens = tokens[tokens != ""]
    bad = tokens[~tokens.isin(NIH_FINDINGS)]
    if len(bad):
        n_rows = bad.index.nunique()
        raise DataError(
            f"{file}: column 'Finding Labels' has value {bad.iloc[0]!r} ({n_rows} row(s) with values outside the "
            f"NIH findings, e.g. {findings.loc[bad.index[0]]!r}); expected '|'-separated values from: "
            f"{', '.join(NIH_FINDINGS)}")


def finding_labels(findings: pd.Series) -> pd.DataFrame:
    """Exact-name matching on ``|``-separated findings: the eight labels plus ``Any``."""
    wrapped = "|" + findings.astype("string").fillna("").str.replace(r"\s*\|\s*", "|", regex=True).str.strip() + "|"
    out = pd.DataFrame(index=findings.index)
    for lab in ("No Finding",) + DISEASES:
        out[lab] = wrapped.str.contains("|" + lab + "|", regex=False).to_numpy(dtype=np.uint8)
    return add_any(out)


def harmonise(entries: pd.DataFrame, *, file, image_root=None, image_index: dict[str, str] | None = None) -> pd.DataFrame:
    """The Data_Entry CSV -> harmonised table (all rows: every NIH image is frontal).

    Paths: ``image_index[name]`` when given and the file is listed there, else
    ``image_root/images/<name>`` (which the missing-file check then drops), or
    ``images/<name>`` when ``image_root`` is None (metadata mode). Pure: no file access.
    """
    require_columns(entries, REQUIRED, file)
    e = entries.reset_index(drop=True)
    check_findings(e["Finding Labels"], file)
    names = e["Image Index"].astype(str).str.strip()
    path = join_root(image_root, "images/" + names)
    if image_index is not None:
        found = names.map(image_index)
        path = found.where(found.notna(), path)
    subject = e["Patient ID"].astype(str).str.strip()
    view = e["View Position"] if "View Position" in e.columns else pd.Series([""] * len(e))
    return assemble(
        env="nih",
        subject=subject,
        study=subject + "_" + e["Follow-up #"].astype(str).str.strip(),
        path=path,
        view=view,
        sex=e["Patient Gender"],
        age=parse_age(e["Patient Age"]),
        labels=finding_labels(e["Finding Labels"]),
    )


def image_folders(root: Path) -> list[Path]:
    """``root/images`` and, in the Kaggle layout, ``root/images_NNN/images`` (or ``images_NNN`` itself)."""
    out = []
    if (root / "images").is_dir():
        out.append(root / "images")
    for d in sorted(root.glob("images_*")):
        if (d / "images").is_dir():
            out.append(d / "images")
        elif d.is_dir():
            out.append(d)
    return out


def index_images(root: Path) -> dict[str, str]:
    """File name -> absolute path for every ``.png`` in the image folders (first one wins)."""
    index: dict[str, str] = {}
    for folder in image_folders(root):
        with os.scandir(folder) as it:
            for entry in it:
                if entry.name.endswith(".png") and entry.name not in index:
                    index[entry.name] = entry.path
    return index


class NihSource(CsvRealSource):
    """NIH ChestX-ray14 on disk."""

    env = "nih"

    def _locate_files(self) -> list[Path]:
        return [find_file(self.root, *CSV_NAMES)]

    def _build(self) -> pd.DataFrame:
        path = self.csv_files[0]
        index = index_images(self.root)
        if not index:
            self.notes.append(f"nih: no .png images found under {self.root}/images or {self.root}/images_*/images")
        return harmonise(read_entries_csv(path), file=path, image_root=self.root, image_index=index)
