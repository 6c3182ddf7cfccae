"""PadChest, read as distributed: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv`` + PNGs.

Image layouts: the full release (16-bit PNG) in numbered folders ``<ImageDir>/<ImageID>``, or
the flat, downscaled ``images-224/<ImageID>``. When ``images-224/`` exists it is used (the
layout torchxrayvision and the published code read, and far cheaper to decode); otherwise the
numbered folders. ``layout=`` overrides. 16-bit images are scaled to 8 bits by their own range
(:func:`cxrstudy.data.images.decode_image`).

Rows: ``Projection`` in {PA, AP, AP_horizontal}; rows whose ``Labels`` is missing or contains
``exclude`` or ``unchanged`` are dropped. A label is 1 when its lower-case name is a substring
of the lower-case ``Labels`` string; ``Effusion`` also matches ``hydropneumothorax``,
``empyema``, ``hemothorax``; ``Consolidation`` also matches ``air bronchogram``; ``No Finding``
matches ``normal`` (and ``no finding``). Note that, by the substring rule, ``pericardial
effusion`` counts as Effusion, ``hydropneumothorax`` as Pneumothorax and ``abnormal foreign
body`` as No Finding (68 images in the release).

Subject = ``PatientID``, study = ``StudyID``, sex = ``PatientSex_DICOM``, age = year of
``StudyDate_DICOM`` minus ``PatientBirth``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.data.sources.base import find_file, require_columns
from cxrstudy.data.sources.tabular import CsvRealSource, assemble, join_root, read_columns
from cxrstudy.errors import UsageError
from cxrstudy.labels import DISEASES, add_any

CSV_NAME = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"
REQUIRED = ("ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM", "Projection", "Labels")
_DTYPE = {"ImageID": str, "ImageDir": str, "StudyDate_DICOM": str, "StudyID": str, "PatientID": str, "PatientSex_DICOM": str, "Projection": str, "Labels": str}
FRONTAL_PROJECTIONS = ("PA", "AP", "AP_horizontal")
DROP_IF_CONTAINS = ("exclude", "unchanged")
LAYOUTS = ("dirs", "images224")

#: Lower-case substrings that set each label (its own name first, then the protocol's extras).
PATTERNS = {lab: (lab.lower(),) for lab in ("No Finding",) + DISEASES}
PATTERNS["Effusion"] += ("hydropneumothorax", "empyema", "hemothorax")
PATTERNS["Consolidation"] += ("air bronchogram",)
PATTERNS["No Finding"] += ("normal",)


def read_labels_csv(path: Path) -> pd.DataFrame:
    return read_columns(path, REQUIRED, dtype=_DTYPE)


def string_labels(labels: pd.Series) -> pd.DataFrame:
    """The substring rules on a (lower-cased here) ``Labels`` column: eight labels plus ``Any``."""
    low = labels.astype("string").fillna("").str.lower()
    out = pd.DataFrame(index=labels.index)
    for lab, pats in PATTERNS.items():
        hit = np.zeros(len(low), dtype=bool)
        for p in pats:
            hit |= low.str.contains(p, regex=False).to_numpy(dtype=bool)
        out[lab] = hit.astype(np.uint8)
    return add_any(out)


def keep_rows(csv: pd.DataFrame) -> pd.Series:
    """Frontal projection, and ``Labels`` present without ``exclude``/``unchanged``."""
    proj = csv["Projection"].astype("string").str.strip()
    low = csv["Labels"].astype("string").str.lower()
    keep = proj.isin(FRONTAL_PROJECTIONS).fillna(False) & low.notna()
    for word in DROP_IF_CONTAINS:
        keep &= ~low.str.contains(word, regex=False).fillna(True)
    return keep.astype(bool)


def study_age(study_date: pd.Series, birth: pd.Series) -> pd.Series:
    year = pd.to_numeric(study_date.astype("string").str.strip().str[:4], errors="coerce")
    return (year - pd.to_numeric(birth, errors="coerce")).astype(float)


def harmonise(csv: pd.DataFrame, *, file, image_root=None, layout: str = "dirs") -> pd.DataFrame:
    """The PadChest CSV -> harmonised table of its kept frontal rows.

    ``layout`` ``dirs``: ``<ImageDir>/<ImageID>``; ``images224``: ``images-224/<ImageID>``;
    relative to ``image_root`` (None = metadata mode, relative paths). Pure: no file access.
    """
    if layout not in LAYOUTS:
        raise UsageError(f"unknown PadChest layout {layout!r}; expected one of: {', '.join(LAYOUTS)}")
    require_columns(csv, REQUIRED, file)
    c = csv.loc[keep_rows(csv)].reset_index(drop=True)
    image_id = c["ImageID"].astype(str).str.strip()
    if layout == "dirs":
        image_dir = c["ImageDir"].astype(str).str.strip().str.replace(r"\.0$", "", regex=True)
        rel = image_dir + "/" + image_id
    else:
        rel = "images-224/" + image_id
    return assemble(
        env="pad",
        subject=c["PatientID"],
        study=c["StudyID"],
        path=join_root(image_root, rel),
        view=c["Projection"],
        sex=c["PatientSex_DICOM"],
        age=study_age(c["StudyDate_DICOM"], c["PatientBirth"]),
        labels=string_labels(c["Labels"]),
    )


def detect_layout(root: Path) -> str:
    return "images224" if (Path(root) / "images-224").is_dir() else "dirs"


class PadChestSource(CsvRealSource):
    """PadChest on disk (full 16-bit release in numbered folders, or images-224)."""

    env = "pad"

    def __init__(self, root, layout: str = "auto") -> None:
        if layout not in ("auto",) + LAYOUTS:
            raise UsageError(f"unknown PadChest layout {layout!r}; expected auto, {', '.join(LAYOUTS)}")
        self.layout = detect_layout(root) if layout == "auto" else layout
        super().__init__(root)

    def _locate_files(self) -> list[Path]:
        return [find_file(self.root, CSV_NAME)]

    def _fingerprint_extra(self) -> str:
        return self.layout

    def _build(self) -> pd.DataFrame:
        path = self.csv_files[0]
        self.notes.append(f"pad: images read from the {'images-224/' if self.layout == 'images224' else 'numbered folders'} layout")
        return harmonise(read_labels_csv(path), file=path, image_root=self.root, layout=self.layout)
