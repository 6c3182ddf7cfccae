"""benchmark: our data path and training throughput against the naive way, side by side.

    mlflow run . --env-manager local -e benchmark          # or: make bench

Logs every figure as an MLflow metric, prints it with its target and PASS/FAIL, and writes
benchmarks/RESULTS.md (figures, machine, command). It measures; it always exits 0.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.tracking import keys
from cxrstudy.runs import cli  # noqa: E402

PARAMS = {"size": "full", "results": "benchmarks/RESULTS.md"}


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="benchmark", doc=__doc__)

    def body():
        import datetime

        import mlflow

        from cxrstudy.tools import bench

        from cxrstudy.tracking import runs as tracking
        from cxrstudy.params import as_choice

        size = as_choice("size", raw["size"], ("full", "tiny"))
        tracking.setup()
        with tracking.run(run_name=f"benchmark-{size}", tags={keys.ENTRY_TAG: keys.ENTRY_BENCHMARK}):
            figs = bench.run_all(size)
            mlflow.log_metrics({f.name: f.value for f in figs})
            lines = [f.line() for f in figs]
            if not any(f.name.startswith("bench/gpu_") for f in figs):
                lines.append("SKIP  bench/gpu_train_images_per_s, bench/gpu_model_only_images_per_s: "
                             "no CUDA device on this machine (they run only on a GPU)")
            print("\n".join(lines))
            out = Path(raw["results"])
            if size == "full" and out.name:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(
                    "# Benchmark results\n\n"
                    f"Measured {datetime.date.today()} on {bench.machine()}.\n\n"
                    "Command: `make bench` (= `mlflow run . --env-manager local -e benchmark`).\n"
                    "Ratios are measured side by side in one process, medians over repeats.\n\n"
                    "```\n" + "\n".join(lines) + "\n```\n")
                mlflow.log_artifact(str(out))

    cli.run(body)


if __name__ == "__main__":
    main()
