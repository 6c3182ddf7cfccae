"""benchmark: our data path and training throughput against the naive way, side by side.

    mlflow run . --env-manager local -e benchmark          # or: make bench
    mlflow run . --env-manager local -e benchmark -P only=training -P results=benchmarks/TRAINING.md

Logs every figure as an MLflow metric, prints it with its target and PASS/FAIL, and writes
benchmarks/RESULTS.md (figures, machine, command). It measures; it always exits 0. ``only`` runs
some parts (a comma list of cache, metadata, loader, loader_vs_memory, analyze, training, gpu).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.tracking import keys
from cxrstudy.runs import cli  # noqa: E402

PARAMS = {"size": "full", "only": "", "results": "benchmarks/RESULTS.md"}


def command(only: tuple, results: str) -> str:
    """How the results file was made, as it is written into it."""
    if not only:
        return "`make bench` (= `mlflow run . --env-manager local -e benchmark`)"
    return f"`mlflow run . --env-manager local -e benchmark -P only={','.join(only)} -P results={results}`"


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="benchmark", doc=__doc__)

    def body():
        import datetime

        import mlflow

        from cxrstudy.tools import bench

        from cxrstudy.tracking import runs as tracking
        from cxrstudy.params import as_choice

        size = as_choice("size", raw["size"], ("full", "tiny"))
        only = tuple(as_choice("only", part, bench.PARTS) for part in raw["only"].split(",") if part.strip())
        tracking.setup()
        with tracking.run(run_name=f"benchmark-{size}", tags={keys.ENTRY_TAG: keys.ENTRY_BENCHMARK}):
            figs = bench.run_all(size, only=only or bench.PARTS)
            mlflow.log_metrics({f.name: f.value for f in figs})
            lines = [f.line() for f in figs]
            if "gpu" in (only or bench.PARTS) and not any(f.name.startswith("bench/gpu_") for f in figs):
                lines.append("SKIP  bench/gpu_train_images_per_s, bench/gpu_model_only_images_per_s: "
                             "no CUDA device on this machine (they run only on a GPU)")
            print("\n".join(lines))
            out = Path(raw["results"])
            if size == "full" and out.name:
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_text(
                    "# Benchmark results\n\n"
                    f"Measured {datetime.date.today()} on {bench.machine()}.\n\n"
                    f"Command: {command(only, raw['results'])}.\n"
                    "Ratios are measured side by side in one process, medians over repeats.\n\n"
                    "```\n" + "\n".join(lines) + "\n```\n")
                mlflow.log_artifact(str(out))

    cli.run(body)


if __name__ == "__main__":
    main()
