"""The preprocess entry point: statistics, cache inputs, skipped images, metadata mode."""

import json
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from realdata_fixtures import make_data_root

from cxrstudy.data.dataspec import PATH_NOT_LOGGED
from cxrstudy.labels import LABELS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "entrypoints"))
import preprocess as preprocess_entry  # noqa: E402


def _only_run():
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`cxrstudy.entry` = 'preprocess'")
    assert len(runs) == 1
    return runs.iloc[0]


def _stats(run_id):
    return pd.read_csv(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="dataset_stats.csv"))


def test_synthetic_preprocess_logs_stats_inputs_and_is_idempotent(store, capsys):
    args = ["--envs", "CXP,nih", "--image_size", "32", "--synthetic_patients", "60"]
    preprocess_entry.main(args)
    out = capsys.readouterr()
    assert "SYNTHETIC DATA" in out.err
    row = _only_run()
    assert row["status"] == "FINISHED" and row["tags.cxrstudy.synthetic"] == "true"
    stats = _stats(row.run_id)
    assert list(stats.columns) == ["env", "split", "label", "n", "positives", "prevalence"]
    assert len(stats) == 2 * 3 * 9 and set(stats.label) == set(LABELS)
    assert ((stats.positives / stats.n - stats.prevalence).abs() < 1e-12).all()
    inputs = MlflowClient().get_run(row.run_id).inputs.dataset_inputs
    assert {d.dataset.name for d in inputs} == {f"{e}-{s}-32px" for e in ("cxp", "nih") for s in ("train", "val", "test")}
    for d in inputs:  # where in the cache, not where on this machine
        uri = json.loads(d.dataset.source)["uri"]
        assert uri.startswith(f"synthetic/{d.dataset.name.split('-')[0]}/") and not Path(uri).is_absolute(), uri
    assert "Dataset statistics" in out.out
    cache_files = sorted(p.stat().st_mtime_ns for p in Path("cache").rglob("images.u8"))
    preprocess_entry.main(args)  # same inputs: no image is decoded again
    assert sorted(p.stat().st_mtime_ns for p in Path("cache").rglob("images.u8")) == cache_files


def test_real_preprocess_counts_skipped_images_and_lists_them_only_in_the_cache(store, tmp_path, capsys):
    data = make_data_root(tmp_path / "data")
    preprocess_entry.main(["--source", "real", "--data_root", str(data["data_root"]), "--image_size", "24"])
    out = capsys.readouterr().out
    row = _only_run()
    # the data spec it logs names no path of this machine
    spec = json.loads(MlflowClient().get_run(row.run_id).data.params["cfg.data_spec"])
    assert spec["source"] == "real" and spec["data_root"] == PATH_NOT_LOGGED, spec
    assert str(tmp_path) not in json.dumps(MlflowClient().get_run(row.run_id).data.params)
    path = mlflow.artifacts.download_artifacts(run_id=row.run_id, artifact_path="skipped_images.csv")
    skipped = pd.read_csv(path)
    # the artifact counts them and names the cache's list; it names no image, since the image paths
    # hold patient ids (p19999987/, patient00005/, 00000004_002.png), and no path on this machine
    assert list(skipped.columns) == ["env", "split", "error", "n_images", "list"]
    text = Path(path).read_text()
    for e in ("mimic", "cxp", "nih", "pad"):
        (hit,) = skipped[skipped.env == e].itertuples()
        assert (hit.error, hit.n_images) == ("OSError", 1)
        assert not Path(hit.list).is_absolute() and hit.list.startswith(f"real/{e}/") and hit.list.endswith("/skipped.csv")
        truncated = Path(data[e].truncated_path)
        assert truncated.name not in text and truncated.relative_to(data[e].root).as_posix() not in text
        # the cache on this machine lists the file, and the console says where
        local = pd.read_csv(tmp_path / "cache" / hit.list)
        assert list(local["path"]) == [str(truncated)] and local["reason"].iloc[0].startswith("OSError")
        assert f"{e}/{hit.split}: 1 listed in {tmp_path / 'cache' / hit.list}" in out
    for folder in ("p19999987", "patient00005", "00000004_"):  # the truncated images' patients
        assert folder not in text
    assert str(tmp_path) not in text
    for e in ("mimic", "cxp", "nih", "pad"):
        assert row[f"metrics.count/{e}/dropped_missing"] == data[e].dropped_missing
    stats = _stats(row.run_id)
    for e in ("mimic", "cxp", "nih", "pad"):
        assert stats.loc[(stats.env == e) & (stats.label == "Any"), "n"].sum() == data[e].rows


def test_metadata_mode_runs_without_images_and_says_mimic_is_absent(store, capsys):
    preprocess_entry.main(["--source", "metadata"])
    err = capsys.readouterr().err
    assert "mimic skipped" in err
    stats = _stats(_only_run().run_id)
    assert set(stats.env) == {"cxp", "nih", "pad"}
    assert stats.groupby("env")["n"].sum().loc["nih"] == 112120 * 9


@pytest.mark.parametrize("args,message", [
    (["--envs", "cxp,charite"], "unknown hospital 'charite'"),
    (["--source", "dicom"], "unknown source 'dicom'"),
    (["--image_size", "huge"], "is not an integer"),
    (["--source", "real"], "needs data_root"),
    (["--shortcut_strength", "-1"], "out of range"),
])
def test_bad_parameters_exit_2_before_any_work(store, capsys, args, message):
    with pytest.raises(SystemExit) as e:
        preprocess_entry.main(args)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
    assert mlflow.search_runs(search_all_experiments=True).empty


def test_missing_data_folder_is_one_clear_error(store, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        preprocess_entry.main(["--source", "real", "--data_root", str(tmp_path / "nowhere"), "--envs", "nih"])
    assert e.value.code == 1
    assert "folder for hospital 'nih' not found" in capsys.readouterr().err
