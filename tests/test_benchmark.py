"""The benchmark runs end to end at a tiny size (figures are not asserted: they are measured)."""

import math

from cxrstudy.tools import bench


def test_benchmark_runs_at_tiny_size(tmp_path):
    figs = bench.run_all("tiny", workdir=tmp_path)
    names = [f.name for f in figs]
    assert names[:5] == ["bench/cache_build_speedup", "bench/metadata_seconds", "bench/loader_speedup",
                         "bench/loader_vs_memory", "bench/analyze_seconds_50"]
    for f in figs:
        assert math.isfinite(f.value) and f.value > 0
        assert ("PASS" in f.line()) or ("FAIL" in f.line()) or ("n/a" in f.line())


def test_benchmark_entry_point_logs_metrics_and_exits_0(store, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from mlflow.tracking import MlflowClient

    path = Path(__file__).resolve().parents[1] / "entrypoints" / "benchmark.py"
    spec = importlib.util.spec_from_file_location("_benchmark_entry", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out_md = tmp_path / "RESULTS.md"
    mod.main(["--size", "tiny", "--results", str(out_md)])  # returns (exit 0) whatever passes or fails
    printed = capsys.readouterr().out
    assert "bench/loader_speedup" in printed and ("PASS" in printed or "FAIL" in printed)
    runs = MlflowClient().search_runs(["0"], "tags.`cxrstudy.entry` = 'benchmark'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert {"bench/cache_build_speedup", "bench/loader_speedup", "bench/loader_vs_memory"} <= set(runs[0].data.metrics)
    assert not out_md.exists()  # only a full run rewrites the results file
