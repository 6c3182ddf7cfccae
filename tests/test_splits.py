import numpy as np
import pandas as pd
import pytest

from cxrstudy.data.split import assign_splits, check_no_leakage, subject_splits


def test_split_matches_the_protocol_by_hand():
    ids = [10, 2, "33", 2, 10, 7]
    got = subject_splits(ids)
    subjects = sorted({"10", "2", "33", "7"})  # strings, lexicographic: '10' < '2' < '33' < '7'
    assert subjects == ["10", "2", "33", "7"]
    rs = np.random.RandomState(0)
    expect = {}
    for s in subjects:
        u = rs.uniform()
        expect[s] = "train" if u <= 0.8 else ("val" if u <= 0.9 else "test")
    assert got == expect


def test_split_restores_global_numpy_state():
    np.random.seed(123)
    before = np.random.uniform()
    np.random.seed(123)
    subject_splits(range(100))
    assert np.random.uniform() == before


def test_proportions_and_no_subject_in_two_splits():
    rng = np.random.default_rng(1)
    subj = rng.integers(0, 5000, size=20000)
    table = pd.DataFrame({"subject_id": subj.astype(str)})
    split = assign_splits(table)
    check_no_leakage(table, split)
    frac = split.value_counts(normalize=True)
    assert abs(frac["train"] - 0.8) < 0.03 and abs(frac["val"] - 0.1) < 0.02 and abs(frac["test"] - 0.1) < 0.02
    # every image of a subject is in its subject's split
    assert (pd.DataFrame({"s": table.subject_id, "p": split}).groupby("s")["p"].nunique() == 1).all()


def test_leakage_is_detected():
    table = pd.DataFrame({"subject_id": ["a", "a", "b"]})
    with pytest.raises(AssertionError, match="more than one split"):
        check_no_leakage(table, pd.Series(["train", "test", "val"]))


def test_split_of_a_subject_does_not_depend_on_other_hospitals_rows_order():
    a = subject_splits(["5", "1", "3"])
    b = subject_splits(["3", "5", "1", "1"])
    assert a == b


@pytest.mark.parametrize("env", ["cxp", "nih", "pad"])
def test_no_leakage_on_real_metadata(env):
    from cxrstudy.data.sources import open_source

    table = open_source(env, "metadata").table()
    split = assign_splits(table)
    check_no_leakage(table, split)
    assert set(split.unique()) == {"train", "val", "test"}
