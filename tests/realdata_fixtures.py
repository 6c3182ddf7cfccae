"""Miniature copies of the four hospitals' datasets, in their distributed layout and CSV schema.

Each ``make_*`` writes one hospital folder and returns a :class:`MiniDataset` describing what a
correct adapter must produce from it:

- ``make_mimic(root, gz=True, patients="hosp")``  MIMIC-CXR-JPG 2.0.0 (+ MIMIC-IV patients.csv
  in ``hosp/``, at the root with ``patients="root"``, or absent with ``patients=None``)
- ``make_cxp(root, small=True, gz=False, prefix=True, nested=False)``  CheXpert v1.0(-small);
  ``prefix=False`` writes ``Path`` values starting with ``train/``; ``nested=True`` puts the
  dataset in ``root/CheXpert-v1.0[-small]/`` as the zip unpacks
- ``make_nih(root, layout="flat"|"box", version="v2020"|"2017", gz=False)``  ChestX-ray14
  (``box`` = Kaggle's ``images_001/images/``...; ``2017`` = trailing comma and ``058Y`` ages)
- ``make_pad(root, layout="dirs"|"images224", gz=True)``  PadChest (16-bit PNGs in numbered
  folders, or 8-bit ``images-224/``)
- ``make_data_root(tmp_path)``  all four under ``data_root/{mimic,cxp,nih,pad}``; returns a dict
  ``{"data_root": Path, "mimic": MiniDataset, "cxp": ..., "nih": ..., "pad": ...}``
- ``make_trainable_data_root(tmp_path, envs, n_patients)``  the same layouts with ``n_patients`` more
  generated patients per hospital: large enough to train, validate and score on (see below)

Every ``make_*`` takes ``n_patients=N`` (default 0): N generated patients added to the hand-written
rows, each with two frontal images in two studies, one positive for Effusion (so ``Any`` is 1) and
one with No Finding (``Any`` is 0). Whatever split a patient falls in, it brings one image of each
label value, so every (hospital, label value) group of val and test holds about N/10 images. The
positive image carries a bright disc in its centre (:func:`signal_disc`): a model can learn the
label. Generated subject ids are long and distinctive (``extra["generated_subjects"]``), so a test
can search artifacts for them.

Every hospital has several subjects with several images, rows the frontal rule must drop, one
frontal row whose image file is missing (``missing_path``: dropped and counted) and one
truncated image (``truncated_path``: stays in the table; decoding it raises).
``expected[path]`` holds the exact positive labels (of the nine) of hand-chosen rows.
"""

from __future__ import annotations

import csv
import gzip
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from cxrstudy.labels import LABELS

IMG = 40  # pixel size of the written images (small: fast to write and decode)


@dataclass
class MiniDataset:
    env: str
    root: Path  # the hospital folder to open
    rows: int  # rows the harmonised table must have (after frontal rule, drops, missing files)
    dropped_missing: int  # rows dropped because the image file is missing
    missing_path: str  # absolute path of the missing image (must not be in the table)
    truncated_path: str  # absolute path of the truncated image (in the table; decode raises)
    subjects: set = field(default_factory=set)  # subject ids expected in the table
    expected: dict = field(default_factory=dict)  # abs path -> frozenset of positive labels (others 0)
    excluded_paths: set = field(default_factory=set)  # abs paths of on-disk images the rules must drop
    csv_files: list = field(default_factory=list)  # the label CSVs written
    extra: dict = field(default_factory=dict)  # dataset-specific facts for the tests


def positives(*labels: str) -> frozenset:
    """Positive labels of a row, with ``Any`` added when any disease is positive."""
    s = set(labels)
    assert s <= set(LABELS), s
    if s - {"No Finding", "Any"}:
        s.add("Any")
    return frozenset(s)


def label_vector(pos: frozenset) -> dict:
    return {lab: int(lab in pos) for lab in LABELS}


# ------------------------------------------------------------------------------------------------
# writing helpers


def _pixels(seed: int, size: int = IMG, signal: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = np.linspace(30, 220, size)[None, :] + np.linspace(0, 20, size)[:, None]
    if signal:
        base = base + signal_disc(size)
    return np.clip(base + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)


def signal_disc(size: int = IMG) -> np.ndarray:
    """The learnable signal of a positive generated image: +120 grey levels on a centred disc of
    radius ``size / 4`` (survives resizing to 32 px and the training augmentation)."""
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    return 120.0 * (((yy - c) ** 2 + (xx - c) ** 2) <= (size / 4) ** 2)


def write_jpeg(path: Path, seed: int = 0, signal: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed, signal=signal), mode="L").save(path, format="JPEG", quality=90)
    return path


def write_png8(path: Path, seed: int = 0, signal: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(seed, signal=signal), mode="L").save(path, format="PNG")
    return path


def write_png16(path: Path, seed: int = 0, lo: int = 0, hi: int = 4095, arr: np.ndarray | None = None,
                signal: bool = False) -> Path:
    """A 16-bit grayscale PNG (values ``lo``..``hi`` unless ``arr`` is given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr is None:
        arr = lo + (_pixels(seed, signal=signal).astype(np.float64) / 255.0) * (hi - lo)
    Image.fromarray(np.asarray(arr).astype(np.uint16)).save(path, format="PNG")
    return path


def ramp16(lo: int = 1000, hi: int = 3000, size: int = IMG) -> np.ndarray:
    """A 16-bit test image whose values run exactly from ``lo`` to ``hi``."""
    return np.round(np.linspace(lo, hi, size * size)).astype(np.uint16).reshape(size, size)


def truncate(path: Path, keep: float = 0.4) -> Path:
    """Cut a written image file short so that decoding it fails."""
    data = path.read_bytes()
    path.write_bytes(data[: max(64, int(len(data) * keep))])
    return path


def write_csv(path: Path, header: list[str], rows: list[list], gz: bool = False, trailing_comma: bool = False) -> Path:
    """Write a CSV (``.gz`` appended when ``gz``); ``None`` cells are written blank."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    for r in [header, *rows]:
        cells = ["" if v is None else v for v in r]
        if trailing_comma:
            cells = cells + [""]
        w.writerow(cells)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt", newline="") as f:
            f.write(buf.getvalue())
    else:
        path.write_text(buf.getvalue())
    return path


# ------------------------------------------------------------------------------------------------
# MIMIC-CXR-JPG 2.0.0

MIMIC_NEGBIO_COLUMNS = [
    "subject_id", "study_id", "Atelectasis", "Cardiomegaly", "Consolidation", "Edema",
    "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity", "No Finding",
    "Pleural Effusion", "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices",
]
MIMIC_METADATA_COLUMNS = [
    "dicom_id", "subject_id", "study_id", "PerformedProcedureStepDescription", "ViewPosition",
    "Rows", "Columns", "StudyDate", "StudyTime", "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning", "PatientOrientationCodeSequence_CodeMeaning",
]


def make_mimic(root, gz: bool = True, patients: str | None = "hosp", n_patients: int = 0) -> MiniDataset:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # subject -> (gender, anchor_age)
    people = {"10000032": ("F", 52), "10000764": ("M", 86), "11000011": ("F", 19), "19999987": ("M", 35),
              "12000005": ("M", 70), "15000010": ("F", 61)}
    # (subject, study, dicom, ViewPosition, disk state)
    images = [
        ("10000032", "50000001", "d01", "AP", "ok"),
        ("10000032", "50000001", "d02", "LATERAL", "ok"),
        ("10000032", "50000002", "d03", "PA", "ok"),
        ("10000032", "50000002", "d04", "LL", "ok"),
        ("10000764", "50000003", "d05", "AP", "ok"),
        ("10000764", "50000003", "d06", "PA", "ok"),
        ("10000764", "50000004", "d07", "AP", "ok"),
        ("11000011", "50000005", "d08", "PA", "ok"),
        ("11000011", "50000005", "d09", "LATERAL", "ok"),
        ("11000011", "50000006", "d10", "AP", "ok"),
        ("11000011", "50000006", "d11", None, "ok"),  # no ViewPosition: not frontal
        ("19999987", "50000007", "d12", "AP", "missing"),
        ("19999987", "50000008", "d13", "PA", "truncated"),
        ("19999987", "50000008", "d14", "AP", "ok"),
        ("12000005", "50000009", "d15", "AP", "ok"),  # study without a NegBio row: left out
        ("15000010", "50000010", "d16", "PA", "ok"),
        ("15000010", "50000010", "d17", "LATERAL", "ok"),
        ("15000010", "50000011", "d18", "AP", "ok"),
        ("15000010", "50000011", "d19", "AP", "ok"),
        ("15000010", "50000012", "d20", "PA", "ok"),
    ]
    # study -> {column: value}; unlisted label columns are blank
    labels = {
        "50000001": {"Pleural Effusion": 1.0, "Cardiomegaly": -1.0, "Support Devices": 1.0},
        "50000002": {"No Finding": 1.0},
        "50000003": {"Atelectasis": 1.0, "Consolidation": 1.0, "Pneumonia": 0.0, "Lung Opacity": 1.0},
        "50000004": {"Pneumothorax": 1.0, "Edema": 1.0, "Pleural Effusion": 0.0},
        "50000005": {"Pneumonia": -1.0, "Edema": -1.0, "Fracture": 1.0},
        "50000006": {"Cardiomegaly": 1.0},
        "50000007": {"Edema": 1.0},
        "50000008": {"No Finding": 1.0},
        "50000010": {"Pneumonia": 1.0, "Pleural Other": 1.0},
        "50000011": {"Enlarged Cardiomediastinum": 1.0, "No Finding": None},
        "50000012": {"Atelectasis": 0.0, "Pleural Effusion": -1.0},
    }
    want = {  # dicom -> positive labels
        "d01": positives("Effusion"), "d03": positives("No Finding"), "d05": positives("Atelectasis", "Consolidation"),
        "d06": positives("Atelectasis", "Consolidation"), "d07": positives("Pneumothorax", "Edema"),
        "d08": positives(), "d10": positives("Cardiomegaly"), "d14": positives("No Finding"),
        "d16": positives("Pneumonia"), "d18": positives(), "d20": positives(),
    }
    generated, signal = set(), set()
    for k in range(n_patients):  # generated patients: one Effusion study, one No Finding study
        s = f"{17000000 + k}"
        people[s] = ("F" if k % 2 else "M", 30 + k % 50)
        generated.add(s)
        for j, (vals, pos) in enumerate((({"Pleural Effusion": 1.0}, positives("Effusion")),
                                          ({"No Finding": 1.0}, positives("No Finding")))):
            st, d = f"{58000000 + 2 * k + j}", f"g{k:05d}{j}"
            images.append((s, st, d, "PA", "ok"))
            labels[st] = vals
            want[d] = pos
            if j == 0:
                signal.add(d)

    def img_path(s, st, d):
        return root / "files" / f"p{s[:2]}" / f"p{s}" / f"s{st}" / f"{d}.jpg"

    meta_rows, info = [], MiniDataset("mimic", root.resolve(), 0, 0, "", "")
    for i, (s, st, d, view, state) in enumerate(images):
        p = img_path(s, st, d)
        meta_rows.append([d, s, st, "CHEST (PORTABLE AP)", view, 3056, 2544, 21800506, 213014.531, "CHEST (PORTABLE AP)",
                          "antero-posterior" if view == "AP" else "postero-anterior", "Erect"])
        if state != "missing":
            write_jpeg(p, seed=i, signal=d in signal)
        if state == "truncated":
            truncate(p)
        frontal = view in ("AP", "PA")
        labelled = st in labels
        if state == "missing":
            info.missing_path = str(p.resolve())
            info.dropped_missing += 1
        elif frontal and labelled:
            info.rows += 1
            info.subjects.add(s)
        else:
            info.excluded_paths.add(str(p.resolve()))
        if state == "truncated":
            info.truncated_path = str(p.resolve())
        if d in want:
            info.expected[str(p.resolve())] = want[d]
    negbio_rows = []
    for st, vals in labels.items():
        s = next(x[0] for x in images if x[1] == st)
        negbio_rows.append([s, st] + [vals.get(c) for c in MIMIC_NEGBIO_COLUMNS[2:]])
    info.csv_files.append(write_csv(root / "mimic-cxr-2.0.0-metadata.csv", MIMIC_METADATA_COLUMNS, meta_rows, gz=gz))
    info.csv_files.append(write_csv(root / "mimic-cxr-2.0.0-negbio.csv", MIMIC_NEGBIO_COLUMNS, negbio_rows, gz=gz))
    if patients is not None:
        folder = root / "hosp" if patients == "hosp" else root
        pat_rows = [[s, g, a, 2150, "2014 - 2016", None] for s, (g, a) in people.items()]
        info.csv_files.append(
            write_csv(folder / "patients.csv", ["subject_id", "gender", "anchor_age", "anchor_year", "anchor_year_group", "dod"],
                      pat_rows, gz=(patients == "hosp"))
        )
    info.extra = {"people": people, "unlabelled_images": 1, "generated_subjects": generated,
                  "path_of": {d: str(img_path(s, st, d).resolve()) for s, st, d, _, _ in images}}
    return info


# ------------------------------------------------------------------------------------------------
# CheXpert v1.0

CXP_COLUMNS = [
    "Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly",
    "Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax",
    "Pleural Effusion", "Pleural Other", "Fracture", "Support Devices",
]


def make_cxp(root, small: bool = True, gz: bool = False, prefix: bool = True, nested: bool = False,
             n_patients: int = 0) -> MiniDataset:
    root = Path(root)
    name = "CheXpert-v1.0-small" if small else "CheXpert-v1.0"
    ds = root / name if nested else root
    ds.mkdir(parents=True, exist_ok=True)
    # (split, patient, study, view file, Frontal/Lateral, AP/PA, Sex, Age, {label: value}, disk state)
    rows = [
        ("train", "00001", "study1", "view1_frontal", "Frontal", "AP", "Female", 68,
         {"Pleural Effusion": 1.0, "Cardiomegaly": -1.0, "Support Devices": 1.0}, "ok"),
        ("train", "00001", "study1", "view2_lateral", "Lateral", None, "Female", 68, {"Pleural Effusion": 1.0}, "ok"),
        ("train", "00001", "study2", "view1_frontal", "Frontal", "PA", "Female", 69, {"No Finding": 1.0}, "ok"),
        ("train", "00002", "study1", "view1_frontal", "Frontal", "AP", "Male", 87,
         {"Edema": -1.0, "Consolidation": 1.0, "Pneumonia": 0.0}, "ok"),
        ("train", "00002", "study1", "view2_frontal", "Frontal", "AP", "Male", 87, {"Atelectasis": 1.0, "Edema": 1.0}, "ok"),
        ("train", "00002", "study2", "view1_lateral", "Lateral", None, "Male", 88, {"Edema": 1.0}, "ok"),
        ("train", "00003", "study1", "view1_frontal", "Frontal", "AP", "Unknown", 15, {"Pneumothorax": 1.0}, "ok"),
        ("train", "00004", "study1", "view1_frontal", "Frontal", "PA", "Male", 45, {"Pneumonia": 1.0}, "missing"),
        ("train", "00005", "study1", "view1_frontal", "Frontal", "AP", "Female", 33, {"No Finding": 1.0}, "truncated"),
        ("train", "00005", "study2", "view1_frontal", "Frontal", "AP", "Female", 34, {"Cardiomegaly": 1.0}, "ok"),
        ("train", "00005", "study2", "view2_lateral", "Lateral", None, "Female", 34, {"Cardiomegaly": 1.0}, "ok"),
        ("train", "00010", "study1", "view1_frontal", "Frontal", "AP", "Male", 55, {}, "ok"),
        ("valid", "64541", "study1", "view1_frontal", "Frontal", "AP", "Male", 73, {"Pleural Effusion": 1.0, "Edema": 0.0}, "ok"),
        ("valid", "64541", "study1", "view2_lateral", "Lateral", None, "Male", 73, {"Pleural Effusion": 1.0}, "ok"),
        ("valid", "64542", "study1", "view1_frontal", "Frontal", "PA", "Female", 23, {"No Finding": 1.0}, "ok"),
    ]
    info = MiniDataset("cxp", ds.resolve(), 0, 0, "", "")
    want = {
        ("00001", "study1", "view1_frontal"): positives("Effusion"),
        ("00001", "study2", "view1_frontal"): positives("No Finding"),
        ("00002", "study1", "view1_frontal"): positives("Consolidation"),
        ("00002", "study1", "view2_frontal"): positives("Atelectasis", "Edema"),
        ("00003", "study1", "view1_frontal"): positives("Pneumothorax"),
        ("00010", "study1", "view1_frontal"): positives(),
        ("64541", "study1", "view1_frontal"): positives("Effusion"),
        ("64542", "study1", "view1_frontal"): positives("No Finding"),
    }
    generated = set()
    for k in range(n_patients):  # generated patients: one Effusion study, one No Finding study
        pat = f"{20001 + k:05d}"
        generated.add(str(int(pat)))
        sex, age = ("Female" if k % 2 else "Male"), 30 + k % 50
        rows.append(("train", pat, "study1", "view1_frontal", "Frontal", "PA", sex, age, {"Pleural Effusion": 1.0}, "ok"))
        rows.append(("train", pat, "study2", "view1_frontal", "Frontal", "PA", sex, age, {"No Finding": 1.0}, "ok"))
        want[(pat, "study1", "view1_frontal")] = positives("Effusion")
        want[(pat, "study2", "view1_frontal")] = positives("No Finding")
    out = {"train": [], "valid": []}
    for i, (split, pat, study, view, fl, appa, sex, age, vals, state) in enumerate(rows):
        rel = f"{split}/patient{pat}/{study}/{view}.jpg"
        p = ds / rel
        csv_path = f"{name}/{rel}" if prefix else rel
        if split == "valid":  # valid.csv is fully labelled with 0/1
            vals = {c: vals.get(c, 0.0) for c in CXP_COLUMNS[5:]}
        out[split].append([csv_path, sex, age, fl, appa] + [vals.get(c) for c in CXP_COLUMNS[5:]])
        if state != "missing":
            write_jpeg(p, seed=100 + i, signal=str(int(pat)) in generated and study == "study1")
        if state == "truncated":
            truncate(p)
            info.truncated_path = str(p.resolve())
        if state == "missing":
            info.missing_path = str(p.resolve())
            info.dropped_missing += 1
        elif fl == "Frontal":
            info.rows += 1
            info.subjects.add(str(int(pat)))  # un-padded, as the published code parses it
        else:
            info.excluded_paths.add(str(p.resolve()))
        if (pat, study, view) in want:
            info.expected[str(p.resolve())] = want[(pat, study, view)]
    info.csv_files.append(write_csv(ds / "train.csv", CXP_COLUMNS, out["train"], gz=gz))
    info.csv_files.append(write_csv(ds / "valid.csv", CXP_COLUMNS, out["valid"]))
    info.extra = {"dataset_dir": ds.resolve(), "name": name, "generated_subjects": generated}
    return info


# ------------------------------------------------------------------------------------------------
# NIH ChestX-ray14

NIH_COLUMNS = [
    "Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
    "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]",
]


def make_nih(root, layout: str = "flat", version: str = "v2020", gz: bool = False, n_patients: int = 0) -> MiniDataset:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # (patient, follow-up, findings, age, sex, view, disk state)
    rows = [
        (1, 0, "Cardiomegaly", 57, "M", "PA", "ok"),
        (1, 1, "Cardiomegaly|Emphysema", 58, "M", "PA", "ok"),
        (1, 2, "Cardiomegaly|Effusion", 58, "M", "PA", "ok"),
        (2, 0, "No Finding", 81, "M", "PA", "ok"),
        (3, 0, "Hernia", 74, "F", "PA", "ok"),
        (3, 1, "Infiltration|Pleural_Thickening", 75, "F", "AP", "ok"),  # NIH findings outside the 8 labels
        (3, 2, "Infiltration|Pneumonia", 75, "F", "AP", "ok"),
        (3, 3, "Pleural_Thickening", 76, "F", "PA", "ok"),
        (4, 0, "Edema|Consolidation|Atelectasis", 12, "M", "AP", "ok"),
        (4, 1, "Pneumothorax", 12, "M", "AP", "missing"),
        (4, 2, "No Finding", 13, "M", "PA", "truncated"),
        (5, 0, "Mass|Nodule", 35, "F", "PA", "ok"),
        (5, 1, "Pneumothorax|Effusion", 36, "F", "AP", "ok"),
        (6, 0, "Atelectasis", 44, "M", "PA", "ok"),
        (6, 1, "No Finding", 45, "M", "PA", "ok"),
        (7, 0, "Fibrosis", 62, "F", "PA", "ok"),  # near-miss names ("Effusions") are now an error: see tests
    ]
    want = {
        (1, 0): positives("Cardiomegaly"), (1, 2): positives("Cardiomegaly", "Effusion"), (2, 0): positives("No Finding"),
        (3, 0): positives(), (3, 1): positives(), (3, 2): positives("Pneumonia"), (3, 3): positives(),
        (4, 0): positives("Edema", "Consolidation", "Atelectasis"), (5, 1): positives("Pneumothorax", "Effusion"),
        (7, 0): positives(),
    }
    generated = set()
    for k in range(n_patients):  # generated patients: one Effusion image, one No Finding image
        pid, sex, age = 30001 + k, ("F" if k % 2 else "M"), 30 + k % 50
        generated.add(str(pid))
        rows += [(pid, 0, "Effusion", age, sex, "PA", "ok"), (pid, 1, "No Finding", age, sex, "PA", "ok")]
        want[(pid, 0)], want[(pid, 1)] = positives("Effusion"), positives("No Finding")
    info = MiniDataset("nih", root.resolve(), 0, 0, "", "")
    out = []
    for i, (pid, fu, findings, age, sex, view, state) in enumerate(rows):
        name = f"{pid:08d}_{fu:03d}.png"
        if layout == "flat":
            folder = root / "images"
        elif layout == "box":
            folder = root / f"images_{1 + (i % 2):03d}" / "images"
        else:
            raise ValueError(layout)
        p = folder / name
        age_cell = f"{age:03d}Y" if version == "2017" else age
        out.append([name, findings, fu, pid, age_cell, sex, view, 2500, 2048, 0.168, 0.168])
        if state == "missing":
            p = root / "images" / name  # where the adapter looks for an unlisted file
            info.missing_path = str(p.resolve())
            info.dropped_missing += 1
            continue
        write_png8(p, seed=200 + i, signal=str(pid) in generated and fu == 0)
        info.rows += 1
        info.subjects.add(str(pid))
        if state == "truncated":
            truncate(p)
            info.truncated_path = str(p.resolve())
        if (pid, fu) in want:
            info.expected[str(p.resolve())] = want[(pid, fu)]
    fname = "Data_Entry_2017.csv" if version == "2017" else "Data_Entry_2017_v2020.csv"
    header = list(NIH_COLUMNS)
    if version == "2017":  # the 2017 file has "OriginalImagePixelSpacing[x,y]," with a trailing comma
        info.csv_files.append(write_csv(root / fname, header, out, gz=gz, trailing_comma=True))
    else:
        info.csv_files.append(write_csv(root / fname, header, out, gz=gz))
    info.extra = {"generated_subjects": generated}
    return info


# ------------------------------------------------------------------------------------------------
# PadChest

PAD_COLUMNS = [
    "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth", "PatientSex_DICOM",
    "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric", "Modality_DICOM", "Manufacturer_DICOM",
    "PhotometricInterpretation_DICOM", "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM",
    "SpatialResolution_DICOM", "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM",
    "Columns_DICOM", "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS",
]
PAD_CSV = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"


def make_pad(root, layout: str = "dirs", gz: bool = True, n_patients: int = 0) -> MiniDataset:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    # key, patient, study, birth, sex, projection, Labels, disk state, expected positives (None = dropped)
    P = positives
    rows = [
        ("normal", "pat1", "st1", 1930.0, "F", "PA", "['normal']", "ok", P("No Finding")),
        ("lateral", "pat1", "st1", 1930.0, "F", "L", "['normal']", "ok", None),
        ("effcard", "pat1", "st2", 1930.0, "F", "AP", "['pleural effusion', 'cardiomegaly']", "ok", P("Effusion", "Cardiomegaly")),
        ("hydro", "pat2", "st3", 1950.0, "M", "AP_horizontal", "['hydropneumothorax']", "ok", P("Effusion", "Pneumothorax")),
        ("empyema", "pat2", "st3", 1950.0, "M", "PA", "['empyema']", "ok", P("Effusion")),
        ("hemo", "pat2", "st4", 1950.0, "M", "PA", "['hemothorax', 'callus rib fracture']", "ok", P("Effusion")),
        ("bronch", "pat3", "st5", 1990.0, "M", "PA", "['air bronchogram']", "ok", P("Consolidation")),
        ("consol", "pat3", "st5", 1990.0, "M", "AP", "['consolidation', 'pneumonia']", "ok", P("Consolidation", "Pneumonia")),
        ("atel", "pat3", "st6", 1990.0, "M", "PA", "['laminar atelectasis', 'COPD signs']", "ok", P("Atelectasis")),
        ("edema", "pat4", "st7", 2001.0, "F", "PA", "['pulmonary edema', 'alveolar pattern']", "ok", P("Edema")),
        ("upper", "pat4", "st7", 2001.0, "F", "PA", "['Cardiomegaly']", "ok", P("Cardiomegaly")),
        ("nofind", "pat4", "st8", 2001.0, "F", "PA", "['No Finding']", "ok", P("No Finding")),
        ("abnormal", "pat4", "st8", 2001.0, "F", "PA", "['abnormal foreign body']", "ok", P("No Finding")),
        ("pericard", "pat5", "st9", None, None, "PA", "['pericardial effusion']", "ok", P("Effusion")),
        ("empty", "pat5", "st9", None, None, "PA", "[]", "ok", P()),
        ("exclude", "pat5", "st10", 1940.0, "M", "PA", "['exclude']", "ok", None),
        ("unchanged", "pat5", "st10", 1940.0, "M", "PA", "['unchanged', 'cardiomegaly']", "ok", None),
        ("nolabels", "pat6", "st11", 1940.0, "M", "PA", None, "ok", None),
        ("costal", "pat6", "st11", 1940.0, "M", "COSTAL", "['cardiomegaly']", "ok", None),
        ("projexcl", "pat6", "st11", 1940.0, "M", "EXCLUDE", "['cardiomegaly']", "ok", None),
        ("ramp", "pat6", "st12", 1940.0, "M", "PA", "['pneumothorax']", "ok", P("Pneumothorax")),
        ("missing", "pat7", "st13", 1960.0, "F", "PA", "['normal']", "missing", P("No Finding")),
        ("trunc", "pat7", "st14", 1960.0, "F", "AP", "['normal']", "truncated", P("No Finding")),
        ("more1", "pat7", "st14", 1960.0, "F", "PA", "['cardiomegaly', 'pleural effusion']", "ok", P("Cardiomegaly", "Effusion")),
    ]
    generated = set()
    for k in range(n_patients):  # generated patients: one Effusion study, one normal study
        pat, birth, sex = f"padpatient{k:05d}", 1940.0 + k % 50, ("F" if k % 2 else "M")
        generated.add(pat)
        rows += [(f"genpos{k}", pat, f"{pat}s1", birth, sex, "PA", "['pleural effusion']", "ok", P("Effusion")),
                 (f"genneg{k}", pat, f"{pat}s2", birth, sex, "PA", "['normal']", "ok", P("No Finding"))]
    info = MiniDataset("pad", root.resolve(), 0, 0, "", "")
    out = []
    path_of = {}
    for i, (key, pat, study, birth, sex, proj, labels, state, want) in enumerate(rows):
        image_id = f"{1000 + i}{key}_abc{i}.png"
        image_dir = i % 2
        if layout == "dirs":
            p = root / str(image_dir) / image_id
        elif layout == "images224":
            p = root / "images-224" / image_id
        else:
            raise ValueError(layout)
        path_of[key] = str(p.resolve())
        out.append([image_id, image_dir, 20140915, study, pat, birth, sex, "POSTEROANTERIOR", proj,
                    "Manual review of DICOM fields", "No", "CR", "ImagingDynamicsCompanyLtd", "MONOCHROME2", 0, None,
                    None, 12, 2092, 2251, 1728, 1872, 250, 2, 2500, 10, -1.42, 4765777 + i, " sin hallazg patolog .",
                    "Physician", labels, "[]", "[['normal']]", "[]", "[]"])
        if state == "missing":
            info.missing_path = str(p.resolve())
            info.dropped_missing += 1
            continue
        if layout == "dirs":
            if key == "ramp":
                write_png16(p, arr=ramp16(1000, 3000))
            else:
                write_png16(p, seed=300 + i, lo=200 + 10 * (i % 50), hi=3000 + 20 * (i % 50), signal=key.startswith("genpos"))
        else:
            write_png8(p, seed=300 + i, signal=key.startswith("genpos"))
        if state == "truncated":
            truncate(p)
            info.truncated_path = str(p.resolve())
        if want is None:
            info.excluded_paths.add(str(p.resolve()))
            continue
        info.rows += 1
        info.subjects.add(pat)
        info.expected[str(p.resolve())] = want
    info.csv_files.append(write_csv(root / PAD_CSV, PAD_COLUMNS, out, gz=gz))
    info.extra = {"path_of": path_of, "layout": layout, "generated_subjects": generated}
    return info


MAKERS = {
    "mimic": lambda root, n: make_mimic(root, gz=True, patients="hosp", n_patients=n),
    "cxp": lambda root, n: make_cxp(root, small=True, gz=False, n_patients=n),
    "nih": lambda root, n: make_nih(root, layout="box", n_patients=n),
    "pad": lambda root, n: make_pad(root, layout="dirs", gz=True, n_patients=n),
}


def make_data_root(tmp_path, envs=("mimic", "cxp", "nih", "pad"), n_patients: int = 0) -> dict:
    """The hospitals ``envs`` under ``tmp_path/data_root`` (mimic gz, cxp -small plain, nih box, pad
    16-bit gz), each with ``n_patients`` generated patients added to the hand-written rows."""
    data_root = Path(tmp_path) / "data_root"
    return {"data_root": data_root, **{env: MAKERS[env](data_root / env, n_patients) for env in envs}}


def make_trainable_data_root(tmp_path, envs=("cxp", "nih"), n_patients: int = 80) -> dict:
    """:func:`make_data_root` with enough generated patients to train, validate and score on:
    with 80 patients a hospital's val and test splits hold about 8 images of each label value."""
    return make_data_root(tmp_path, envs, n_patients)
