"""The analysis pipeline: query the comparison runs, summarise them (the headline, hypothesis 2), draw
the figures and write the report, whose further sections are the list :data:`SECTIONS`."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from cxrstudy.tracking import keys
from cxrstudy.train.balancing import BALANCE_NONE

from .dose import headline_strength
from .noise_floor import noise_floor_metrics, noise_floor_sentence, noise_floor_summary
from .noise_floor import report_section as noise_floor_report
from .queries import (SETTINGS_COLUMNS, active_run_id, comparison_runs, experiment_names, gc_paused,
                      latest_dataset_stats, latest_per_setting, log_results, noise_floor_runs, probe_runs,
                      resolve_experiment_ids, seed_set)
from .summary import (as_metrics, headline, headline_sentence, hypothesis2_summary, hypothesis2_table,
                      model_flag_counts)


def no_runs_message(experiment_ids, source=None) -> str:
    where = experiment_names(experiment_ids)
    src = f" with source={source}" if source else ""
    return (f"no FINISHED comparison runs{src} in experiment {where}; run `mlflow run . -e compare ...` "
            f"or `-e main` first")


def run_analysis(experiment_ids=None, source: str | None = None, out_dir=None, *, log: bool | None = None,
                 figures: bool = True, verbose: bool = True, shortcut_strengths=None, seeds=None) -> dict:
    """Query the comparison runs, summarise them, draw the figures and write the report.

    ``experiment_ids``: None = the current experiment; ``source``: ``synthetic`` | ``real`` | None (all);
    ``shortcut_strengths``: keep only the synthetic comparisons at these strengths (real ones stay);
    None = all (with several strengths the headline is at strength 1, and a dose-response is added);
    ``seeds``: keep only comparisons over exactly these seeds (then the newest of those per setting), so a
    one-seed study next to a three-seed one reads its own seed; None = the newest comparison of any seeds;
    ``out_dir``: where ``settings.csv``, ``hypothesis2.csv``, the PNGs and ``report.md`` go (None = a
    new temporary folder). ``log``: log metrics and those files to the active MLflow run (None = when
    a run is active). Raises :class:`cxrstudy.errors.DataError` when there is no comparison run.

    Returns ``{"settings", "headline", "hypothesis2", "hypothesis2_summary", "metrics", "files",
    "figures", "report", "out_dir", "experiment_ids", "source", "n_runs", "synthetic", "fake",
    "dataset_stats", "noise_floor", "seconds", "timings"}`` (``noise_floor``: the A/A summary, or None).
    """
    from cxrstudy.errors import DataError

    t0 = time.perf_counter()
    timings = {}
    ids = resolve_experiment_ids(experiment_ids)
    source = source or None
    runs = comparison_runs(ids, source)
    timings["query"] = time.perf_counter() - t0
    if runs.empty:
        raise DataError(no_runs_message(ids, source))
    if seeds:
        runs = runs[runs["seeds"].map(seed_set) == seed_set(seeds)]
        if runs.empty:
            raise DataError(no_runs_message(ids, source) + f" over seeds {','.join(map(str, seeds))}")
    all_settings = latest_per_setting(runs)
    if shortcut_strengths:
        keep = all_settings["shortcut_strength"].isna() | all_settings["shortcut_strength"].isin(
            [float(v) for v in shortcut_strengths])
        all_settings = all_settings[keep]
        if all_settings.empty:
            raise DataError(no_runs_message(ids, source) + f" at shortcut strength(s) {shortcut_strengths}")
    # the headline, hypothesis 2 and their figures are the paper's study: ERM (the other methods
    # get their own table, figure and section, see analysis.methods)
    erm = all_settings[all_settings["method"] == keys.DEFAULT_METHOD]
    settings = erm if len(erm) else all_settings
    dose_at = headline_strength(settings)  # a dose-response study: the headline is at the default strength
    if dose_at is not None:
        settings = settings[settings["shortcut_strength"] == dose_at]
    head = headline(settings)
    h2 = hypothesis2_table(settings)
    one_source = source or (settings["source"].iloc[0] if settings["source"].nunique() == 1 else None)
    stats = latest_dataset_stats(ids, one_source if one_source != "unknown" else None)
    timings["summary"] = time.perf_counter() - t0 - sum(timings.values())

    out = Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="cxrstudy-analysis-"))
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    files["settings.csv"] = out / "settings.csv"
    all_settings[SETTINGS_COLUMNS].to_csv(files["settings.csv"], index=False)
    files["hypothesis2.csv"] = out / "hypothesis2.csv"
    h2.to_csv(files["hypothesis2.csv"], index=False)
    files["settings_provenance.csv"] = out / "settings_provenance.csv"  # + run_id, source, seeds, ...
    all_settings.to_csv(files["settings_provenance.csv"], index=False)
    figs = {}
    if figures:
        from .figures import make_figures

        t = time.perf_counter()
        with gc_paused():  # matplotlib builds thousands of small objects; ~20% faster without GC passes
            figs = make_figures(settings, out)
        timings["figures"] = time.perf_counter() - t
    files.update({p.name: p for p in figs.values()})

    at_headline = all_settings if dose_at is None else all_settings[all_settings["shortcut_strength"] == dose_at]
    ctx = Context(ids, source, seeds, out, files, figures, all_settings, settings, at_headline)
    sections = [section(ctx) for section in SECTIONS]

    from .report import write_report

    meta = {"experiment_ids": ids, "source": source, "n_runs": len(runs)}
    files["report.md"] = write_report(settings, head, h2, stats, figs, out, meta=meta,
                                     extra_sections=[line for s in sections for line in s.lines],
                                     headline_notes=[note for s in sections for note in s.notes])
    metrics = as_metrics(head, h2)
    for s in sections:
        metrics.update(s.metrics)
    result = {
        **{k: v for s in sections for k, v in s.result.items()},
        "settings": settings, "headline": head, "hypothesis2": h2, "hypothesis2_summary": hypothesis2_summary(h2),
        "metrics": metrics, "files": files, "figures": figs, "report": files["report.md"],
        "out_dir": out, "experiment_ids": ids, "source": source, "n_runs": len(runs),
        "synthetic": bool(settings["synthetic"].any()), "fake": bool(settings["fake"].any()),
        "dataset_stats": stats,
    }
    logged = bool(log or (log is None and active_run_id() is not None))
    if logged:
        log_results(result)
    if verbose:
        print(format_headline(result, report_path=not logged), flush=True)
        if logged:
            print(f"report: report.md among the artifacts of MLflow run {active_run_id()} "
                  f"(`make ui`, then open that run)", flush=True)
    result["seconds"] = time.perf_counter() - t0
    result["timings"] = timings
    return result


def model_flags(settings) -> list[str]:
    """Report lines naming every comparison that rests on a constant model (one that predicts a single
    class on validation: its WGA is 0 or a group's TPR/TNR of 1 by construction, not by learning) or on
    an unconverged one (cut off while still improving: a two-hospital model may just be behind)."""
    constant, unconverged = model_flag_counts(settings)
    bad = settings[(constant > 0) | (unconverged > 0)]
    if bad.empty:
        return []
    lines = ["## Flagged: comparisons that use a constant or unconverged model", "",
             f"{len(bad)} of {len(settings)} settings compare at least one model that predicts a single class on "
             "validation, or that kept its best checkpoint past 75% of `max_steps` without stopping early "
             "(`train` warned about both). Their deltas are kept in the tables but do not measure the hospital "
             "shortcut:", ""]
    for i, r in bad.iterrows():
        what = [f"{int(n)} {name} model(s)" for n, name in ((constant[i], "constant"), (unconverged[i], "unconverged"))
                if n > 0]
        strength = f" / strength {r['shortcut_strength']:g}" if pd.notna(r.get("shortcut_strength")) else ""
        lines.append(f"- {r['base']}+{r['added']} / {r['label']} / {r['balance']} / {r['method']}{strength}: "
                     f"{', '.join(what)}, delta {r['delta_mean']:+.3f}")
    return lines + [""]


@dataclass
class Context:
    """What every section of the analysis may read (and ``files``, where it adds what it writes)."""

    ids: list
    source: str | None
    seeds: list | None
    out: Path
    files: dict
    figures: bool
    all_settings: pd.DataFrame  # every setting the study selected (all strengths and methods)
    settings: pd.DataFrame  # the headline's: ERM at the headline strength
    at_headline: pd.DataFrame  # every method at the headline strength


@dataclass
class Section:
    """A section's report lines and metrics; ``notes`` go under the headline, ``result`` into the
    analysis result (``{key: value}``)."""

    lines: list = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    result: dict = field(default_factory=dict)


def _write(ctx: Context, name: str, table: pd.DataFrame) -> None:
    ctx.files[name] = ctx.out / name
    table.to_csv(ctx.files[name], index=False)


def _figure(ctx: Context, draw, name: str):
    """``draw(path)`` when figures are asked for; its file joins ``ctx.files``."""
    fig = draw(ctx.out / name) if ctx.figures else None
    if fig is not None:
        ctx.files[fig.name] = fig
    return fig.name if fig is not None else None


def noise_floor_section(ctx: Context) -> Section:
    """The A/A table and report lines (at the strengths of the headline's settings, over the study's
    seeds); nothing when the experiments hold no A/A comparison."""
    settings = ctx.settings
    strengths = settings["shortcut_strength"].dropna().unique().tolist() if "shortcut_strength" in settings else []
    runs = noise_floor_runs(ctx.ids, ctx.source, seeds=ctx.seeds, shortcut_strengths=strengths or None)
    if runs.empty:
        return Section(result={"noise_floor": None})
    _write(ctx, "noise_floor.csv", runs)
    summary = noise_floor_summary(runs)
    return Section(noise_floor_report(runs, summary), noise_floor_metrics(summary),
                   [f"**{noise_floor_sentence(summary)}**"], {"noise_floor": summary})


def flags_section(ctx: Context) -> Section:
    return Section(model_flags(ctx.all_settings))


def dose_section(ctx: Context) -> Section:
    """The dose-response table, figure and report lines when the comparisons span several shortcut
    strengths (else nothing)."""
    from .dose import dose_figure, dose_metrics, dose_table, report_section, strengths_of
    from .probes import probe_accuracy_by_strength

    if len(strengths_of(ctx.all_settings)) < 2:
        return Section()
    table = dose_table(ctx.all_settings, probe_accuracy_by_strength(probe_runs(ctx.ids, ctx.source)))
    _write(ctx, "dose_response.csv", table)
    fig = _figure(ctx, lambda p: dose_figure(table, p), "dose_response.png")
    return Section(report_section(table, fig), dose_metrics(table))


def method_section(ctx: Context) -> Section:
    """The per-method table, head-to-head table, figure and report lines when the study has more than
    one training method (else nothing)."""
    from .methods import head_to_head, method_figure, method_metrics, method_table, methods_of, report_section

    settings = ctx.at_headline
    if len(methods_of(settings)) < 2:
        return Section()
    table, h2h = method_table(settings), head_to_head(settings)
    _write(ctx, "methods.csv", table)
    _write(ctx, "methods_head_to_head.csv", h2h)
    synthetic = bool(settings["synthetic"].any())
    fig = _figure(ctx, lambda p: method_figure(table, p, synthetic=synthetic), "methods.png")
    return Section(report_section(table, h2h, fig), method_metrics(table, h2h))


def probe_section(ctx: Context) -> Section:
    """The probe table, figure and report lines when the experiments hold probe runs (else nothing)."""
    from .probes import probe_figure, probe_metrics, probe_summary, report_section

    runs = probe_runs(ctx.ids, ctx.source)
    if runs.empty:
        return Section()
    summary = probe_summary(runs)
    _write(ctx, "probe_summary.csv", summary)
    synthetic = bool(ctx.settings["synthetic"].any())
    fig = _figure(ctx, lambda p: probe_figure(runs, p, synthetic=synthetic), "probe_accuracy.png")
    return Section(report_section(summary, fig), probe_metrics(summary))


#: The report's sections after the headline and hypothesis 2, in report order. A new section is a
#: function ``(Context) -> Section`` added here.
SECTIONS = (noise_floor_section, flags_section, dose_section, method_section, probe_section)


def format_headline(result: dict, report_path: bool = True) -> str:
    """The console summary: one headline sentence per balance mode, hypothesis 2, the report's path."""
    lines = []
    if result.get("synthetic"):
        lines.append("*** SYNTHETIC DATA: results say nothing about real patients. ***")
    if result.get("fake"):
        lines.append("*** FAKE benchmark runs included: numbers are random. ***")
    for bal, h in result["headline"].items():
        lines.append(f"[balance={bal}] {headline_sentence(h, bal)}")
    if BALANCE_NONE in result["headline"]:
        unbalanced = result["headline"][BALANCE_NONE]
        lines.append(f"(paper: adding a hospital hurt WGA in 43% of 108 settings; here "
                     f"{unbalanced['hurt_fraction']:.0%} of {unbalanced['n_settings']})")
    if result.get("noise_floor"):
        lines.append(f"[noise floor] {noise_floor_sentence(result['noise_floor'])}")
    s = result["hypothesis2_summary"]
    if s["n_settings"]:
        lines.append(f"[hypothesis 2] balanced model beat both in {s['n_balanced_beats_both']} of {s['n_settings']} "
                     f"settings ({s['n_balanced_beats_both_significant']} with both CIs above 0); worse than both "
                     f"in {s['n_balanced_worse_than_both']} ({s['n_balanced_worse_than_both_significant']} with both "
                     f"CIs below 0)")
    if report_path:
        lines.append(f"report: {result['report']}")
    return "\n".join(lines)
