"""Metadata mode: torchxrayvision's shipped label CSVs through the real adapters' harmonisation."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from cxrstudy.errors import DataError
from cxrstudy.labels import LABELS
from cxrstudy.data.schema import COLUMNS
from cxrstudy.data.sources import open_source
from cxrstudy.data.sources.metadata import MetadataSource, shipped_csv

from realdata_fixtures import write_png8

ENVS = ("cxp", "nih", "pad")


@pytest.fixture(scope="module")
def loaded():
    out, seconds = {}, {}
    for env in ENVS:
        t = time.perf_counter()
        src = open_source(env, "metadata")
        out[env] = (src, src.table())
        seconds[env] = time.perf_counter() - t
    prevalence = pd.DataFrame({env: out[env][1][list(LABELS)].mean() * 100 for env in ENVS}).round(2)
    print(f"\nmetadata tables: { {e: len(out[e][1]) for e in ENVS} }, seconds: { {e: round(s, 2) for e, s in seconds.items()} }")
    print(prevalence)
    return out, seconds


def prev(table, label):
    return float(table[label].mean() * 100)


def test_schema_and_kind(loaded):
    tables, _ = loaded
    for env in ENVS:
        src, t = tables[env]
        assert (src.env, src.kind, src.has_images) == (env, "metadata", False)
        assert tuple(t.columns) == COLUMNS
        assert (t["env"] == env).all()
        assert src.dropped_missing == 0
        assert not t["path"].str.startswith("/").any()  # would-be relative paths
        assert set(t["sex"]) <= {"M", "F", "O"}
        for lab in LABELS:
            assert t[lab].dtype == np.uint8
        assert (t[list(LABELS[1:-1])].max(axis=1) == t["Any"]).all()


def test_nih(loaded):
    t = loaded[0]["nih"][1]
    assert len(t) == 112_120
    assert t["subject_id"].nunique() == 30_805
    assert t["path"].iloc[0] == "images/00000001_000.png"
    assert (t["subject_id"].iloc[0], t["study_id"].iloc[0]) == ("1", "1_0")
    assert 53 < prev(t, "No Finding") < 55  # 60,361 images
    assert 11 < prev(t, "Effusion") < 13  # 13,317
    assert 10 < prev(t, "Atelectasis") < 11  # 11,559
    assert 1 < prev(t, "Pneumonia") < 1.6  # 1,431


def test_cxp(loaded):
    src, t = loaded[0]["cxp"]
    assert len(t) == 191_027  # frontal rows of train.csv (valid.csv is not shipped)
    assert any("valid.csv" in n for n in src.notes)
    assert t["path"].iloc[0] == "train/patient00001/study1/view1_frontal.jpg"
    assert t["subject_id"].str.fullmatch(r"[1-9]\d*").all()  # un-padded, as the published code
    assert t["subject_id"].iloc[0] == "1"
    assert t["subject_id"].nunique() > 60_000
    assert 8 < prev(t, "No Finding") < 10
    assert 35 < prev(t, "Effusion") < 45
    assert 1.5 < prev(t, "Pneumonia") < 4
    assert prev(t, "Any") > 60


def test_pad(loaded):
    t = loaded[0]["pad"][1]
    assert 95_000 < len(t) < 105_000  # frontal PA/AP/AP_horizontal without exclude/unchanged/missing Labels
    assert set(t["view"]) == {"PA", "AP", "AP_horizontal"}
    assert t["path"].str.fullmatch(r"\d+/[^/]+\.png").all()
    assert 30 < prev(t, "No Finding") < 42
    assert 7 < prev(t, "Cardiomegaly") < 11
    assert 0.2 < prev(t, "Pneumothorax") < 0.6
    assert (t["age_bin"] != "").mean() > 0.99


def test_timing(loaded):
    _, seconds = loaded
    assert sum(seconds.values()) < 30, seconds


def test_mimic_is_not_shipped():
    with pytest.raises(DataError, match="MIMIC-CXR is not shipped in torchxrayvision"):
        open_source("mimic", "metadata")
    with pytest.raises(DataError, match="not shipped"):
        MetadataSource("mimic")


def test_read_image_raises(loaded):
    src, t = loaded[0]["nih"]
    with pytest.raises(DataError, match="metadata mode has no images"):
        src.read_image(t["path"].iloc[0], 224)


def test_fingerprint(loaded):
    src = loaded[0]["pad"][0]
    assert src.fingerprint() == MetadataSource("pad").fingerprint()
    assert src.fingerprint() != loaded[0]["nih"][0].fingerprint()


def test_same_harmonisation_as_real_adapter(tmp_path, loaded):
    """The real NIH adapter on the shipped CSV with three images present yields the metadata rows."""
    meta = loaded[0]["nih"][1]
    root = tmp_path / "nih"
    (root / "images").mkdir(parents=True)
    (root / "Data_Entry_2017_v2020.csv.gz").write_bytes(shipped_csv("nih").read_bytes())
    picks = meta.iloc[[0, 4242, 112_119]]
    for i, rel in enumerate(picks["path"]):
        write_png8(root / rel, seed=i)
    src = open_source("nih", "real", root=root)
    real = src.table()
    assert src.dropped_missing == len(meta) - 3
    assert real["path"].tolist() == [str(root.resolve() / p) for p in picks["path"]]
    cols = [c for c in COLUMNS if c != "path"]
    pd.testing.assert_frame_equal(real[cols], picks[cols].reset_index(drop=True))
