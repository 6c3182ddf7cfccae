"""Metadata mode: the label CSVs shipped inside the torchxrayvision wheel, no images.

The shipped files are read by the same readers and harmonised by the same ``harmonise``
functions as the real adapters; paths are the would-be paths relative to the hospital folder
(e.g. ``images/00000001_000.png``) and no missing-file check is made.

- cxp: ``chexpert_train.csv.gz`` (CheXpert-v1.0-small ``train.csv``; ``valid.csv`` is not shipped)
- nih: ``Data_Entry_2017_v2020.csv.gz``
- pad: ``PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz`` (an extra leading index column)
- mimic: not shipped, so metadata mode covers cxp, nih and pad only.

torchxrayvision is located without being imported (importing it loads torch).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.data.sources import chexpert, nih, padchest
from cxrstudy.data.sources.base import Source, files_fingerprint
from cxrstudy.errors import DataError
from cxrstudy.hospitals import canonical_hospital

SHIPPED_CSV = {
    "cxp": "chexpert_train.csv.gz",
    "nih": "Data_Entry_2017_v2020.csv.gz",
    "pad": "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz",
}


def shipped_data_dir() -> Path:
    """torchxrayvision's ``data/`` folder (found via its import spec, without importing it)."""
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None or not spec.origin:
        raise DataError("metadata mode needs the torchxrayvision package (its shipped label CSVs); it is not installed")
    return Path(spec.origin).parent / "data"


def shipped_csv(env: str) -> Path:
    """The shipped label CSV of hospital ``env`` (cxp, nih or pad)."""
    env = canonical_hospital(env)
    if env not in SHIPPED_CSV:
        raise DataError(
            f"metadata mode has no {env!r}: MIMIC-CXR is not shipped in torchxrayvision "
            "(metadata mode covers cxp, nih and pad; use source=real with the MIMIC-CXR-JPG files)"
        )
    path = shipped_data_dir() / SHIPPED_CSV[env]
    if not path.is_file():
        raise DataError(f"{path}: shipped label CSV not found in the installed torchxrayvision")
    return path


def harmonise_shipped(env: str, path: Path | None = None) -> pd.DataFrame:
    """The harmonised table of a shipped CSV (relative paths, nothing dropped for missing files)."""
    env = canonical_hospital(env)
    path = Path(path) if path is not None else shipped_csv(env)
    if env == "cxp":
        return chexpert.harmonise(chexpert.read_chexpert_csv(path), file=path, image_root=None)
    if env == "nih":
        return nih.harmonise(nih.read_entries_csv(path), file=path, image_root=None)
    if env == "pad":
        return padchest.harmonise(padchest.read_labels_csv(path), file=path, image_root=None, layout="dirs")
    shipped_csv(env)  # raises the clear mimic error
    raise AssertionError(env)


class MetadataSource(Source):
    """Labels and metadata of one hospital from torchxrayvision's shipped CSVs; no images."""

    kind = "metadata"
    has_images = False

    def __init__(self, env: str) -> None:
        super().__init__()
        self.env = canonical_hospital(env)
        self.csv_path = shipped_csv(self.env)
        self._table: pd.DataFrame | None = None
        if self.env == "cxp":
            self.notes.append("cxp (metadata): only CheXpert's train.csv is shipped; valid.csv rows are absent")
        self.notes.append(f"{self.env} (metadata): labels from {self.csv_path.name}; no images, paths are relative")

    def table(self) -> pd.DataFrame:
        if self._table is None:
            self._table = harmonise_shipped(self.env, self.csv_path)
        return self._table.copy(deep=False)

    def read_image(self, path: str, size: int) -> np.ndarray:
        raise DataError(f"{self.env}: metadata mode has no images (cannot read {path}); use source=real or synthetic")

    def fingerprint(self) -> str:
        fp = "metadata-" + files_fingerprint(self.csv_path)
        return f"{fp}-{chexpert.ID_RULE}" if self.env == "cxp" else fp

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_table"] = None
        return state
