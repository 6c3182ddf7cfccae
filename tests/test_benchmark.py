"""The benchmark runs end to end at a tiny size (figures are not asserted: they are measured)."""

import math

from cxrstudy import bench


def test_benchmark_runs_at_tiny_size(tmp_path):
    figs = bench.run_all("tiny", workdir=tmp_path)
    names = [f.name for f in figs]
    assert names[:5] == ["bench/cache_build_speedup", "bench/metadata_seconds", "bench/loader_speedup",
                         "bench/loader_vs_memory", "bench/analyze_seconds_50"]
    for f in figs:
        assert math.isfinite(f.value) and f.value > 0
        assert ("PASS" in f.line()) or ("FAIL" in f.line()) or ("n/a" in f.line())
