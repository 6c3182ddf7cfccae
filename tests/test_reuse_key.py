"""A training run's identity covers the data it read: changed data means retraining, and runs
trained under the older key are reused only when their data can be shown to be today's."""

from __future__ import annotations

import dataclasses

from mlflow.tracking import MlflowClient

import cxrstudy.data.synthetic.source as synthetic_source
from cxrstudy.runs.train import run_training
from cxrstudy.tracking import keys
from cxrstudy.train.config import TrainConfig
from test_train_evaluate import tiny_config


def test_fields_at_their_default_are_left_out_of_the_identity(tmp_path):
    cfg = tiny_config(tmp_path)
    ident = cfg.identity()
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    for name, default in defaults.items():
        if name == "preset":
            assert name not in ident
        elif getattr(cfg, name) == default:
            assert name not in ident, name
        else:
            assert name in ident, name
    assert "data_fingerprint" in ident and "data" in ident
    # one general rule: a non-default value enters the hash, the default leaves it unchanged
    assert tiny_config(tmp_path, augment_strength=1.0).content_hash() == cfg.content_hash()
    assert tiny_config(tmp_path, augment_strength=0.5).content_hash() != cfg.content_hash()
    assert tiny_config(tmp_path, seed=0).content_hash() == cfg.content_hash()
    assert tiny_config(tmp_path, seed=1).content_hash() != cfg.content_hash()
    # the preset's name is not part of the identity, only its values
    assert dataclasses.replace(cfg, preset="paper").content_hash() == cfg.content_hash()


def test_a_changed_synthetic_source_retrains_instead_of_reusing(store, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    first = run_training(cfg, progress=False)
    assert not first["reused"]
    tags = MlflowClient().get_run(first["run_id"]).data.tags
    assert tags[keys.DATA_FINGERPRINT_TAG] == cfg.data_fingerprint()
    assert tags[keys.CONFIG_HASH_TAG] == cfg.content_hash()
    assert run_training(cfg, progress=False)["reused"]  # same data: reused

    old_hash, old_fp = cfg.content_hash(), cfg.data_fingerprint()
    monkeypatch.setattr(synthetic_source, "RENDERER_VERSION", "test-changed")  # new pixels
    assert cfg.data_fingerprint() != old_fp and cfg.content_hash() != old_hash
    again = run_training(cfg, progress=False)
    assert not again["reused"] and again["run_id"] != first["run_id"]
    # other data, so another registered name (one name holds one dataset's models): its first version
    assert again["registered_model"] == cfg.model_name() != first["registered_model"]
    assert again["registered_version"] == 1


def _as_legacy(run_id: str, cfg) -> None:
    """Make a run look as if it had been trained under the version-1 key (no fingerprint tag)."""
    client = MlflowClient()
    client.set_tag(run_id, keys.CONFIG_HASH_TAG, cfg.legacy_hash())
    client.delete_tag(run_id, keys.DATA_FINGERPRINT_TAG)


def test_a_legacy_run_is_reused_when_its_logged_inputs_are_todays_data(store, tmp_path):
    cfg = tiny_config(tmp_path)
    first = run_training(cfg, progress=False)
    _as_legacy(first["run_id"], cfg)
    res = run_training(cfg, progress=False)
    assert res["reused"] and res["run_id"] == first["run_id"]
    tags = MlflowClient().get_run(first["run_id"]).data.tags  # adopted under the current key
    assert tags[keys.CONFIG_HASH_TAG] == cfg.content_hash()
    assert tags[keys.DATA_FINGERPRINT_TAG] == cfg.data_fingerprint()


def test_a_legacy_run_on_other_data_is_retrained(store, tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    first = run_training(cfg, progress=False)
    _as_legacy(first["run_id"], cfg)
    legacy = cfg.legacy_hash()
    monkeypatch.setattr(synthetic_source, "RENDERER_VERSION", "test-changed")
    assert cfg.legacy_hash() == legacy  # the old key cannot see the change...
    res = run_training(cfg, progress=False)
    assert not res["reused"] and res["run_id"] != first["run_id"]  # ...the inputs check does
