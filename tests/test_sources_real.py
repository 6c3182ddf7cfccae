"""The four real-data adapters, end to end on miniature copies of the distributed datasets."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxrstudy.errors import DataError
from cxrstudy.data.images import to_uint8_by_range
from cxrstudy.labels import LABELS
from cxrstudy.data.schema import COLUMNS
from cxrstudy.data.sources import open_source
from cxrstudy.data.sources.nih import index_images, parse_age
from cxrstudy.data.sources.padchest import PadChestSource

from realdata_fixtures import (
    CXP_COLUMNS,
    label_vector,
    make_cxp,
    make_data_root,
    make_mimic,
    make_nih,
    make_pad,
    ramp16,
    write_csv,
)

HOSPITALS = ("mimic", "cxp", "nih", "pad")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return make_data_root(tmp_path_factory.mktemp("real"))


@pytest.fixture(scope="module")
def tables(built):
    out = {}
    for env in HOSPITALS:
        src = open_source(env, "real", data_root=built["data_root"])
        out[env] = (src, src.table())
    return out


def _labels_of(table: pd.DataFrame, path: str) -> dict:
    rows = table.loc[table["path"] == path]
    assert len(rows) == 1, f"{path} appears {len(rows)} times"
    return {lab: int(rows.iloc[0][lab]) for lab in LABELS}


def check_against(info, src, table):
    """Everything a MiniDataset promises about the adapter's table."""
    assert tuple(table.columns) == COLUMNS
    assert len(table) == info.rows
    assert src.dropped_missing == info.dropped_missing
    assert (table["env"] == info.env).all()
    for lab in LABELS:
        assert table[lab].dtype == np.uint8
        assert set(table[lab].unique()) <= {0, 1}
    for c in ("subject_id", "study_id", "path", "view", "sex", "age_bin"):
        assert all(isinstance(v, str) for v in table[c])
    assert set(table["subject_id"]) == info.subjects
    assert set(table["sex"]) <= {"M", "F", "O"}
    assert set(table["age_bin"]) <= {"0-20", "20-40", "40-60", "60-80", "80+", ""}
    paths = set(table["path"])
    assert all(os.path.isabs(p) for p in paths)
    assert info.missing_path not in paths
    assert info.truncated_path in paths  # stays in the table; the cache builder skips it at decode
    assert not (paths & info.excluded_paths)
    assert all(os.path.isfile(p) for p in paths)
    assert (table[list(LABELS[1:-1])].max(axis=1) == table["Any"]).all()
    for path, pos in info.expected.items():
        assert _labels_of(table, path) == label_vector(pos), path


@pytest.mark.parametrize("env", HOSPITALS)
def test_end_to_end(built, tables, env):
    src, table = tables[env]
    assert src.env == env and src.kind == "real" and src.has_images
    check_against(built[env], src, table)
    assert any("missing" in n for n in src.notes)


@pytest.mark.parametrize("env", HOSPITALS)
def test_read_image_and_truncated(built, tables, env):
    src, table = tables[env]
    good = next(p for p in table["path"] if p != built[env].truncated_path)
    img = src.read_image(good, 24)
    assert img.shape == (24, 24) and img.dtype == np.uint8
    with pytest.raises((OSError, ValueError)):
        src.read_image(built[env].truncated_path, 24)


@pytest.mark.parametrize("env", HOSPITALS)
def test_fingerprint_and_pickle(built, tables, env):
    src, _ = tables[env]
    fp = src.fingerprint()
    again = open_source(env, "real", data_root=built["data_root"])
    assert again.fingerprint() == fp
    clone = pickle.loads(pickle.dumps(src))
    assert clone._table is None  # the cached table does not travel to workers
    assert clone.fingerprint() == fp
    assert len(clone.table()) == built[env].rows


def test_generated_patients_are_read_like_the_rest_and_positives_carry_the_signal(tmp_path):
    """The trainable fixture (``n_patients``): every adapter yields the generated rows with their
    labels and subjects, and a positive image is brighter in its centre than its patient's negative."""
    built = make_data_root(tmp_path, n_patients=12)
    for env in HOSPITALS:
        info = built[env]
        src = open_source(env, "real", data_root=built["data_root"])
        table = src.table()
        check_against(info, src, table)
        generated = table[table["subject_id"].isin(info.extra["generated_subjects"])]
        assert len(info.extra["generated_subjects"]) == 12 and len(generated) == 24, env
        assert generated.groupby("subject_id")["Any"].agg(["sum", "count"]).eq(pd.Series({"sum": 1, "count": 2})).all().all()
        assert (generated["Effusion"] == generated["Any"]).all() and (generated["No Finding"] == 1 - generated["Any"]).all()
        for _, rows in generated.groupby("subject_id"):
            pos, neg = (src.read_image(rows.loc[rows["Any"] == v, "path"].iloc[0], 32) for v in (1, 0))
            assert pos[12:20, 12:20].mean() > neg[12:20, 12:20].mean() + 20, env


def test_fingerprint_changes_with_csv(tmp_path):
    info = make_nih(tmp_path / "nih")
    src = open_source("nih", "real", root=info.root)
    before = src.fingerprint()
    csv = info.csv_files[0]
    csv.write_text(csv.read_text() + "00000099_000.png,No Finding,0,99,40,M,PA,1,1,0.1,0.1\n")
    assert open_source("nih", "real", root=info.root).fingerprint() != before


# ---------------------------------------------------------------------------------------------- mimic


def test_mimic_frontal_rule_and_unlabelled(built, tables):
    src, table = tables["mimic"]
    info = built["mimic"]
    assert set(table["view"]) <= {"AP", "PA"}
    for d in ("d02", "d04", "d09", "d11", "d17"):  # LATERAL, LL, no ViewPosition
        assert info.extra["path_of"][d] not in set(table["path"])
    assert info.extra["path_of"]["d15"] not in set(table["path"])  # study without NegBio row
    assert any("no row in mimic-cxr-2.0.0-negbio" in n for n in src.notes)


def test_mimic_path_layout_and_demographics(built, tables):
    _, table = tables["mimic"]
    root = built["mimic"].root
    row = table.loc[table["path"] == built["mimic"].extra["path_of"]["d07"]].iloc[0]
    assert row["path"] == str(root / "files/p10/p10000764/s50000004/d07.jpg")
    assert (row["subject_id"], row["study_id"], row["view"], row["sex"], row["age_bin"]) == ("10000764", "50000004", "AP", "M", "80+")
    young = table.loc[table["subject_id"] == "11000011"].iloc[0]
    assert (young["sex"], young["age_bin"]) == ("F", "0-20")


@pytest.mark.parametrize("patients", ["root", None])
def test_mimic_patients_location_and_absence(tmp_path, patients):
    info = make_mimic(tmp_path / "mimic", gz=False, patients=patients)
    src = open_source("mimic", "real", root=info.root)
    table = src.table()
    check_against(info, src, table)
    if patients is None:
        assert set(table["sex"]) == {"O"} and set(table["age_bin"]) == {""}
        assert any("patients.csv" in n for n in src.notes)
    else:
        assert set(table["sex"]) == {"M", "F"}


def test_mimic_missing_csv(tmp_path):
    info = make_mimic(tmp_path / "mimic")
    next(p for p in info.csv_files if "negbio" in p.name).unlink()
    with pytest.raises(DataError, match="mimic-cxr-2.0.0-negbio.csv"):
        open_source("mimic", "real", root=info.root)


def test_mimic_missing_column(tmp_path):
    info = make_mimic(tmp_path / "mimic", gz=False)
    meta = next(p for p in info.csv_files if "metadata" in p.name)
    pd.read_csv(meta).drop(columns="ViewPosition").to_csv(meta, index=False)
    with pytest.raises(DataError) as e:
        open_source("mimic", "real", root=info.root).table()
    assert "mimic-cxr-2.0.0-metadata.csv" in str(e.value) and "ViewPosition" in str(e.value)


# ---------------------------------------------------------------------------------------------- cxp


def test_cxp_ids_views_and_frontal_rule(built, tables):
    _, table = tables["cxp"]
    assert set(table["subject_id"]) == {"1", "2", "3", "5", "10", "64541", "64542"}
    assert "1_study2" in set(table["study_id"])
    assert not table["path"].str.contains("lateral").any()
    assert set(table["view"]) == {"AP", "PA"}
    r = table.loc[table["subject_id"] == "3"].iloc[0]
    assert (r["sex"], r["age_bin"]) == ("O", "0-20")  # Sex "Unknown"
    assert (table["subject_id"].astype(int) >= 64541).sum() == 2  # valid.csv rows are read too


def test_cxp_subject_ids_unpadded_as_published():
    """The published code parses the patient folder number as int then str: patient00010 -> "10",
    which sorts before patient00002 -> "2" and so sets the subject order of the split."""
    from cxrstudy.data.sources.chexpert import harmonise

    folders = ["patient00002", "patient00010", "patient00100", "patient00001", "patient64541"]
    csv = pd.DataFrame({
        "Path": [f"CheXpert-v1.0-small/train/{f}/study1/view1_frontal.jpg" for f in folders],
        "Sex": "Male", "Age": 50, "Frontal/Lateral": "Frontal", "AP/PA": "PA", "Pleural Effusion": 1.0,
        **{c: 0.0 for c in ("No Finding", "Atelectasis", "Cardiomegaly", "Pneumonia", "Pneumothorax",
                            "Consolidation", "Edema")},
    })
    t = harmonise(csv, file="train.csv")
    assert list(t["subject_id"]) == ["2", "10", "100", "1", "64541"]
    assert list(t["study_id"]) == ["2_study1", "10_study1", "100_study1", "1_study1", "64541_study1"]
    assert sorted(t["subject_id"]) == ["1", "10", "100", "2", "64541"]


@pytest.mark.parametrize(
    "kw",
    [
        dict(small=False),  # CheXpert-v1.0/ prefix
        dict(small=True, gz=True),  # train.csv.gz
        dict(small=True, prefix=False),  # paths already start with train/ or valid/
        dict(small=True, nested=True),  # hospital folder holds CheXpert-v1.0-small/
    ],
)
def test_cxp_variants(tmp_path, kw):
    info = make_cxp(tmp_path / "cxp", **kw)
    src = open_source("cxp", "real", root=tmp_path / "cxp")
    check_against(info, src, src.table())


def _rewrite_label_column(csv_path: Path, column: str, values: list):
    df = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    df[column] = (values * len(df))[: len(df)]
    df.to_csv(csv_path, index=False)


@pytest.mark.parametrize(
    "forms, expected",
    [
        (["True", "True", "False"], [1, 0]),
        (["False", "True", ""], [0, 0]),
        (["[True]", "[True]", "[False]"], [1, 0]),
        (["[False]", "[False]", "[True]"], [0, 1]),
        (["1", "0", "-1"], [1, 0]),
        (["-1.0", "1.0", "1.0"], [0, 1]),
        (["0.0", "", "1"], [0, 1]),
        (["", "", "1.0"], [0, 1]),
    ],
)
def test_cxp_value_forms_end_to_end(tmp_path, forms, expected):
    info = make_cxp(tmp_path / "cxp")
    valid = info.root / "valid.csv"
    # valid.csv rows: 64541 frontal, 64541 lateral (filtered out), 64542 frontal
    _rewrite_label_column(valid, "Pleural Effusion", forms)
    table = open_source("cxp", "real", root=info.root).table()
    got = table.loc[table["subject_id"].isin(["64541", "64542"])].sort_values("subject_id")["Effusion"].tolist()
    assert got == expected


def test_cxp_unknown_value_names_file_column_value(tmp_path):
    info = make_cxp(tmp_path / "cxp")
    _rewrite_label_column(info.root / "valid.csv", "Edema", ["maybe"])
    with pytest.raises(DataError) as e:
        open_source("cxp", "real", root=info.root).table()
    msg = str(e.value)
    assert "valid.csv" in msg and "'Edema'" in msg and "'maybe'" in msg


def test_cxp_missing_valid_csv(tmp_path):
    info = make_cxp(tmp_path / "cxp")
    (info.root / "valid.csv").unlink()
    with pytest.raises(DataError, match="valid.csv"):
        open_source("cxp", "real", root=info.root)


def test_cxp_missing_label_column(tmp_path):
    info = make_cxp(tmp_path / "cxp")
    train = info.root / "train.csv"
    pd.read_csv(train).drop(columns="Cardiomegaly").to_csv(train, index=False)
    with pytest.raises(DataError) as e:
        open_source("cxp", "real", root=info.root).table()
    assert "train.csv" in str(e.value) and "Cardiomegaly" in str(e.value)


def test_cxp_effusion_column_may_already_be_renamed(tmp_path):
    info = make_cxp(tmp_path / "cxp")
    for name in ("train.csv", "valid.csv"):
        p = info.root / name
        pd.read_csv(p).rename(columns={"Pleural Effusion": "Effusion"}).to_csv(p, index=False)
    src = open_source("cxp", "real", root=info.root)
    check_against(info, src, src.table())


def test_cxp_bad_path_value(tmp_path):
    info = make_cxp(tmp_path / "cxp")
    write_csv(info.root / "valid.csv", CXP_COLUMNS, [["somewhere/else.jpg", "Male", 50, "Frontal", "AP"] + [0.0] * 14])
    with pytest.raises(DataError, match="Path"):
        open_source("cxp", "real", root=info.root).table()


# ---------------------------------------------------------------------------------------------- nih


@pytest.mark.parametrize("layout", ["flat", "box"])
@pytest.mark.parametrize("version", ["v2020", "2017"])
def test_nih_layouts_and_versions(tmp_path, layout, version):
    info = make_nih(tmp_path / "nih", layout=layout, version=version, gz=(version == "2017"))
    src = open_source("nih", "real", root=info.root)
    table = src.table()
    check_against(info, src, table)
    r = table.loc[table["study_id"] == "2_0"].iloc[0]
    assert (r["subject_id"], r["sex"], r["age_bin"], r["view"]) == ("2", "M", "80+", "PA")


def test_nih_exact_name_matching(built, tables):
    _, table = tables["nih"]
    by_study = table.set_index("study_id")
    assert by_study.loc["3_1", "Effusion"] == 0  # "Pleural_Thickening" is not "Effusion"
    assert by_study.loc["7_0", "Pneumonia"] == 0 and by_study.loc["7_0", "Any"] == 0  # Fibrosis: none of the 8
    # a near-miss name ("Effusions", "Pneumonia_like") is no longer read as negative: see the next test
    assert by_study.loc["1_2", "Effusion"] == 1 and by_study.loc["5_1", "Effusion"] == 1


def test_nih_image_index(tmp_path):
    info = make_nih(tmp_path / "nih", layout="box")
    index = index_images(info.root)
    assert len(index) == info.rows
    assert {Path(p).parent.parent.name for p in index.values()} == {"images_001", "images_002"}


def test_nih_parse_age():
    assert parse_age(pd.Series(["058Y", "011M", "002W", " 30Y", "45", "x"])).round(3).tolist()[:5] == [58.0, 0.917, 0.038, 30.0, 45.0]
    assert np.isnan(parse_age(pd.Series(["x"]))[0])
    assert parse_age(pd.Series([58, 3])).tolist() == [58.0, 3.0]


def test_nih_missing_csv(tmp_path):
    (tmp_path / "nih").mkdir()
    with pytest.raises(DataError, match="Data_Entry_2017"):
        open_source("nih", "real", root=tmp_path / "nih")


def test_nih_missing_column(tmp_path):
    info = make_nih(tmp_path / "nih")
    p = info.csv_files[0]
    pd.read_csv(p).drop(columns="Finding Labels").to_csv(p, index=False)
    with pytest.raises(DataError) as e:
        open_source("nih", "real", root=info.root).table()
    assert "Data_Entry_2017_v2020.csv" in str(e.value) and "Finding Labels" in str(e.value)


@pytest.mark.parametrize("bad", ["maybe", "7", "Effusion|maybe", "effusion", "Effusions", "Pneumonia_like"])
def test_nih_finding_outside_the_15_is_an_error_naming_file_value_and_allowed(tmp_path, bad):
    info = make_nih(tmp_path / "nih")
    p = info.csv_files[0]
    df = pd.read_csv(p, dtype=str)
    df.loc[1, "Finding Labels"] = bad
    df.to_csv(p, index=False)
    with pytest.raises(DataError) as e:
        open_source("nih", "real", root=info.root).table()
    msg = str(e.value)
    wrong = [t for t in bad.split("|") if t != "Effusion"][0]
    assert "Data_Entry_2017_v2020.csv" in msg and repr(wrong) in msg
    assert "Pleural_Thickening" in msg and "No Finding" in msg and "\n" not in msg


# ---------------------------------------------------------------------------------------------- pad


def test_pad_string_rules(built, tables):
    _, table = tables["pad"]
    path_of = built["pad"].extra["path_of"]

    def labels(key):
        return {k for k, v in _labels_of(table, path_of[key]).items() if v}

    assert labels("normal") == {"No Finding"}
    assert labels("effcard") == {"Effusion", "Cardiomegaly", "Any"}
    assert labels("hydro") == {"Effusion", "Pneumothorax", "Any"}  # extra Effusion term; substring of pneumothorax too
    assert labels("empyema") == {"Effusion", "Any"}
    assert labels("hemo") == {"Effusion", "Any"}
    assert labels("bronch") == {"Consolidation", "Any"}  # air bronchogram
    assert labels("consol") == {"Consolidation", "Pneumonia", "Any"}
    assert labels("atel") == {"Atelectasis", "Any"}  # substring: laminar atelectasis
    assert labels("edema") == {"Edema", "Any"}
    assert labels("upper") == {"Cardiomegaly", "Any"}  # case-insensitive
    assert labels("nofind") == {"No Finding"}  # 'no finding'
    assert labels("abnormal") == {"No Finding"}  # the substring rule, to the letter
    assert labels("pericard") == {"Effusion", "Any"}
    assert labels("empty") == set()
    paths = set(table["path"])
    for key in ("exclude", "unchanged", "nolabels", "lateral", "costal", "projexcl"):
        assert path_of[key] not in paths, key
    assert set(table["view"]) == {"PA", "AP", "AP_horizontal"}


def test_pad_age_and_sex(built, tables):
    _, table = tables["pad"]
    path_of = built["pad"].extra["path_of"]
    first = table.loc[table["path"] == path_of["normal"]].iloc[0]
    assert (first["subject_id"], first["study_id"], first["sex"], first["age_bin"]) == ("pat1", "st1", "F", "80+")  # 2014 - 1930
    unknown = table.loc[table["path"] == path_of["pericard"]].iloc[0]
    assert (unknown["sex"], unknown["age_bin"]) == ("O", "")


def test_pad_images224_layout(tmp_path):
    info = make_pad(tmp_path / "pad", layout="images224", gz=False)
    src = open_source("pad", "real", root=info.root)
    table = src.table()
    check_against(info, src, table)
    assert table["path"].str.contains(os.sep + "images-224" + os.sep, regex=False).all()
    assert src.layout == "images224"


def test_pad_layout_override_changes_fingerprint(tmp_path):
    info = make_pad(tmp_path / "pad", layout="dirs")
    (info.root / "images-224").mkdir()
    auto = PadChestSource(info.root)
    dirs = PadChestSource(info.root, layout="dirs")
    assert auto.layout == "images224" and dirs.layout == "dirs"
    assert auto.fingerprint() != dirs.fingerprint()
    check_against(info, dirs, dirs.table())


def test_pad_16bit_decoded_by_range(built, tables):
    src, _ = tables["pad"]
    path = built["pad"].extra["path_of"]["ramp"]
    with Image.open(path) as im:
        assert im.mode.startswith("I")
        raw = np.asarray(im)
    assert raw.min() == 1000 and raw.max() == 3000
    out = src.read_image(path, raw.shape[0])
    assert out.min() == 0 and out.max() == 255
    expected = np.clip(np.floor((ramp16().astype(np.float64) - 1000) * 255 / 2000 + 0.5), 0, 255)
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1
    assert np.array_equal(out, to_uint8_by_range(raw))
    assert out.max() > (raw >> 8).max()  # not truncation to the high byte


def test_pad_missing_csv_and_column(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv"):
        open_source("pad", "real", root=tmp_path / "empty")
    info = make_pad(tmp_path / "pad", gz=False)
    p = info.csv_files[0]
    pd.read_csv(p).drop(columns="Projection").to_csv(p, index=False)
    with pytest.raises(DataError) as e:
        open_source("pad", "real", root=info.root).table()
    assert "PADCHEST" in str(e.value) and "Projection" in str(e.value)


# ---------------------------------------------------------------------------------------------- all


def test_missing_hospital_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_source("cxp", "real", data_root=tmp_path)


def test_table_is_cached_and_protected(tables):
    src, table = tables["nih"]
    t = src.table()
    t["extra"] = 1
    t.loc[0, "Effusion"] = 1 - t.loc[0, "Effusion"]
    again = src.table()
    assert "extra" not in again.columns
    assert again.loc[0, "Effusion"] == table.loc[0, "Effusion"]
    assert src.dropped_missing == 1 and sum("missing" in n for n in src.notes) == 1


def test_copy_of_data_root_is_independent(tmp_path, built):
    # the adapters hold no absolute state beyond their root: a moved copy reads the same
    shutil.copytree(built["data_root"] / "nih", tmp_path / "nih")
    table = open_source("nih", "real", data_root=tmp_path).table()
    assert len(table) == built["nih"].rows
    assert table["path"].str.startswith(str(tmp_path.resolve())).all()
