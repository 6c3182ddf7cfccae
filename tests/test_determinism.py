"""Same models whatever the parallelism: a configuration's weights do not depend on the thread count
of the process that trains it, and a study gives the same settings with one worker or two."""

import shutil
import sys
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.tracking import MlflowClient

from cxrstudy.train.device import TRAIN_THREADS
from cxrstudy.train.loop import prepare_data, train_model
from test_train_evaluate import tiny_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "entrypoints"))
CPU = torch.device("cpu")


def test_training_weights_do_not_depend_on_the_threads_of_the_process(tmp_path):
    cfg = tiny_config(tmp_path, max_steps=8, eval_every=4)
    data = prepare_data(cfg, progress=False)
    before = torch.get_num_threads()
    states, inside = [], []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = train_model(cfg, data, device=CPU, checkpoint_dir=tmp_path / f"t{threads}", progress=False,
                              on_eval=lambda step, m: inside.append(torch.get_num_threads()))
            states.append(out.best_state)
            assert torch.get_num_threads() == threads  # restored afterwards
    finally:
        torch.set_num_threads(before)
    assert inside and set(inside) == {TRAIN_THREADS}
    assert states[0].keys() == states[1].keys()
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def _settings_csv(tmp_path) -> pd.DataFrame:
    runs = mlflow.search_runs(search_all_experiments=True, filter_string="tags.`cxrstudy.entry` = 'analyze'")
    assert len(runs) == 1
    path = MlflowClient().download_artifacts(runs.run_id.iloc[0], "settings.csv", str(tmp_path))
    return pd.read_csv(path)


def test_a_study_gives_the_same_settings_with_one_or_two_workers(store, migrated_db, tiny_main_argv, tmp_path,
                                                                  monkeypatch):
    import main as main_entry

    tables = []
    for workers in (1, 2):
        db = tmp_path / f"w{workers}" / "mlflow.db"  # a store and a cache of its own: nothing is reused
        db.parent.mkdir()
        shutil.copy(migrated_db, db)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
        mlflow.set_tracking_uri(f"sqlite:///{db}")
        main_entry.main(tiny_main_argv("--balances", "none,hospital_label", "--workers", str(workers),
                                       "--cache_dir", str(db.parent / "cache")))
        tables.append(_settings_csv(db.parent))
    assert len(tables[0]) == 4
    pd.testing.assert_frame_equal(tables[0], tables[1])
