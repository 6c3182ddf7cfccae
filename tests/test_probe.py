"""Issue 5: the hospital-identifiability probe and the correlation-strength test sets."""

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from cxrstudy.train.config import TrainConfig
from cxrstudy.evaluate.correlation import (R_VALUES, balanced_cells, correlation_set, correlation_sweep,
                                  hospital_label_correlation, positive_hospital, sweep_metrics)
from cxrstudy.data.dataspec import DataSpec
from cxrstudy.evaluate.embeddings import extract_embeddings
from cxrstudy.evaluate.probe import (PROBE_COLUMNS, balance_classes, fit_probe, metric_name, probe_metrics, probe_tasks,
                            run_probes, split_balanced)
from cxrstudy.data.synthetic import SyntheticConfig


# ---------------------------------------------------------------- probe: balancing, split, tasks, names

def test_balance_classes_undersamples_to_the_smallest_without_duplicates():
    rng = np.random.default_rng(0)
    groups = [np.arange(0, 100), np.arange(100, 130), np.arange(130, 180)]
    out = balance_classes(groups, rng)
    assert [len(g) for g in out] == [30, 30, 30]
    for g, o in zip(groups, out):
        assert len(np.unique(o)) == len(o) and set(o) <= set(g)
    assert set(out[1]) == set(groups[1])  # the smallest class is kept whole


def test_split_is_80_20_stratified_and_disjoint():
    rng = np.random.default_rng(1)
    groups = [np.arange(0, 50), np.arange(50, 100)]
    tr_i, tr_y, te_i, te_y = split_balanced(groups, rng)
    assert len(te_i) == 20 and len(tr_i) == 80
    assert (te_y == 0).sum() == (te_y == 1).sum() == 10
    assert (tr_y == 0).sum() == (tr_y == 1).sum() == 40
    assert not set(tr_i) & set(te_i) and set(tr_i) | set(te_i) == set(range(100))
    # labels follow the class an index came from
    assert ((te_i < 50) == (te_y == 0)).all() and ((tr_i < 50) == (tr_y == 0)).all()
    with pytest.raises(ValueError):
        split_balanced([np.arange(5), np.arange(6)], rng)


def test_fit_probe_separates_separable_classes_and_not_identical_ones():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (300, 16))
    b = rng.normal(0, 1, (200, 16))
    b[:, 0] += 6.0  # Bayes accuracy 0.9987
    X = np.vstack([a, b])
    res = fit_probe(X, [np.arange(300), np.arange(300, 500)], seed=0)
    assert res["accuracy"] >= 0.97 and res["n_test"] == 80 and res["n_train"] == 320  # balanced to 200 + 200
    same = rng.normal(0, 1, (1000, 16))
    res0 = fit_probe(same, [np.arange(500), np.arange(500, 1000)], seed=0)
    assert abs(res0["accuracy"] - 0.5) < 0.06


def _frame(counts):
    """counts: {(env, y): n} -> frame with env, y_true (in that order)."""
    rows = [(e, y) for (e, y), n in counts.items() for _ in range(n)]
    return pd.DataFrame(rows, columns=["env", "y_true"])


def test_probe_tasks_cover_pairs_all_controls_and_labels_and_skip_small_classes():
    frame = _frame({("cxp", 0): 60, ("cxp", 1): 30, ("nih", 0): 50, ("nih", 1): 10, ("pad", 0): 40, ("pad", 1): 25})
    tasks, skipped = probe_tasks(frame, ["pad", "cxp", "nih"], min_per_class=20)
    names = {(t["task"], ",".join(t["hospitals"]), t["label_value"]) for t in tasks}
    assert {("pair", "cxp,nih", 0), ("pair", "cxp,pad", 0), ("pair", "nih,pad", 0), ("all", "cxp,nih,pad", 0),
            ("pair", "cxp,pad", 1), ("control", "cxp", 0), ("control", "nih", 0), ("control", "pad", 0),
            ("label", "cxp", None), ("label", "pad", None)} == names
    # nih has 10 positives: every probe needing them is skipped, with a message
    assert any(s.startswith("pair cxp,nih label=1") for s in skipped)
    assert any(s.startswith("label nih") for s in skipped)
    ctrl = next(t for t in tasks if t["task"] == "control" and t["hospitals"] == ["cxp"])
    env, y = frame["env"].to_numpy(), frame["y_true"].to_numpy()
    halves = ctrl["groups"]
    assert len(halves[0]) == len(halves[1]) == 30 and not set(halves[0]) & set(halves[1])
    assert all((env[h] == "cxp").all() and (y[h] == 0).all() for h in halves)


def test_metric_names_and_results_table():
    assert metric_name("pair", "cxp,nih", 0) == "probe/cxp_vs_nih/label0/acc"
    assert metric_name("all", "cxp,nih,pad", 1) == "probe/all/label1/acc"
    assert metric_name("control", "pad", 0) == "probe/control/pad/acc"
    assert metric_name("label", "nih", "") == "probe/label/nih/acc"
    rng = np.random.default_rng(0)
    frame = _frame({("cxp", 0): 40, ("cxp", 1): 40, ("nih", 0): 40, ("nih", 1): 40})
    X = rng.normal(0, 1, (len(frame), 8)) + (frame["env"] == "nih").to_numpy()[:, None] * 3.0
    res, skipped = run_probes(X, frame, ["cxp", "nih"])
    assert list(res.columns[:len(PROBE_COLUMNS)]) == PROBE_COLUMNS and not skipped
    assert set(res["task"]) == {"pair", "control", "label"}
    m = probe_metrics(res)
    assert m["probe/cxp_vs_nih/label0/acc"] >= 0.95 and m["probe/cxp_vs_nih/label1/acc"] >= 0.95
    assert "probe/pairs_mean/label0/acc" in m and "probe/control/cxp/acc" in m and "probe/label/nih/acc" in m


# ---------------------------------------------------------------- correlation-strength sets

def _two_hospitals(n_a1=50, n_a0=70, n_b1=40, n_b0=90):
    return _frame({("cxp", 1): n_a1, ("cxp", 0): n_a0, ("nih", 1): n_b1, ("nih", 0): n_b0})


@pytest.mark.parametrize("r,k", [(0.0, 20), (0.1, 22), (0.5, 30), (0.8, 36), (1.0, 40)])
def test_correlation_sets_have_exact_cells_and_correlation(r, k):
    frame = _two_hospitals()
    cells, n = balanced_cells(frame, ("cxp", "nih"), seed=0)
    assert n == 40  # the smallest cell (nih positives)
    assert all(len(c) == 40 for c in cells.values())
    idx = correlation_set(cells, n, "cxp", "nih", r)
    sub = frame.iloc[idx]
    counts = sub.groupby(["env", "y_true"]).size().to_dict()
    assert counts.get(("cxp", 1), 0) == k and counts.get(("cxp", 0), 0) == n - k
    assert counts.get(("nih", 1), 0) == n - k and counts.get(("nih", 0), 0) == k
    assert len(sub) == 2 * n and sub["y_true"].sum() == n
    if r < 1.0:
        assert hospital_label_correlation(sub, "cxp") == pytest.approx(r, abs=1e-9)
    else:
        assert hospital_label_correlation(sub, "cxp") == pytest.approx(1.0)


def test_correlation_sets_are_nested_and_positive_hospital_is_the_more_prevalent():
    frame = _two_hospitals()
    assert positive_hospital(frame, ("cxp", "nih")) == "cxp"  # 50/120 vs 40/130
    cells, n = balanced_cells(frame, ("cxp", "nih"), seed=3)
    prev = set()
    for r in R_VALUES:
        cur = set(correlation_set(cells, n, "cxp", "nih", r))
        # moving to a higher r swaps some images, never the whole set: positives of cxp only grow
        cxp_pos = {i for i in cur if frame.iloc[i]["env"] == "cxp" and frame.iloc[i]["y_true"] == 1}
        assert prev <= cxp_pos
        prev = cxp_pos
    with pytest.raises(ValueError, match="empty: nih/y=1"):
        balanced_cells(_two_hospitals(n_b1=0), ("cxp", "nih"))
    with pytest.raises(ValueError):
        correlation_set(cells, n, "cxp", "nih", 1.5)


def test_sweep_separates_a_shortcut_model_from_a_label_model():
    frame = _two_hospitals()
    y = frame["y_true"].to_numpy()
    shortcut = frame.assign(y_score=(frame["env"] == "cxp").astype(float) * 0.8 + 0.1)  # predicts the hospital
    honest = frame.assign(y_score=y * 0.8 + 0.1)  # predicts the label
    s_short = correlation_sweep(shortcut, ("cxp", "nih"), 0.5, draws=2)
    s_hon = correlation_sweep(honest, ("cxp", "nih"), 0.5, draws=2)
    assert list(s_short["r"]) == list(R_VALUES)
    assert (s_short["wga"].iloc[:-1] == 0).all() and s_short["wga"].iloc[-1] == 1.0
    assert (s_hon["wga"] == 1.0).all() and (s_hon["auroc"] == 1.0).all()
    assert s_short["correlation"].iloc[5] == pytest.approx(0.5)
    m = sweep_metrics(s_short)
    assert m["corr/0.0/wga"] == 0.0 and m["corr/1.0/wga"] == 1.0 and "corr/0.5/auroc" in m
    assert m["corr/wga_gain_r1_minus_r0"] == 1.0


# ---------------------------------------------------------------- on trained models (registry)

def _train(tmp_path, strength: float = 1.0, n_patients: int = 2000, **kw):
    from cxrstudy.runs.train import run_training

    spec = DataSpec(source="synthetic", image_size=32, cache_dir=str(tmp_path / "cache"),
                    synthetic=SyntheticConfig(n_patients=n_patients, seed=0, shortcut_strength=strength))
    cfg = TrainConfig(**{"envs": ("cxp", "nih"), "label": "Any", "data": spec, "seed": 0, "backbone": "smallcnn",
                         "pretrained": "none", "lr": 1e-3, "batch_size": 32, "max_steps": 20, "eval_every": 10,
                         "patience": 5, **kw})
    return run_training(cfg, progress=False)


def test_embeddings_come_from_the_registered_model(store, tmp_path):
    from cxrstudy.tracking.registry import load_trained

    res = _train(tmp_path, 1.0, n_patients=200)
    trained = load_trained(res["model_uri"])
    entries = {e: trained.spec.entry(e, "test", progress=False) for e in ("cxp", "nih")}
    X, frame = extract_embeddings(trained.model, entries, "Any", torch.device("cpu"), batch_size=7, progress=False)
    assert X.shape == (len(frame), trained.model.embed_dim) and X.dtype == np.float32
    assert list(frame.columns) == ["env", "subject_id", "y_true"]
    img = entries["nih"].images()[entries["nih"].index["slot"].to_numpy()[:3]]
    x = torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(1).float() / 255
    with torch.no_grad():
        ref = trained.model.embed(x).numpy()
    first_nih = np.flatnonzero(frame["env"].to_numpy() == "nih")[:3]
    np.testing.assert_allclose(X[first_nih], ref, rtol=1e-4, atol=1e-5)


def test_probe_ground_truth_on_synthetic_hospitals(store, tmp_path):
    """Default shortcut: hospitals told apart (>= 0.95); shortcut_strength=0: chance, like the control."""
    from cxrstudy.runs.probe import run_probe

    envs = ["cxp", "nih", "pad"]
    strong = run_probe(_train(tmp_path, 1.0)["model_uri"], envs, progress=False)
    pairs = strong["results"][strong["results"]["task"] == "pair"]
    assert len(pairs[pairs["label_value"] == 0]) == 3
    assert (pairs["accuracy"] >= 0.95).all(), pairs
    assert strong["metrics"]["probe/all/label0/acc"] >= 0.95

    none = run_probe(_train(tmp_path / "s0", 0.0)["model_uri"], envs, progress=False)
    res = none["results"]
    chance_pairs = res[(res["task"] == "pair") & (res["label_value"] == 0)]
    assert len(chance_pairs) == 3 and ((chance_pairs["accuracy"] - 0.5).abs() <= 0.1).all(), chance_pairs
    for r in (strong["results"], res):
        ctrl = r[r["task"] == "control"]
        assert len(ctrl) >= 2 and ((ctrl["accuracy"] - 0.5).abs() <= 0.1).all(), ctrl

    # what was logged, and reuse
    run = MlflowClient().get_run(strong["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["cxrstudy.entry"] == "probe"
    for k in ("probe/cxp_vs_nih/label0/acc", "probe/cxp_vs_pad/label1/acc", "probe/all/label0/acc",
              "probe/control/nih/acc", "probe/label/cxp/acc"):
        assert k in run.data.metrics
    local = MlflowClient().download_artifacts(strong["run_id"], "probe_results.csv", str(tmp_path))
    table = pd.read_csv(local)
    assert list(table.columns[:len(PROBE_COLUMNS)]) == PROBE_COLUMNS
    again = run_probe(run.data.tags["model_uri"], envs, progress=False)
    assert again["reused"] and again["run_id"] == strong["run_id"]


def test_evaluate_logs_the_correlation_sweep(store, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    res = _train(tmp_path, 1.0, n_patients=300)
    path = Path(__file__).resolve().parents[1] / "entrypoints" / "evaluate.py"
    spec = importlib.util.spec_from_file_location("_evaluate_entry", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.main(["--model_uri", res["model_uri"], "--n_bootstrap", "20", "--corr_draws", "2"])
    out = capsys.readouterr().out
    assert "correlation sweep" in out
    runs = MlflowClient().search_runs(["0"], "tags.`cxrstudy.entry` = 'evaluate'")
    assert len(runs) == 1
    m = runs[0].data.metrics
    for r in R_VALUES:
        assert f"corr/{r:.1f}/wga" in m and f"corr/{r:.1f}/auroc" in m
    assert m["corr/0.5/correlation"] == pytest.approx(0.5, abs=0.05)
    names = {a.path for a in MlflowClient().list_artifacts(runs[0].info.run_id)}
    assert {"corr_sweep.png", "corr_sweep.csv", "predictions.csv"} <= names
    with pytest.raises(SystemExit) as e:  # a single-hospital model cannot be swept
        single = _train(tmp_path, n_patients=300, envs=("cxp",), batch_size=16, max_steps=4,
                        eval_every=2)["model_uri"]
        mod.main(["--model_uri", single, "--envs", "cxp,nih", "--corr_sweep", "true", "--n_bootstrap", "0"])
    assert e.value.code == 2



def test_analysis_probe_table_figure_and_report(store, tmp_path):
    import mlflow

    from analysis.queries import probe_runs
    from analysis.probes import pair_accuracies, probe_figure, probe_metrics as study_metrics, \
        probe_summary, report_section

    for i, (envs, acc) in enumerate((("cxp,nih", 0.99), ("cxp,pad", 0.97))):
        with mlflow.start_run(tags={"cxrstudy.entry": "probe", "model_uri": f"models:/m{i}/1", "train_envs": envs,
                                    "label": "Effusion", "balance": "none", "seed": "0",
                                    "probe_envs": "cxp,nih,pad", "source": "synthetic"}):
            mlflow.log_metrics({"probe/cxp_vs_nih/label0/acc": acc, "probe/cxp_vs_pad/label0/acc": acc - 0.02,
                                "probe/nih_vs_pad/label1/acc": 0.9, "probe/pairs_mean/label0/acc": acc - 0.01,
                                "probe/pairs_min/label0/acc": acc - 0.02, "probe/control/cxp/acc": 0.52,
                                "probe/label/cxp/acc": 0.7})
    runs = probe_runs(["0"], "synthetic")
    assert len(runs) == 2 and probe_runs(["0"], "real").empty
    pairs = pair_accuracies(runs)
    assert len(pairs) == 6 and set(pairs["pair"]) == {"cxp vs nih", "cxp vs pad", "nih vs pad"}
    summary = probe_summary(runs)
    assert sorted(summary["pairs_min_label0"]) == pytest.approx([0.95, 0.97])
    m = study_metrics(summary)
    assert m["analysis/probe/n_models"] == 2 and m["analysis/probe/pairs_min_label0"] == pytest.approx(0.95)
    fig = probe_figure(runs, tmp_path / "probe_accuracy.png", synthetic=True)
    assert fig.is_file() and fig.stat().st_size > 5000
    text = "\n".join(report_section(summary, fig.name))
    assert "## Hospital identifiability probe" in text and "probe_accuracy.png" in text and "0.950" in text
