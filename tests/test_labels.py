"""Label normalisation (U-zeros, every value form) and the per-hospital label rules."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from cxrstudy.errors import DataError
from cxrstudy.labels import DISEASES, LABELS, add_any, normalise_values
from cxrstudy.data.sources.chexpert import csv_label_sources, label_columns
from cxrstudy.data.sources.nih import finding_labels
from cxrstudy.data.sources.padchest import keep_rows, string_labels


def norm(values, **kw):
    return normalise_values(pd.Series(values, **kw), file="f.csv", column="Edema").tolist()


def test_numeric_forms():
    assert norm([1, 0, -1]) == [1, 0, 0]
    assert norm([1.0, 0.0, -1.0, np.nan]) == [1, 0, 0, 0]


def test_bool_forms():
    assert norm([True, False]) == [1, 0]
    assert norm([True, False, None], dtype=object) == [1, 0, 0]
    assert norm([True, False, None], dtype="boolean") == [1, 0, 0]


@pytest.mark.parametrize(
    "text, value",
    [
        ("1", 1), ("0", 0), ("1.0", 1), ("0.0", 0), ("-1", 0), ("-1.0", 0), ("", 0), ("  ", 0), ("nan", 0),
        ("True", 1), ("False", 0), ("true", 1), ("FALSE", 0), ("[True]", 1), ("[False]", 0), (" [True] ", 1),
    ],
)
def test_text_forms(text, value):
    assert norm([text], dtype=object) == [value]
    assert norm([text], dtype="string") == [value]


def test_missing_in_text_column():
    assert norm(["1", None, np.nan, pd.NA], dtype=object) == [1, 0, 0, 0]


def test_forms_as_read_from_csv():
    text = "a,b,c,d,e\n1,1.0,True,[True],-1\n0,0.0,False,[False],\n,,,,1\n"
    df = pd.read_csv(io.StringIO(text))
    got = {c: normalise_values(df[c], file="x.csv", column=c).tolist() for c in df.columns}
    assert got == {"a": [1, 0, 0], "b": [1, 0, 0], "c": [1, 0, 0], "d": [1, 0, 0], "e": [0, 0, 1]}


@pytest.mark.parametrize("bad, shown", [(["1", "maybe"], "'maybe'"), ([1.0, 2.0], "2.0"), (["[1]"], "'[1]'"), ([0.5], "0.5")])
def test_unknown_value_names_file_column_value(bad, shown):
    with pytest.raises(DataError) as e:
        normalise_values(pd.Series(bad), file="/data/cxp/train.csv", column="Pleural Effusion")
    msg = str(e.value)
    assert "/data/cxp/train.csv" in msg and "'Pleural Effusion'" in msg and shown in msg


def test_label_columns_renames_pleural_effusion_and_adds_any():
    df = pd.DataFrame(
        {
            "No Finding": [1.0, None, None], "Atelectasis": [None, -1.0, None], "Cardiomegaly": [None, None, 0.0],
            "Pleural Effusion": [None, 1.0, None], "Pneumonia": [None] * 3, "Pneumothorax": [None] * 3,
            "Consolidation": [None, None, 1.0], "Edema": [None] * 3, "Fracture": [1.0, 1.0, 1.0],
        }
    )
    assert csv_label_sources(df.columns)["Effusion"] == "Pleural Effusion"
    out = label_columns(df, file="t.csv")
    assert list(out.columns) == list(LABELS)
    assert out["Effusion"].tolist() == [0, 1, 0]
    assert out["Atelectasis"].tolist() == [0, 0, 0]  # uncertain -> 0
    assert out["Any"].tolist() == [0, 1, 1]  # Fracture is not one of the seven
    assert out["No Finding"].tolist() == [1, 0, 0]


def test_label_columns_missing_column():
    df = pd.DataFrame({lab: [0.0] for lab in ("No Finding", "Atelectasis", "Cardiomegaly", "Pneumonia")})
    with pytest.raises(DataError) as e:
        label_columns(df, file="negbio.csv")
    assert "negbio.csv" in str(e.value) and "Pleural Effusion" in str(e.value)


def test_add_any_excludes_no_finding():
    t = pd.DataFrame({lab: [0, 0] for lab in ("No Finding",) + DISEASES})
    t.loc[0, "No Finding"] = 1
    t.loc[1, "Edema"] = 1
    assert add_any(t)["Any"].tolist() == [0, 1]


def test_nih_exact_names():
    f = pd.Series(["Effusion", "Effusions", "Cardiomegaly|Effusion", "Pleural_Thickening", "No Finding",
                   "Infiltration|Pneumonia", "Pneumonia_x", "Edema | Atelectasis", None, "effusion"])
    out = finding_labels(f)
    assert out["Effusion"].tolist() == [1, 0, 1, 0, 0, 0, 0, 0, 0, 0]  # exact, case-sensitive names
    assert out["Pneumonia"].tolist() == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert out["No Finding"].tolist() == [0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert out["Atelectasis"].tolist()[7] == 1 and out["Edema"].tolist()[7] == 1
    assert out["Any"].tolist() == [1, 0, 1, 0, 0, 1, 0, 1, 0, 0]


@pytest.mark.parametrize(
    "labels, positives",
    [
        ("['normal']", {"No Finding"}),
        ("['no finding']", {"No Finding"}),
        ("['abnormal foreign body']", {"No Finding"}),  # substring rule, to the letter
        ("['pleural effusion']", {"Effusion"}),
        ("['pericardial effusion']", {"Effusion"}),
        ("['hydropneumothorax']", {"Effusion", "Pneumothorax"}),
        ("['empyema']", {"Effusion"}),
        ("['hemothorax']", {"Effusion"}),
        ("['air bronchogram']", {"Consolidation"}),
        ("['consolidation']", {"Consolidation"}),
        ("['atypical pneumonia']", {"Pneumonia"}),
        ("['lobar atelectasis', 'cardiomegaly']", {"Atelectasis", "Cardiomegaly"}),
        ("['pulmonary edema']", {"Edema"}),
        ("['PNEUMOTHORAX']", {"Pneumothorax"}),
        ("['pneumomediastinum', 'pneumoperitoneo']", set()),
        ("[]", set()),
    ],
)
def test_pad_substring_rules(labels, positives):
    out = string_labels(pd.Series([labels]))
    got = {lab for lab in LABELS if lab != "Any" and out[lab].iloc[0]}
    assert got == positives
    assert out["Any"].iloc[0] == int(bool(positives - {"No Finding"}))


def test_pad_keep_rows():
    csv = pd.DataFrame(
        {
            "Projection": ["PA", "AP", "AP_horizontal", "L", "COSTAL", "PA", "PA", "PA", "PA", None],
            "Labels": ["['normal']", "['normal']", "['normal']", "['normal']", "['normal']",
                       "['exclude']", "['unchanged', 'cardiomegaly']", None, "['EXCLUDE']", "['normal']"],
        }
    )
    assert keep_rows(csv).tolist() == [True, True, True, False, False, False, False, False, False, False]
