"""One registered name per dataset (issue 22 item 10): models trained on different data (here the
synthetic hospitals at shortcut strength 1 and the null, strength 0) never share a registered name,
so no alias (``best``, ``seed<k>``) and no ``@latest`` mixes them."""

from __future__ import annotations

import dataclasses

from mlflow.tracking import MlflowClient

from cxrstudy.runs.train import run_training
from cxrstudy.tracking import keys
from cxrstudy.tracking.registry import describe_version, load_trained
from test_train_evaluate import tiny_config


def at_strength(cfg, strength: float):
    syn = dataclasses.replace(cfg.data.synthetic, shortcut_strength=strength)
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, synthetic=syn))


def test_two_data_fingerprints_give_two_names_and_aliases_never_cross(store, tmp_path):
    default, null = tiny_config(tmp_path), at_strength(tiny_config(tmp_path), 0.0)
    assert default.data_fingerprint() != null.data_fingerprint()
    assert default.model_name() != null.model_name()
    # the default study's model, then the null's (same envs, label, balance, method and seed)
    first = run_training(default, progress=False)
    second = run_training(null, progress=False)
    assert first["registered_model"] == default.model_name() and second["registered_model"] == null.model_name()
    client = MlflowClient()
    for cfg, res in ((default, first), (null, second)):
        name = cfg.model_name()
        versions = client.search_model_versions(f"name = '{name}'")
        assert [int(v.version) for v in versions] == [1]
        assert {v.tags[keys.DATA_FINGERPRINT_TAG] for v in versions} == {cfg.data_fingerprint()}
        for alias in ("best", "seed0", "latest"):  # every alias, and MLflow's @latest, is this dataset's model
            mv = client.get_model_version_by_alias(name, alias)
            assert mv.tags[keys.DATA_FINGERPRINT_TAG] == cfg.data_fingerprint(), (name, alias)
            assert mv.run_id == res["run_id"]
        assert load_trained(f"models:/{name}@latest").run_id == res["run_id"]
    # the default's train again: already trained, and the line it prints says what @latest really is
    again = run_training(default, progress=False)
    assert again["reused"] and again["run_id"] == first["run_id"]
    line = describe_version(again["registered_model"], again["registered_version"])
    assert line == (f"model: models:/{default.model_name()}/1 (aliases: best, seed0; "
                    f"models:/{default.model_name()}@latest is v1)")
