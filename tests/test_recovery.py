"""Damaged local state is reported in one line and rebuilt or re-fetched (a cache entry, a local
checkpoint); a finished run keeps no resumable checkpoint on the server; a reused version gets the
aliases a kill left unset; a run that reuses a model leads to it (issue 22 items 4, 8, 9, 11)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.tracking import MlflowClient
from realdata_fixtures import make_data_root

import cxrstudy.runs.train as train_run_mod
from cxrstudy.data.cache import build_entry, find_entry
from cxrstudy.data.sources import open_source
from cxrstudy.runs.train import CHECKPOINT_ARTIFACT_DIR, checkpoint_dir, run_training
from cxrstudy.tracking import keys
from cxrstudy.tracking.registry import describe_version, load_model
from test_train_evaluate import history, tiny_config


def _damage_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "damaged" in line]


# ------------------------------------------------------------------------- a damaged cache entry


def _truncate_half(path):
    os.truncate(path, path.stat().st_size // 2)


DAMAGES = {
    "images.u8 truncated": lambda e: _truncate_half(e / "images.u8"),
    "index.csv truncated": lambda e: _truncate_half(e / "index.csv"),
    "index.csv garbage": lambda e: (e / "index.csv").write_bytes(b"\x00\xff garbage\n1,2\n"),
    "manifest.json broken": lambda e: (e / "manifest.json").write_text('{"key": "x", "sha'),
    "manifest.json missing": lambda e: (e / "manifest.json").unlink(),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_cache_entry_is_reported_in_one_line_and_rebuilt(tmp_path, capsys, damage):
    src = open_source("nih", "real", data_root=make_data_root(tmp_path / "data")["data_root"])
    rows = src.table()
    clean = build_entry(src, rows, "train", 32, tmp_path / "c", workers=1, progress=False)
    reference = np.asarray(clean.images()).copy()
    DAMAGES[damage](clean.path)
    capsys.readouterr()
    assert find_entry(tmp_path / "c", src, rows, "train", 32) is None  # a damaged entry is not found
    rebuilt = build_entry(src, rows, "train", 32, tmp_path / "c", workers=1, progress=False)
    lines = _damage_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(clean.path) in lines[0] and "rebuilding" in lines[0], lines
    assert rebuilt.path == clean.path and rebuilt.index.equals(clean.index)
    np.testing.assert_array_equal(np.asarray(rebuilt.images()), reference)
    # the next use finds it intact: nothing more to say
    build_entry(src, rows, "train", 32, tmp_path / "c", workers=1, progress=False)
    assert not _damage_lines(capsys.readouterr().err)


# ----------------------------------------------------------------- a damaged local checkpoint


def _crash_after_validations(monkeypatch, n_ok: int):
    """Make the next training die like a lost machine after ``n_ok`` validations (and their checkpoint
    uploads); returns a function that undoes it."""
    real = train_run_mod.validation_metrics
    calls = {"n": 0}

    def crash(m):
        calls["n"] += 1
        if calls["n"] == n_ok + 1:
            raise RuntimeError("machine lost")
        return real(m)

    monkeypatch.setattr(train_run_mod, "validation_metrics", crash)
    return lambda: monkeypatch.setattr(train_run_mod, "validation_metrics", real)


def _runs(status_filter: str = ""):
    client = MlflowClient()
    exps = [e.experiment_id for e in client.search_experiments()]
    return client.search_runs(exps, status_filter)


def _checkpoints_on_server(run_id: str) -> list[str]:
    return [a.path for a in MlflowClient().list_artifacts(run_id, CHECKPOINT_ARTIFACT_DIR)]


def _state_dict(uri: str) -> dict:
    model, _, _ = load_model(uri)
    return model.state_dict()


def test_a_truncated_local_checkpoint_is_replaced_by_the_server_copy_and_the_run_ends_as_if_uninterrupted(
        store, tmp_path, monkeypatch, capsys):
    cfg = tiny_config(tmp_path, max_steps=12, seed=3, patience=10)
    undo = _crash_after_validations(monkeypatch, 2)
    with pytest.raises(RuntimeError, match="machine lost"):
        run_training(cfg, progress=False)
    undo()
    (dead,) = _runs("attributes.status != 'FINISHED'")
    assert _checkpoints_on_server(dead.info.run_id) == [f"{CHECKPOINT_ARTIFACT_DIR}/last.pt"]
    last = checkpoint_dir(cfg) / "last.pt"
    os.truncate(last, last.stat().st_size // 2)  # `truncate -s 50%` after the kill
    capsys.readouterr()

    resumed = run_training(cfg, progress=False)
    lines = _damage_lines(capsys.readouterr().err)
    assert len(lines) == 1 and str(last) in lines[0] and dead.info.run_id in lines[0], lines
    client = MlflowClient()
    run = client.get_run(resumed["run_id"])
    assert run.info.status == "FINISHED" and not resumed["reused"]
    assert run.data.tags.get(keys.RESUMED_TAG) == "true"
    # no further FAILED run: the one the crash left, and the finished one
    assert sorted(r.info.status for r in _runs()) == ["FAILED", "FINISHED"]
    # the same validations and the same weights as an uninterrupted run
    reference = run_training(cfg, force=True, progress=False)
    assert history(resumed["run_id"]) == history(reference["run_id"])
    assert [s for s, _ in history(resumed["run_id"])] == [3, 6, 9, 12]
    got, want = _state_dict(resumed["model_uri"]), _state_dict(reference["model_uri"])
    assert got.keys() == want.keys()
    for k in want:
        assert torch.equal(got[k], want[k]), k
    # the model is registered: neither the finished run nor the one it resumed from keeps a checkpoint
    assert _checkpoints_on_server(resumed["run_id"]) == [] and _checkpoints_on_server(dead.info.run_id) == []


def test_a_truncated_local_checkpoint_without_a_server_copy_trains_from_the_start(store, tmp_path, monkeypatch,
                                                                                   capsys):
    cfg = tiny_config(tmp_path)
    undo = _crash_after_validations(monkeypatch, 1)
    with pytest.raises(RuntimeError, match="machine lost"):
        run_training(cfg, progress=False)
    undo()
    (dead,) = _runs("attributes.status != 'FINISHED'")
    get_artifact_repository(dead.info.artifact_uri).delete_artifacts(CHECKPOINT_ARTIFACT_DIR)  # no server copy
    assert _checkpoints_on_server(dead.info.run_id) == []
    last = checkpoint_dir(cfg) / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    res = run_training(cfg, progress=False)
    lines = _damage_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "step 0" in lines[0], lines
    run = MlflowClient().get_run(res["run_id"])
    assert run.info.status == "FINISHED" and keys.RESUMED_TAG not in run.data.tags
    assert [s for s, _ in history(res["run_id"])] == [3, 6]
    assert sorted(r.info.status for r in _runs()) == ["FAILED", "FINISHED"]


# ---------------------------------------------------- no resumable checkpoint on a finished run


def test_a_finished_run_keeps_no_resumable_checkpoint_on_the_server(store, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    uploaded = []
    real_upload = train_run_mod.upload_checkpoint

    def upload(path):
        real_upload(path)
        uploaded.append(_checkpoints_on_server(train_run_mod.mlflow.active_run().info.run_id))

    monkeypatch.setattr(train_run_mod, "upload_checkpoint", upload)
    res = run_training(cfg, progress=False)
    # while it trained, the checkpoint was on the server (so a kill could resume elsewhere), uploaded at
    # the first of its two validations only (the next upload is due UPLOAD_EVERY_S later) ...
    assert uploaded == [[f"{CHECKPOINT_ARTIFACT_DIR}/last.pt"]]
    # ... and once the model is registered it is gone, the model itself stays
    assert _checkpoints_on_server(res["run_id"]) == []
    assert not checkpoint_dir(cfg).exists()
    load_model(res["model_uri"])


def test_checkpoint_uploads_are_at_most_one_per_interval(monkeypatch):
    sent, clock = [], [100.0]
    monkeypatch.setattr(train_run_mod, "upload_checkpoint", sent.append)
    monkeypatch.setattr(train_run_mod.time, "monotonic", lambda: clock[0])
    upload = train_run_mod.checkpoint_uploader(every_s=30)
    for t, name in [(100, "a"), (110, "b"), (129.9, "c"), (130, "d"), (150, "e"), (161, "f")]:
        clock[0] = t
        upload(name)
    assert sent == ["a", "d", "f"]


def test_through_a_tracking_server_the_checkpoints_leave_its_disk(store, tmp_path, monkeypatch):
    """With ``mlflow server`` (artifacts proxied, as a shared study runs), the checkpoint files of the
    finished run and of the interrupted run it resumed from are gone from the server's artifact folder."""
    import mlflow

    from cxrstudy.tracking.server import local_server

    cfg = tiny_config(tmp_path)
    artifacts = tmp_path / "mlartifacts"
    with local_server(store, artifacts) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        mlflow.set_experiment("through-the-server")  # created by the server: artifacts under mlflow-artifacts:/
        undo = _crash_after_validations(monkeypatch, 1)
        with pytest.raises(RuntimeError, match="machine lost"):
            run_training(cfg, progress=False)
        undo()
        assert [p.name for p in artifacts.rglob("last.pt")] == ["last.pt"]  # uploaded through the server
        res = run_training(cfg, progress=False)
        assert MlflowClient().get_run(res["run_id"]).info.status == "FINISHED"
        assert not list(artifacts.rglob("last.pt"))
        assert all(_checkpoints_on_server(r.info.run_id) == [] for r in _runs())
        load_model(res["model_uri"])  # the model itself is still there


# ----------------------------------------------- killed right after registration: aliases restored


def test_a_version_registered_just_before_a_kill_gets_its_aliases_when_reused(store, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    name = cfg.model_name()
    real_update = MlflowClient.update_model_version

    def killed(self, *a, **k):  # the first thing after mlflow.register_model
        raise KeyboardInterrupt

    monkeypatch.setattr(MlflowClient, "update_model_version", killed)
    with pytest.raises(KeyboardInterrupt):
        run_training(cfg, progress=False)
    monkeypatch.setattr(MlflowClient, "update_model_version", real_update)
    client = MlflowClient()
    (killed_run,) = _runs()
    assert killed_run.info.status == "KILLED"
    assert client.get_model_version(name, "1").aliases == []  # what the kill left: "aliases: none"
    assert _checkpoints_on_server(killed_run.info.run_id)

    again = run_training(cfg, progress=False)
    assert again["reused"] and again["run_id"] == killed_run.info.run_id and again["registered_version"] == 1
    mv = client.get_model_version(name, "1")
    assert sorted(mv.aliases) == ["best", "seed0"] and mv.description
    assert int(client.get_model_version_by_alias(name, "seed0").version) == 1
    assert "aliases: none" not in describe_version(name, 1) and "seed0" in describe_version(name, 1)
    assert _checkpoints_on_server(killed_run.info.run_id) == []  # finished now: no checkpoint kept
    # a newer version of the same seed keeps seed<k>: restoring the old one's aliases does not take it back
    forced = run_training(cfg, force=True, progress=False)
    assert int(client.get_model_version_by_alias(name, "seed0").version) == forced["registered_version"] == 2
    from cxrstudy.tracking.registry import restore_version_metadata

    assert "seed0" not in restore_version_metadata(name, 1)
    assert int(client.get_model_version_by_alias(name, "seed0").version) == 2


# ------------------------------------------------------ a run that reuses a model leads to it


def test_a_run_that_reuses_a_model_carries_its_registered_name_and_version(store, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    first = run_training(cfg, progress=False)
    client = MlflowClient()
    exp = client.get_experiment_by_name("Default").experiment_id
    opened = client.create_run(exp)  # what `mlflow run . -e train` opens before our code starts
    monkeypatch.setenv("MLFLOW_RUN_ID", opened.info.run_id)
    again = run_training(cfg, progress=False)
    assert again["reused"] and again["run_id"] == first["run_id"]
    run = client.get_run(opened.info.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[keys.REUSED_RUN_TAG] == first["run_id"]
    assert run.data.tags.get("registered_model") == cfg.model_name()  # keys.REGISTERED_MODEL_TAG
    assert run.data.tags.get("registered_version") == "1"
    from cxrstudy.tracking.registry import resolve_model_uri

    assert resolve_model_uri(opened.info.run_id) == f"models:/{cfg.model_name()}/1"


def test_the_training_loop_discards_a_damaged_checkpoint_of_its_own_in_one_line(tmp_path, capsys):
    """The loop's own guard (JTT's identification checkpoint, ``identify/last.pt``, is local only):
    a damaged ``last.pt`` is reported and training starts from step 0, ending as a fresh run does."""
    from cxrstudy.train.loop import prepare_data, train_model

    cfg = tiny_config(tmp_path)
    data = prepare_data(cfg, progress=False)
    cpu = torch.device("cpu")
    fresh = train_model(cfg, data, device=cpu, checkpoint_dir=tmp_path / "fresh", progress=False)
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "last.pt").write_bytes(b"PK\x03\x04 cut short")
    capsys.readouterr()
    again = train_model(cfg, data, device=cpu, checkpoint_dir=tmp_path / "damaged", progress=False)
    lines = _damage_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "step 0" in lines[0], lines
    assert again.history == fresh.history
    for k in fresh.best_state:
        assert torch.equal(again.best_state[k], fresh.best_state[k]), k
