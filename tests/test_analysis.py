"""The analysis package: comparison table from MLflow, headline, hypothesis 2, figures, report,
the analyze entry point, and the fake-comparison benchmark (small)."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

import analysis
from analysis import (SETTINGS_COLUMNS, comparison_table, headline, hypothesis2_table, latest_dataset_stats,
                      run_analysis)
from analysis.report import write_report
from cxrstudy.errors import DataError


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


analyze_entry = _load(ROOT / "entrypoints" / "analyze.py", "_entry_analyze")
fake = _load(ROOT / "benchmarks" / "make_fake_comparisons.py", "_make_fake_comparisons")


def new_experiment(name: str = "study") -> str:
    return MlflowClient().create_experiment(name, artifact_location=str(Path.cwd() / "artifacts" / name))


_CLOCK = [1_700_000_000_000]


def log_compare(eid, base, added, label, delta, lo, hi, *, balance="none", single=0.6, source="synthetic",
                status="FINISHED", start=None, seeds=(0, 1, 2), strength=None) -> str:
    """A comparison run with the tags and metrics of cxrstudy.runs.study.run_compare."""
    client = MlflowClient()
    if start is None:
        _CLOCK[0] += 1000
        start = _CLOCK[0]
    tags = {"cxrstudy.entry": "compare", "base": base, "added": added, "label": label, "balance": balance,
            "source": source, "seeds": ",".join(map(str, seeds)),
            "cxrstudy.synthetic": str(source == "synthetic").lower(),
            "cxrstudy.compare_key": f"{base}{added}{label}{balance}{source}{strength}",
            **({"shortcut_strength": f"{strength:g}"} if strength is not None else {})}
    run = client.create_run(eid, start_time=start, tags=tags)
    m = {"wga_single": single, "wga_pair": single + delta, "delta_wga": delta, "delta_ci_low": lo,
         "delta_ci_high": hi, "hurt": float(delta < 0), "n_seeds": float(len(seeds))}
    metrics = [Metric(f"compare/{k}", v, start, 0) for k, v in m.items()]
    metrics += [Metric(f"compare/seed{s}/delta_wga", delta, start, 0) for s in seeds]
    client.log_batch(run.info.run_id, metrics=metrics)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status, end_time=start + 10)
    return run.info.run_id


# four unbalanced settings with known results, two balanced
CASES = [  # base, added, label, delta, ci_low, ci_high, balance, wga_single
    ("cxp", "nih", "Pneumonia", -0.05, -0.08, -0.02, "none", 0.60),    # hurt, whole CI < 0
    ("nih", "cxp", "Pneumonia", -0.01, -0.04, 0.02, "none", 0.50),     # hurt, CI spans 0
    ("cxp", "pad", "Pneumonia", 0.03, 0.01, 0.05, "none", 0.70),       # helped, whole CI > 0
    ("cxp", "nih", "Effusion", 0.01, -0.02, 0.04, "none", 0.40),       # neither
    ("cxp", "nih", "Pneumonia", 0.10, 0.05, 0.15, "hospital_label", 0.60),   # beats both
    ("nih", "cxp", "Pneumonia", -0.03, -0.06, -0.01, "hospital_label", 0.50),  # worse than both
]


def log_cases(eid, source="synthetic"):
    return [log_compare(eid, b, a, lab, d, lo, hi, balance=bal, single=s, source=source)
            for b, a, lab, d, lo, hi, bal, s in CASES]


def settings_frame(rows) -> pd.DataFrame:
    """A settings table built by hand (no MLflow)."""
    out = []
    for i, (b, a, lab, bal, single, pair, lo, hi) in enumerate(rows):
        out.append({"base": b, "added": a, "label": lab, "balance": bal, "n_seeds": 3, "wga_single": single,
                    "wga_pair": pair, "delta_mean": pair - single, "delta_ci_low": lo, "delta_ci_high": hi,
                    "hurt": int(pair < single), "run_id": f"r{i}", "source": "synthetic", "synthetic": True,
                    "fake": False})
    return pd.DataFrame(out)


# --- queries ---------------------------------------------------------------------------------------

def test_comparison_table_and_headline(store):
    eid = new_experiment()
    ids = log_cases(eid)
    with mlflow.start_run(experiment_id=eid, tags={"cxrstudy.entry": "train", "base": "cxp", "added": "nih",
                                                   "label": "Pneumonia"}):
        mlflow.log_metric("compare/delta_wga", -1.0)  # not a comparison run: ignored
    t = comparison_table([eid])
    assert list(t.columns[:len(SETTINGS_COLUMNS)]) == SETTINGS_COLUMNS
    assert {"run_id", "source"} <= set(t.columns)
    assert len(t) == 6
    assert set(t["run_id"]) == set(ids)
    row = t[(t.base == "cxp") & (t.added == "nih") & (t.label == "Pneumonia") & (t.balance == "none")].iloc[0]
    assert row["delta_mean"] == pytest.approx(-0.05)
    assert row["wga_pair"] == pytest.approx(0.55)
    assert (row["delta_ci_low"], row["delta_ci_high"]) == pytest.approx((-0.08, -0.02))
    assert row["hurt"] == 1 and row["n_seeds"] == 3 and row["source"] == "synthetic"
    # protocol order: labels (No Finding, ..., Effusion, Pneumonia, ...), then hospitals (mimic, cxp, nih, pad)
    assert list(t["label"]) == ["Effusion"] + ["Pneumonia"] * 5
    assert list(zip(t["base"], t["added"], t["balance"]))[1:] == [
        ("cxp", "nih", "none"), ("cxp", "nih", "hospital_label"), ("cxp", "pad", "none"),
        ("nih", "cxp", "none"), ("nih", "cxp", "hospital_label")]

    h = headline(t)
    assert list(h) == ["none", "hospital_label"]
    assert h["none"]["n_settings"] == 4
    assert h["none"]["hurt_fraction"] == pytest.approx(0.5)
    assert h["none"]["hurt_fraction_significant"] == pytest.approx(0.25)
    assert h["none"]["helped_fraction_significant"] == pytest.approx(0.25)
    assert h["hospital_label"] == pytest.approx({**h["hospital_label"], "n_settings": 2, "hurt_fraction": 0.5,
                                                 "hurt_fraction_significant": 0.5,
                                                 "helped_fraction_significant": 0.5})


def test_newest_finished_run_wins(store):
    eid = new_experiment()
    log_compare(eid, "cxp", "nih", "Edema", -0.10, -0.2, -0.05, start=1_000)
    newest = log_compare(eid, "cxp", "nih", "Edema", 0.04, 0.01, 0.07, start=3_000)
    log_compare(eid, "cxp", "nih", "Edema", 0.02, -0.01, 0.05, start=2_000)  # re-run logged late but started earlier
    log_compare(eid, "cxp", "nih", "Edema", -0.30, -0.4, -0.2, start=5_000, status="FAILED")
    log_compare(eid, "cxp", "nih", "Edema", -0.30, -0.4, -0.2, start=6_000, status="RUNNING")
    log_compare(eid, "cxp", "nih", "Edema", -0.20, -0.3, -0.1, start=4_000, source="real")  # another setting
    t = comparison_table([eid])
    assert len(t) == 2
    syn = t[t.source == "synthetic"].iloc[0]
    assert syn["run_id"] == newest and syn["delta_mean"] == pytest.approx(0.04) and syn["hurt"] == 0
    assert len(analysis.comparison_runs([eid])) == 4  # FINISHED only, re-runs included
    real = comparison_table([eid], source="real")
    assert list(real["delta_mean"]) == pytest.approx([-0.20]) and list(real["source"]) == ["real"]
    assert comparison_table([eid], source="synthetic")["run_id"].tolist() == [newest]


def test_a_study_reads_the_comparisons_over_its_own_seeds(store, tmp_path):
    """A one-seed study next to a newer three-seed one reads its own seed; no filter reads the newest."""
    eid = new_experiment()
    one = log_compare(eid, "cxp", "nih", "Edema", 0.10, 0.05, 0.15, start=1_000, seeds=(0,))
    three = log_compare(eid, "cxp", "nih", "Edema", -0.05, -0.1, -0.01, start=2_000, seeds=(2, 0, 1))
    res = analysis.run_analysis([eid], out_dir=tmp_path / "a", log=False, figures=False, verbose=False, seeds=[0])
    assert res["settings"]["run_id"].tolist() == [one] and res["settings"]["delta_mean"].tolist() == [0.10]
    res = analysis.run_analysis([eid], out_dir=tmp_path / "b", log=False, figures=False, verbose=False,
                                seeds=[0, 1, 2])
    assert res["settings"]["run_id"].tolist() == [three]
    res = analysis.run_analysis([eid], out_dir=tmp_path / "c", log=False, figures=False, verbose=False)
    assert res["settings"]["run_id"].tolist() == [three]
    with pytest.raises(DataError, match="over seeds 5"):
        analysis.run_analysis([eid], out_dir=tmp_path / "d", log=False, figures=False, verbose=False, seeds=[5])


def test_empty_and_current_experiment(store):
    eid = new_experiment("empty")
    t = comparison_table([eid])
    assert t.empty and list(t.columns[:len(SETTINGS_COLUMNS)]) == SETTINGS_COLUMNS
    assert headline(t) == {}
    mlflow.set_experiment("empty")
    assert analysis.queries.resolve_experiment_ids() == [eid]
    with pytest.raises(DataError, match=r"no FINISHED comparison runs in experiment 'empty'.*-e compare.*-e main"):
        run_analysis(out_dir="out")


def test_latest_dataset_stats(store, tmp_path):
    eid = new_experiment()
    assert latest_dataset_stats([eid]) is None
    for i, n in enumerate((100, 200)):
        stats = pd.DataFrame({"env": ["cxp", "cxp"], "split": ["train", "test"], "label": ["Pneumonia"] * 2,
                              "n": [n, n // 10], "positives": [n // 10, n // 100],
                              "prevalence": [0.1, 0.1]})
        with mlflow.start_run(experiment_id=eid, tags={"cxrstudy.entry": "preprocess"}):
            mlflow.log_param("cfg.source", "synthetic" if i == 0 else "real")
            p = tmp_path / f"s{i}" / "dataset_stats.csv"
            p.parent.mkdir()
            stats.to_csv(p, index=False)
            mlflow.log_artifact(str(p))
        time.sleep(0.01)
    got = latest_dataset_stats([eid])
    assert list(got.columns) == ["env", "split", "label", "n", "positives", "prevalence"]
    assert got["n"].tolist() == [200, 20]
    assert latest_dataset_stats([eid], source="synthetic")["n"].tolist() == [100, 10]


# --- summary ---------------------------------------------------------------------------------------

def test_hypothesis2_flags():
    s = settings_frame([
        # base, added, label, balance, single, pair, ci_low, ci_high
        ("cxp", "nih", "Edema", "none", 0.60, 0.50, -0.15, -0.05),
        ("cxp", "nih", "Edema", "hospital_label", 0.60, 0.70, 0.05, 0.15),   # beats both
        ("nih", "cxp", "Edema", "none", 0.60, 0.70, 0.05, 0.15),
        ("nih", "cxp", "Edema", "hospital_label", 0.60, 0.55, -0.1, 0.0),    # worse than both
        ("pad", "cxp", "Edema", "none", 0.60, 0.50, -0.15, -0.05),
        ("pad", "cxp", "Edema", "hospital_label", 0.60, 0.55, -0.1, 0.0),    # better than pair, below single
        ("mimic", "cxp", "Edema", "none", 0.60, 0.50, -0.15, -0.05),         # no balanced twin: left out
        ("cxp", "mimic", "Edema", "size_matched", 0.60, 0.40, -0.3, -0.1),   # no unbalanced twin
    ])
    h2 = hypothesis2_table(s).set_index(["base", "added"])
    assert len(h2) == 3
    assert h2.loc[("cxp", "nih"), ["balanced_beats_both", "balanced_worse_than_both"]].tolist() == [True, False]
    assert h2.loc[("nih", "cxp"), ["balanced_beats_both", "balanced_worse_than_both"]].tolist() == [False, True]
    assert h2.loc[("pad", "cxp"), ["balanced_beats_both", "balanced_worse_than_both",
                                   "balanced_beats_pair"]].tolist() == [False, False, True]
    r = h2.loc[("nih", "cxp")]
    assert (r["wga_single"], r["wga_pair"], r["wga_balanced"]) == pytest.approx((0.60, 0.70, 0.55))
    summ = analysis.hypothesis2_summary(h2.reset_index())
    assert (summ["n_balanced_beats_both"], summ["n_balanced_worse_than_both"]) == (1, 1)
    assert hypothesis2_table(s[s.balance == "none"]).empty
    h = headline(s)
    assert h["size_matched"]["n_settings"] == 1 and h["size_matched"]["hurt_fraction_significant"] == 1.0
    m = analysis.summary.as_metrics(h, hypothesis2_table(s))
    assert m["analysis/hurt_fraction"] == pytest.approx(0.75)
    assert m["analysis/balanced/hurt_fraction"] == pytest.approx(2 / 3)
    assert m["analysis/size_matched/n_settings"] == 1
    assert m["analysis/h2/balanced_worse_than_both_fraction"] == pytest.approx(1 / 3)
    assert not h2["balanced_beats_both_significant"].any()  # no balanced-vs-pair CI logged: never significant


def test_hypothesis2_significance_needs_both_seed_aware_cis_on_one_side():
    s = settings_frame([
        ("cxp", "nih", "Edema", "none", 0.60, 0.50, -0.15, -0.05),
        ("cxp", "nih", "Edema", "hospital_label", 0.60, 0.70, 0.05, 0.15),   # beats both, both CIs > 0
        ("nih", "cxp", "Edema", "none", 0.60, 0.50, -0.15, -0.05),
        ("nih", "cxp", "Edema", "hospital_label", 0.60, 0.70, 0.05, 0.15),   # beats both, pair CI spans 0
        ("pad", "cxp", "Edema", "none", 0.60, 0.70, 0.05, 0.15),
        ("pad", "cxp", "Edema", "hospital_label", 0.60, 0.50, -0.15, -0.05),  # worse than both, both CIs < 0
    ])
    bal = s["balance"] == "hospital_label"
    s.loc[bal, "balanced_minus_pair_ci_low"] = [0.02, -0.05, -0.30]
    s.loc[bal, "balanced_minus_pair_ci_high"] = [0.30, 0.30, -0.10]
    h2 = hypothesis2_table(s).set_index(["base", "added"])
    assert h2["balanced_beats_both"].tolist() == [True, True, False]
    assert h2["balanced_beats_both_significant"].tolist() == [True, False, False]
    assert h2["balanced_worse_than_both_significant"].tolist() == [False, False, True]
    summ = analysis.hypothesis2_summary(h2.reset_index())
    assert (summ["n_balanced_beats_both_significant"], summ["n_balanced_worse_than_both_significant"]) == (1, 1)


# --- files: settings.csv, figures, report ----------------------------------------------------------

def test_run_analysis_files_and_report(store, tmp_path):
    eid = new_experiment()
    log_cases(eid)
    stats = pd.DataFrame([(e, sp, lab, 1000, 100, 0.1) for e in ("nih", "cxp") for sp in ("train", "val", "test")
                          for lab in ("No Finding", "Pneumonia")],
                         columns=["env", "split", "label", "n", "positives", "prevalence"])
    with mlflow.start_run(experiment_id=eid, tags={"cxrstudy.entry": "preprocess"}):
        mlflow.log_param("cfg.source", "synthetic")
        stats.to_csv(tmp_path / "dataset_stats.csv", index=False)
        mlflow.log_artifact(str(tmp_path / "dataset_stats.csv"))
    out = tmp_path / "out"
    res = run_analysis([eid], out_dir=out, verbose=False)
    assert "analysis/hurt_fraction" in res["metrics"]  # nothing logged: no active run
    df = pd.read_csv(out / "settings.csv")
    assert list(df.columns) == SETTINGS_COLUMNS
    assert len(df) == 6
    h2 = pd.read_csv(out / "hypothesis2.csv")
    assert len(h2) == 2 and h2["balanced_worse_than_both"].sum() == 1 and h2["balanced_beats_both"].sum() == 1
    names = {p.name for p in res["figures"].values()}
    assert names == {"wga_bars.png", "delta_heatmap_none.png", "delta_heatmap_hospital_label.png"}
    for p in res["figures"].values():
        assert p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG"
    text = (out / "report.md").read_text()
    first = text.splitlines()[:4]
    assert any("WARNING: SYNTHETIC DATA" in line for line in first)
    assert "Adding a second hospital lowered WGA in 2 of 4 settings (50%); in 1 (25%) the whole seed-aware 95% CI was below 0" \
        in text
    assert "43%" in text and "108" in text
    assert "worse than both in 1 (50%)" in text and "such settings exist" in text
    for name in names:
        assert f"]({name})" in text  # embedded by relative path
    assert "## Dataset statistics" in text and "| cxp | train | 1000 | 10.00 | 10.00 |" in text
    assert res["settings"]["run_id"].notna().all()


def test_report_without_balancing_or_stats_real_data(tmp_path):
    s = settings_frame([("cxp", "nih", "Edema", "none", 0.6, 0.5, -0.2, -0.01)]).assign(source="real",
                                                                                      synthetic=False)
    figs = analysis.figures.make_figures(s, tmp_path / "figs")
    assert set(figs) == {"wga_bars", "delta_heatmap_none"}
    path = write_report(s, headline(s), hypothesis2_table(s), None, figs, tmp_path)
    text = path.read_text()
    assert "SYNTHETIC" not in text
    assert "lowered WGA in 1 of 1 settings (100%)" in text
    assert "hypothesis 2 cannot be assessed" in text
    assert "No FINISHED preprocess run" in text
    assert "](figs/wga_bars.png)" in text


def test_figures_mixed_sources_and_full_grid(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for src in ("synthetic", "real"):
        for lab in ("No Finding", "Pneumonia", "Any"):
            for b in ("mimic", "cxp", "nih", "pad"):
                for a in ("mimic", "cxp", "nih", "pad"):
                    if a != b:
                        for bal in ("none", "hospital_label"):
                            single, d = rng.uniform(0.3, 0.8), rng.normal(0, 0.05)
                            rows.append((b, a, lab, bal, single, single + d, d - 0.03, d + 0.03))
    s = pd.concat([settings_frame(rows[:72]).assign(source="synthetic"),
                   settings_frame(rows[72:]).assign(source="real", synthetic=False)], ignore_index=True)
    figs = analysis.figures.make_figures(s, tmp_path)
    assert set(figs) == {f"{f}_{src}" for src in ("real", "synthetic")
                         for f in ("wga_bars", "delta_heatmap_none", "delta_heatmap_hospital_label")}


# --- the analyze entry point -----------------------------------------------------------------------

def test_analyze_entry_point_end_to_end(store, capsys):
    eid = new_experiment("study")
    log_cases(eid)
    log_compare(eid, "cxp", "nih", "Edema", -0.02, -0.05, 0.01, source="real")
    analyze_entry.main(["--experiment", "study", "--source", "synthetic"])
    out = capsys.readouterr().out
    assert "lowered WGA in 2 of 4 settings (50%)" in out
    runs = MlflowClient().search_runs([eid], "tags.`cxrstudy.entry` = 'analyze'")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED"
    assert r.data.tags["cxrstudy.synthetic"] == "true"
    m = r.data.metrics
    assert m["analysis/hurt_fraction"] == pytest.approx(0.5)
    assert m["analysis/hurt_fraction_significant"] == pytest.approx(0.25)
    assert m["analysis/n_settings"] == 4
    assert m["analysis/balanced/hurt_fraction"] == pytest.approx(0.5)
    assert m["analysis/balanced/n_settings"] == 2
    assert r.data.params["cfg.analysis.source"] == "synthetic"
    arts = {a.path for a in MlflowClient().list_artifacts(r.info.run_id)}
    assert {"settings.csv", "hypothesis2.csv", "report.md", "wga_bars.png", "delta_heatmap_none.png",
            "delta_heatmap_hospital_label.png"} <= arts
    local = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="settings.csv")
    assert list(pd.read_csv(local).columns) == SETTINGS_COLUMNS
    # by id, all sources: the real setting joins
    analyze_entry.main(["--experiment", eid])
    runs = MlflowClient().search_runs([eid], "tags.`cxrstudy.entry` = 'analyze'",
                                      order_by=["attributes.start_time DESC"])
    assert runs[0].data.metrics["analysis/n_settings"] == 5


def test_analyze_current_experiment_and_errors(store, capsys):
    os.environ["MLFLOW_EXPERIMENT_NAME"] = "fresh"  # monkeypatch restores the env of store only
    try:
        with pytest.raises(SystemExit) as e:
            analyze_entry.main([])
        assert e.value.code == 1
        err = capsys.readouterr().err
        assert "no FINISHED comparison runs in experiment 'fresh'" in err
        assert "mlflow run . -e compare" in err and "-e main" in err
        eid = mlflow.get_experiment_by_name("fresh").experiment_id
        assert MlflowClient().search_runs([eid]) == []  # no analyze run was left behind
        log_compare(eid, "cxp", "nih", "Edema", -0.02, -0.05, 0.01)
        analyze_entry.main([])
        assert "lowered WGA in 1 of 1 settings" in capsys.readouterr().out
    finally:
        del os.environ["MLFLOW_EXPERIMENT_NAME"]
    with pytest.raises(SystemExit) as e:
        analyze_entry.main(["--experiment", "nope"])
    assert e.value.code == 2 and "no experiment named or numbered 'nope'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        analyze_entry.main(["--source", "bogus"])
    assert e.value.code == 2


# --- the fake-comparison benchmark (small) ---------------------------------------------------------

def test_make_fake_comparisons_small(store, tmp_path):
    made = fake.make_fake_comparisons(200, "fake", seed=1, balances=("none",))
    assert made["method"] == "bulk" and len(made["run_ids"]) == 200
    t = time.perf_counter()
    res = run_analysis([made["experiment_id"]], out_dir=tmp_path / "out", verbose=False)
    print(f"\nrun_analysis over 200 fake comparison runs: {time.perf_counter() - t:.2f} s "
          f"(made in {made['seconds']:.2f} s)")
    s = res["settings"]
    assert len(s) == 108 and res["fake"] and res["synthetic"]
    exp = made["expected"].set_index(["base", "added", "label", "balance", "source"])
    got = s.set_index(["base", "added", "label", "balance", "source"]).loc[exp.index]
    assert (got["run_id"] == exp["run_id"]).all()  # the newest re-run of every setting
    assert np.allclose(got["delta_mean"], exp["delta_mean"])
    assert "WARNING: FAKE RUNS" in res["report"].read_text()
    full = analysis.comparison_runs([made["experiment_id"]])
    assert len(full) == 200


def test_time_analysis_leaves_the_callers_mlflow_alone(store):
    eid = new_experiment()
    with mlflow.start_run(experiment_id=eid) as run:  # e.g. the benchmark entry point's own run
        seconds = fake.time_analysis(60)
        mlflow.log_metric("bench/analyze_seconds_60", seconds)
    print(f"\ntime_analysis(60): {seconds:.2f} s")
    assert seconds > 0 and mlflow.get_tracking_uri() == store
    assert MlflowClient().get_run(run.info.run_id).data.metrics["bench/analyze_seconds_60"] == seconds


def test_fake_bulk_rows_match_client_rows(store):
    a = fake.make_fake_comparisons(12, "bulk", seed=3, method="bulk")
    b = fake.make_fake_comparisons(12, "client", seed=3, method="client")
    ta = comparison_table([a["experiment_id"]]).drop(columns=["run_id", "experiment_id", "start_time"])
    tb = comparison_table([b["experiment_id"]]).drop(columns=["run_id", "experiment_id", "start_time"])
    pd.testing.assert_frame_equal(ta, tb)
    ra = MlflowClient().get_run(a["run_ids"][0])
    rb = MlflowClient().get_run(b["run_ids"][0])
    assert ra.info.status == rb.info.status == "FINISHED"
    assert ra.data.metrics == rb.data.metrics
    assert {k: v for k, v in ra.data.tags.items() if k != "mlflow.user"} == \
        {k: v for k, v in rb.data.tags.items() if k != "mlflow.user"}


def test_make_fake_refuses_a_real_experiment(store):
    eid = new_experiment("real-study")
    log_compare(eid, "cxp", "nih", "Edema", -0.02, -0.05, 0.01)
    with pytest.raises(DataError, match="not fake"):
        fake.make_fake_comparisons(5, "real-study")
