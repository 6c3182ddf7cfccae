"""MIMIC-CXR-JPG 2.0.0, read as distributed (plus MIMIC-IV ``patients.csv`` for sex and age).

Files under the hospital folder (each plain or ``.gz``):

- ``mimic-cxr-2.0.0-metadata.csv``: dicom_id, subject_id, study_id, ViewPosition
- ``mimic-cxr-2.0.0-negbio.csv``: subject_id, study_id and the labeller's columns (NegBio labels,
  as the protocol says; ``Pleural Effusion`` renamed ``Effusion``; U-zeros)
- ``patients.csv`` at the root or in ``hosp/`` (MIMIC-IV): subject_id, gender, anchor_age.
  Optional: without it every row gets sex ``O`` and an unknown age, and a note says so.
- images at ``files/p<first two digits of subject>/p<subject>/s<study>/<dicom_id>.jpg``

Frontal rows: ``ViewPosition`` in {AP, PA}. Images whose study has no row in the NegBio file
have no labels and are left out (counted in a note), as in the published code, which joined
the label file to the metadata.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cxrstudy.data.sources.base import find_file, read_csv, require_columns
from cxrstudy.data.sources.tabular import (CsvRealSource, assemble, csv_label_sources, join_root, label_columns,
                                           read_columns)
from cxrstudy.errors import DataError

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
NEGBIO_CSV = "mimic-cxr-2.0.0-negbio.csv"
PATIENTS_CSV = ("patients.csv", "hosp/patients.csv")
FRONTAL_VIEWS = ("AP", "PA")
_IDS = {"subject_id": str, "study_id": str, "dicom_id": str}


def read_metadata_csv(path: Path) -> pd.DataFrame:
    return read_columns(path, ["dicom_id", "subject_id", "study_id", "ViewPosition"], dtype={**_IDS, "ViewPosition": str})


def read_negbio_csv(path: Path) -> pd.DataFrame:
    header = read_csv(path, nrows=0)
    label_cols = list(csv_label_sources(header.columns).values())
    return read_columns(path, ["subject_id", "study_id", *label_cols], dtype=_IDS)


def read_patients_csv(path: Path) -> pd.DataFrame:
    return read_columns(path, ["subject_id", "gender", "anchor_age"], dtype={"subject_id": str, "gender": str})


def _strip_ids(df: pd.DataFrame, cols) -> pd.DataFrame:
    df = df.copy()
    for c in cols:
        df[c] = df[c].astype(str).str.strip()
    return df


def harmonise(
    metadata: pd.DataFrame,
    negbio: pd.DataFrame,
    patients: pd.DataFrame | None = None,
    *,
    image_root=None,
    metadata_file=METADATA_CSV,
    negbio_file=NEGBIO_CSV,
    patients_file="patients.csv",
    notes: list[str] | None = None,
) -> pd.DataFrame:
    """MIMIC-CXR-JPG metadata + NegBio labels (+ patients) -> harmonised table of frontal images.

    ``image_root`` is the dataset folder (absolute paths) or None (relative ``files/...`` paths).
    Pure apart from appending human-readable remarks to ``notes``.
    """
    notes = notes if notes is not None else []
    require_columns(metadata, ["dicom_id", "subject_id", "study_id", "ViewPosition"], metadata_file)
    require_columns(negbio, ["subject_id", "study_id"], negbio_file)
    meta = metadata.loc[metadata["ViewPosition"].astype(str).str.strip().isin(FRONTAL_VIEWS)]
    meta = _strip_ids(meta, ["dicom_id", "subject_id", "study_id"])
    labels = _strip_ids(negbio, ["subject_id", "study_id"])
    dup = labels.duplicated(["subject_id", "study_id"])
    if dup.any():
        row = labels.loc[dup].iloc[0]
        raise DataError(
            f"{negbio_file}: study subject_id={row['subject_id']} study_id={row['study_id']} appears more than once; "
            "expected one label row per study"
        )
    lab = label_columns(labels, file=negbio_file)
    lab["subject_id"] = labels["subject_id"]
    lab["study_id"] = labels["study_id"]
    merged = meta.merge(lab, on=["subject_id", "study_id"], how="left", indicator=True)
    unlabelled = int((merged["_merge"] == "left_only").sum())
    if unlabelled:
        notes.append(f"mimic: left out {unlabelled} frontal images whose study has no row in {Path(str(negbio_file)).name}")
    merged = merged.loc[merged["_merge"] == "both"].drop(columns="_merge").reset_index(drop=True)

    if patients is not None:
        require_columns(patients, ["subject_id", "gender", "anchor_age"], patients_file)
        pat = _strip_ids(patients, ["subject_id"]).drop_duplicates("subject_id")
        pat = pat.set_index("subject_id")
        sex = merged["subject_id"].map(pat["gender"])
        age = merged["subject_id"].map(pd.to_numeric(pat["anchor_age"], errors="coerce"))
    else:
        sex = pd.Series(np.full(len(merged), "O", dtype=object))
        age = pd.Series(np.full(len(merged), np.nan))

    subj = merged["subject_id"]
    rel = "files/p" + subj.str[:2] + "/p" + subj + "/s" + merged["study_id"] + "/" + merged["dicom_id"] + ".jpg"
    label_names = [c for c in lab.columns if c not in ("subject_id", "study_id")]
    return assemble(
        env="mimic",
        subject=subj,
        study=merged["study_id"],
        path=join_root(image_root, rel),
        view=merged["ViewPosition"],
        sex=sex,
        age=age,
        labels=merged[label_names],
    )


class MimicSource(CsvRealSource):
    """MIMIC-CXR-JPG 2.0.0 on disk, frontal images only."""

    env = "mimic"

    def _locate_files(self) -> list[Path]:
        self.metadata_csv = find_file(self.root, METADATA_CSV)
        self.negbio_csv = find_file(self.root, NEGBIO_CSV)
        try:
            self.patients_csv: Path | None = find_file(self.root, *PATIENTS_CSV)
        except DataError:
            self.patients_csv = None
        files = [self.metadata_csv, self.negbio_csv]
        return files + ([self.patients_csv] if self.patients_csv else [])

    def _build(self) -> pd.DataFrame:
        patients = None
        if self.patients_csv is not None:
            patients = read_patients_csv(self.patients_csv)
        else:
            self.notes.append(
                f"mimic: no patients.csv (MIMIC-IV) in {self.root} or {self.root / 'hosp'}; sex recorded as O and age unknown"
            )
        return harmonise(
            read_metadata_csv(self.metadata_csv),
            read_negbio_csv(self.negbio_csv),
            patients,
            image_root=self.root,
            metadata_file=self.metadata_csv,
            negbio_file=self.negbio_csv,
            patients_file=self.patients_csv or "patients.csv",
            notes=self.notes,
        )
