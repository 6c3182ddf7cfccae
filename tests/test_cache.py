import os

import numpy as np
import pytest
from realdata_fixtures import make_data_root

import cxrstudy.data.cache as cache_mod
from cxrstudy.data.cache import build_entry, find_entry
from cxrstudy.data.images import decode_image
from cxrstudy.data.sources import open_source


@pytest.fixture
def data_root(tmp_path):
    return make_data_root(tmp_path / "data")


@pytest.mark.parametrize("env", ["mimic", "cxp", "nih", "pad"])
def test_real_sources_build_a_cache_and_skip_the_truncated_image(data_root, tmp_path, env):
    src = open_source(env, "real", data_root=data_root["data_root"])
    rows = src.table()
    entry = build_entry(src, rows, "all", 32, tmp_path / "cache", workers=2, progress=False)
    ds = data_root[env]
    assert entry.manifest["n_rows"] == len(rows) == ds.rows
    assert entry.manifest["n_skipped"] == 1
    skipped = entry.skipped()
    assert skipped["path"].tolist() == [ds.truncated_path]
    assert skipped["reason"].str.len().gt(0).all()
    assert ds.truncated_path not in set(entry.index["path"])
    images = entry.images()
    assert images.shape == (len(rows), 32, 32) and images.dtype == np.uint8
    # every cached image equals a direct decode of its file
    for slot, path in zip(entry.index["slot"], entry.index["path"]):
        np.testing.assert_array_equal(images[slot], decode_image(path, 32))


def test_rebuild_with_same_inputs_does_nothing(data_root, tmp_path):
    src = open_source("nih", "real", data_root=data_root["data_root"])
    rows = src.table()
    e1 = build_entry(src, rows, "train", 32, tmp_path / "c", workers=1, progress=False)
    mtime = os.stat(e1.path / "images.u8").st_mtime_ns
    e2 = build_entry(src, rows, "train", 32, tmp_path / "c", workers=1, progress=False)
    assert e2.path == e1.path and e2.key == e1.key
    assert os.stat(e2.path / "images.u8").st_mtime_ns == mtime
    assert find_entry(tmp_path / "c", src, rows, "train", 32).key == e1.key
    # other inputs -> another entry
    e3 = build_entry(src, rows.iloc[:-2], "train", 32, tmp_path / "c", workers=1, progress=False)
    assert e3.key != e1.key
    e4 = build_entry(src, rows, "train", 24, tmp_path / "c", workers=1, progress=False)
    assert e4.key != e1.key


def test_killed_build_resumes_and_equals_a_clean_build(data_root, tmp_path, monkeypatch):
    src = open_source("cxp", "real", data_root=data_root["data_root"])
    rows = src.table()
    monkeypatch.setattr(cache_mod, "CHUNK", 3)
    clean = build_entry(src, rows, "x", 32, tmp_path / "clean", workers=1, progress=False)

    real_decode = cache_mod._decode_chunk
    calls = {"n": 0}

    def dying(chunk_id, start, paths):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the process is killed mid-build
        return real_decode(chunk_id, start, paths)

    monkeypatch.setattr(cache_mod, "_decode_chunk", dying)
    with pytest.raises(KeyboardInterrupt):
        build_entry(src, rows, "x", 32, tmp_path / "c", workers=1, progress=False)
    assert find_entry(tmp_path / "c", src, rows, "x", 32) is None  # nothing half-written is visible
    partial = list((tmp_path / "c").rglob("*.partial"))
    assert len(partial) == 1 and np.load(partial[0] / "done.npy").sum() == 2

    decoded = []

    def counting(chunk_id, start, paths):
        decoded.append(chunk_id)
        return real_decode(chunk_id, start, paths)

    monkeypatch.setattr(cache_mod, "_decode_chunk", counting)
    resumed = build_entry(src, rows, "x", 32, tmp_path / "c", workers=1, progress=False)
    assert 0 not in decoded and 1 not in decoded  # finished chunks are not redone
    np.testing.assert_array_equal(np.asarray(resumed.images()), np.asarray(clean.images()))
    assert resumed.index.equals(clean.index)
    assert not list((tmp_path / "c").rglob("*.partial"))
