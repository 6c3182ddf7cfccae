"""Analysis of the comparison runs: the headline (how often adding a hospital lowers WGA),
hypothesis 2 (does balancing help), the A/A noise floor, figures and a markdown report.

    from analysis import run_analysis
    result = run_analysis(experiment_ids=["1"], source="synthetic", out_dir="analysis_out")

The pipeline is :mod:`analysis.pipeline`; everything is read from the MLflow tracking store, and the
analyze run is logged there, through :mod:`analysis.queries` alone.
"""

from __future__ import annotations

from .pipeline import format_headline, no_runs_message, run_analysis
from .queries import SETTINGS_COLUMNS, comparison_runs, comparison_table, latest_dataset_stats, latest_per_setting, log_results
from .summary import headline, hypothesis2_summary, hypothesis2_table

__all__ = ["run_analysis", "log_results", "comparison_table", "comparison_runs", "latest_dataset_stats",
           "headline", "hypothesis2_table", "hypothesis2_summary", "SETTINGS_COLUMNS", "no_runs_message",
           "format_headline", "latest_per_setting"]
