"""analyze: the headline over every comparison run: how often did adding a hospital lower WGA?

    mlflow run . --env-manager local -e analyze
    mlflow run . --env-manager local -e analyze -P source=synthetic -P experiment=cxrstudy

Reads the FINISHED comparison runs of the experiment (the newest run per setting), logs the
hurt fractions as metrics (``analysis/...``; ``analysis/balanced/...`` for hospital-label
balancing), and the artifacts settings.csv, hypothesis2.csv, the figures and report.md.
``-P seeds=0,1,2`` reads only the comparisons over exactly those seeds (what `main` does for its own
study); ``-P shortcut_strengths=0,1`` only those strengths.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.runs import cli  # noqa: E402
from cxrstudy.tracking import keys  # noqa: E402

PARAMS = {
    "source": "",
    "experiment": "",
    "shortcut_strengths": "",
    "seeds": "",
}


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="analyze", doc=__doc__)

    def body():
        import os
        import tempfile

        import mlflow

        from analysis import format_headline, log_results, run_analysis
        from cxrstudy.tracking import runs as tracking
        from cxrstudy.data.sources import parse_source_kind

        from cxrstudy.params import as_float_list, as_int_list, optional

        strengths = (as_float_list("shortcut_strengths", raw["shortcut_strengths"], lo=0.0, hi=10.0)
                     if optional(raw["shortcut_strengths"]) else None)
        seeds = as_int_list("seeds", raw["seeds"], lo=0) if optional(raw["seeds"]) else None
        source = raw["source"].strip().lower()
        source = "" if source in ("", "all") else parse_source_kind(source)
        tracking.check_tracking_server(tracking.tracking_uri())
        if raw["experiment"].strip():
            exp = tracking.resolve_experiment(raw["experiment"])
            eid = exp.experiment_id
            under_mlflow_run = os.environ.get("MLFLOW_RUN_ID") or os.environ.get("MLFLOW_EXPERIMENT_ID")
            tracking.setup(None if under_mlflow_run else exp.name)  # the analyze run goes next to its runs
        else:
            tracking.setup()
            eid = tracking.current_experiment_id()
        with tempfile.TemporaryDirectory(prefix="cxrstudy-analyze-") as tmp:
            # DataError (no comparison runs) comes before any run is opened
            result = run_analysis([eid], source or None, out_dir=tmp, log=False, verbose=False,
                                  shortcut_strengths=strengths, seeds=seeds)
            print(format_headline(result, report_path=False), flush=True)
            with tracking.run(run_name=f"analyze-{source or 'all'}", tags={keys.ENTRY_TAG: keys.ENTRY_ANALYZE}):
                tracking.mark_synthetic(result["synthetic"])
                log_results(result)
                print(f"analysis logged to run {mlflow.active_run().info.run_id} "
                      f"(artifacts: {', '.join(sorted(result['files']))})", file=sys.stderr)

    cli.run(body)


if __name__ == "__main__":
    main()
