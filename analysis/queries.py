"""The analysis's one door to MLflow: read comparison, probe, A/A and preprocess runs back from the
tracking store (no local files), and log the analyze run's results.

A comparison run (``cxrstudy.runs.study.run_compare``) carries the setting in its tags (``base``,
``added``, ``label``, ``balance``, ``source``) and the result in ``compare/*`` metrics. A
setting may have been compared several times (re-runs): the newest FINISHED run wins.

Speed: one ``mlflow.search_runs`` call filtered on the ``cxrstudy.entry`` tag and the
FINISHED status (the store does the filtering), returned as ``Run`` objects from which only
the needed tags and metrics are read; building the full wide DataFrame of every tag, param
and per-seed metric is skipped, and the cyclic garbage collector is paused while the store
builds its ORM objects (that alone halves the time). 5,000 runs take about 2 s on a local
SQLite store.
"""

from __future__ import annotations

import gc
import re
import tempfile
from contextlib import contextmanager

import mlflow
import numpy as np
import pandas as pd

from cxrstudy.hospitals import HOSPITALS
from cxrstudy.labels import LABELS
from cxrstudy.tracking import keys
from cxrstudy.train.balancing import BALANCE_MODES, BALANCE_NONE
from cxrstudy.train.methods import method_names

#: What ``settings.csv`` holds, in this order.
SETTINGS_COLUMNS = ["base", "added", "label", "balance", "method", "shortcut_strength", "n_seeds", "wga_single", "wga_pair",
                    "delta_mean", "delta_ci_low", "delta_ci_high", "hurt", "worst_group_n_single",
                    "worst_group_n_pair", "n_constant_models", "n_unconverged_models", "attributable_delta", "attributable_ci_low",
                    "attributable_ci_high", *keys.PER_HOSPITAL_WGA, "delta_patient_ci_low", "delta_patient_ci_high",
                    "delta_seed_sd", "seeds_same_sign", "per_seed_delta", "balanced_minus_pair",
                    "balanced_minus_pair_ci_low", "balanced_minus_pair_ci_high"]
#: ``comparison_table`` adds these (provenance) after the settings columns.
EXTRA_COLUMNS = ["run_id", "source", "synthetic", "fake", "seeds", "start_time", "experiment_id"]
#: One setting = one row: the newest FINISHED run per key.
SETTING_KEY = ["base", "added", "label", "balance", "method", "shortcut_strength", "source"]

COMPARE_FILTER = f"tags.`{keys.ENTRY_TAG}` = '{keys.ENTRY_COMPARE}' and attributes.status = 'FINISHED'"
PREPROCESS_FILTER = f"tags.`{keys.ENTRY_TAG}` = '{keys.ENTRY_PREPROCESS}' and attributes.status = 'FINISHED'"

_METRICS = {  # column -> metric key
    "n_seeds": keys.compare_metric("n_seeds"),
    "wga_single": keys.compare_metric("wga_single"),
    "wga_pair": keys.compare_metric("wga_pair"),
    "delta_mean": keys.compare_metric("delta_wga"),
    "delta_ci_low": keys.compare_metric("delta_ci_low"),
    "delta_ci_high": keys.compare_metric("delta_ci_high"),
    "hurt_logged": keys.compare_metric("hurt"),
    "worst_group_n_single": keys.compare_metric("worst_group_n_single"),
    "worst_group_n_pair": keys.compare_metric("worst_group_n_pair"),
    "n_constant_models": keys.compare_metric("n_constant_models"),
    "n_unconverged_models": keys.compare_metric("n_unconverged_models"),
    **{k: keys.compare_metric(k) for k in keys.ATTRIBUTABLE_METRICS + keys.PER_HOSPITAL_WGA},
    **{k: keys.compare_metric(k) for k in ("delta_patient_ci_low", "delta_patient_ci_high", "delta_seed_sd",
                                           "seeds_same_sign", "balanced_minus_pair", "balanced_minus_pair_ci_low",
                                           "balanced_minus_pair_ci_high")},
}


_SEED_DELTA = re.compile(re.escape(keys.COMPARE_PREFIX) + r"seed(\d+)/delta_wga")


@contextmanager
def gc_paused():
    """Pause the cyclic garbage collector: ``search_runs`` builds ~30 SQLAlchemy objects per run,
    and the collector's repeated passes over them roughly double the time of a 5,000-run query."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _quote(value: str) -> str:
    return str(value).replace("'", "\\'")


def resolve_experiment_ids(experiment_ids=None) -> list[str]:
    """``None`` -> the current experiment (``tracking.current_experiment_id``); a single id -> [id]."""
    if experiment_ids is None:
        from cxrstudy.tracking import runs as tracking

        return [tracking.current_experiment_id()]
    if isinstance(experiment_ids, (str, int)):
        return [str(experiment_ids)]
    return [str(e) for e in experiment_ids]


def known_order(values, known) -> list:
    rank = {v: i for i, v in enumerate(known)}
    return sorted(set(values), key=lambda v: (rank.get(v, len(rank)), str(v)))


def sort_settings(df: pd.DataFrame) -> pd.DataFrame:
    """Protocol order: label (LABELS), base and added (HOSPITALS), balance, source."""
    if df.empty:
        return df.reset_index(drop=True)
    ranks = {
        "label": {v: i for i, v in enumerate(known_order(df["label"], LABELS))},
        "base": {v: i for i, v in enumerate(known_order(df["base"], HOSPITALS))},
        "added": {v: i for i, v in enumerate(known_order(df["added"], HOSPITALS))},
        "balance": {v: i for i, v in enumerate(known_order(df["balance"], BALANCE_MODES))},
    }
    if "method" in df:
        ranks["method"] = {v: i for i, v in enumerate(known_order(df["method"], method_names()))}
    cols = (["label", "base", "added", "balance"] + [c for c in ("method", "shortcut_strength", "source") if c in df])
    ranked = df.assign(**{f"_r_{c}": df[c].map(m) for c, m in ranks.items()})
    by = [f"_r_{c}" if c in ranks else c for c in cols]
    return ranked.sort_values(by, kind="stable").drop(columns=[f"_r_{c}" for c in ranks]).reset_index(drop=True)


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in SETTINGS_COLUMNS + EXTRA_COLUMNS})


def comparison_runs(experiment_ids=None, source: str | None = None) -> pd.DataFrame:
    """Every FINISHED comparison run (re-runs included), one row each, newest first."""
    ids = resolve_experiment_ids(experiment_ids)
    flt = COMPARE_FILTER
    if source:
        flt += f" and tags.source = '{_quote(source)}'"
    with gc_paused():
        rows = _rows(mlflow.search_runs(experiment_ids=ids, filter_string=flt, output_format="list",
                                        order_by=["attributes.start_time DESC"]))
    if not rows:
        return _empty_table()
    df = pd.DataFrame(rows)
    return df.sort_values(["start_time", "end_time"], ascending=False, kind="stable").reset_index(drop=True)


def _rows(runs) -> list[dict]:
    rows = []
    for r in runs:
        tags, metrics = r.data.tags, r.data.metrics
        if not all(tags.get(k) for k in ("base", "added", "label")):
            continue  # not a well-formed comparison run (cannot say which setting it is)
        seeds = tags.get("seeds", "")
        row = {
            "base": tags["base"], "added": tags["added"], "label": tags["label"],
            "balance": tags.get("balance") or BALANCE_NONE,
            "method": tags.get(keys.METHOD_TAG) or keys.DEFAULT_METHOD,
            "shortcut_strength": float(tags[keys.SHORTCUT_STRENGTH_TAG]) if tags.get(keys.SHORTCUT_STRENGTH_TAG)
            else np.nan,
            "source": tags.get("source") or "unknown",
            "synthetic": (tags.get(keys.SYNTHETIC_TAG, "").lower() == "true"
                          or tags.get("source") == "synthetic"),
            "fake": tags.get(keys.FAKE_TAG, "").lower() == "true",
            "seeds": seeds,
            "run_id": r.info.run_id,
            "experiment_id": r.info.experiment_id,
            "start_time": r.info.start_time or 0,
            "end_time": r.info.end_time or 0,
        }
        for col, key in _METRICS.items():
            row[col] = metrics.get(key, np.nan)
        # each seed's delta, in seed order ("+0.012;-0.030;+0.005"), from compare/seed<k>/delta_wga
        per_seed = sorted((int(m[1]), v) for k, v in metrics.items() if (m := _SEED_DELTA.fullmatch(k)))
        row["per_seed_delta"] = ";".join(f"{v:+.3f}" for _, v in per_seed)
        if np.isnan(row["n_seeds"]) and seeds:
            row["n_seeds"] = len([s for s in seeds.split(",") if s.strip()])
        rows.append(row)
    return rows


def seed_set(seeds) -> frozenset:
    """The seeds of a comparison as a set: ``"0,1,2"``, ``[0, 1, 2]`` and ``"2,0,1"`` are one set."""
    parts = seeds.split(",") if isinstance(seeds, str) else seeds
    return frozenset(int(s) for s in parts if str(s).strip())


def comparison_table(experiment_ids=None, source: str | None = None) -> pd.DataFrame:
    """One row per setting (base, added, label, balance, source): the newest FINISHED comparison run.

    Columns: ``SETTINGS_COLUMNS`` (``base,added,label,balance,n_seeds,wga_single,wga_pair,
    delta_mean,delta_ci_low,delta_ci_high,hurt``) then ``run_id, source`` and provenance
    (``synthetic``, ``fake``, ``seeds``, ``start_time``, ``experiment_id``). ``hurt`` is 1 when
    the mean delta over seeds is below 0 (the protocol's definition). ``source`` filters on the
    run's ``source`` tag (``synthetic`` | ``real``); empty or None = all.
    """
    return latest_per_setting(comparison_runs(experiment_ids, source))


def latest_per_setting(runs: pd.DataFrame) -> pd.DataFrame:
    """Keep the newest run of each setting (``runs`` as from :func:`comparison_runs`)."""
    if runs.empty:
        return _empty_table()
    latest = runs.drop_duplicates(SETTING_KEY, keep="first")
    latest = latest.assign(hurt=(latest["delta_mean"] < 0).astype(int),
                           n_seeds=latest["n_seeds"].astype("Int64"))
    return sort_settings(latest[SETTINGS_COLUMNS + EXTRA_COLUMNS])


def latest_dataset_stats(experiment_ids=None, source: str | None = None) -> pd.DataFrame | None:
    """``dataset_stats.csv`` of the newest FINISHED preprocess run (optionally of one source), or None."""
    ids = resolve_experiment_ids(experiment_ids)
    flt = PREPROCESS_FILTER
    if source:
        flt += f" and params.`cfg.source` = '{_quote(source)}'"
    runs = mlflow.search_runs(experiment_ids=ids, filter_string=flt, output_format="list",
                              order_by=["attributes.start_time DESC"], max_results=20)
    for r in runs:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = mlflow.artifacts.download_artifacts(run_id=r.info.run_id, artifact_path="dataset_stats.csv",
                                                           dst_path=tmp)
            except Exception:  # this run has no stats (e.g. it was logged by an older version): try the next
                continue
            stats = pd.read_csv(path)
        stats.attrs["run_id"] = r.info.run_id
        return stats
    return None


# --- probes and the A/A noise floor -----------------------------------------------------------

PROBE_FILTER = f"tags.`{keys.ENTRY_TAG}` = '{keys.ENTRY_PROBE}' and attributes.status = 'FINISHED'"
NOISE_FLOOR_FILTER = f"tags.`{keys.ENTRY_TAG}` = '{keys.ENTRY_NOISE_FLOOR}' and attributes.status = 'FINISHED'"
NOISE_FLOOR_COLUMNS = ["hospitals", "eval_hospitals", "label", "arm", "shortcut_strength", "seeds", "seeds_b",
                       "delta_wga", "delta_ci_low", "delta_ci_high", "significant", "delta_seed_sd",
                       "n_constant_models", "n_unconverged_models", "run_id"]


def probe_runs(experiment_ids, source: str | None = None) -> pd.DataFrame:
    """The newest FINISHED probe run per (model, probe hospitals): one row each, tags and metrics."""
    flt = PROBE_FILTER + (f" and tags.source = '{source}'" if source else "")
    runs = mlflow.search_runs(experiment_ids=list(experiment_ids), filter_string=flt, output_format="list",
                              order_by=["attributes.start_time DESC"])
    rows, seen = [], set()
    for r in runs:
        t = r.data.tags
        key = (t.get("model_uri"), t.get("probe_envs"))
        if key in seen:
            continue
        seen.add(key)
        rows.append({"run_id": r.info.run_id, "model": t.get("model_uri", ""), "train_envs": t.get("train_envs", ""),
                     "label": t.get("label", ""), "balance": t.get("balance", ""), "seed": t.get("seed", ""),
                     "probe_envs": t.get("probe_envs", ""), "metrics": dict(r.data.metrics),
                     "shortcut_strength": float(t[keys.SHORTCUT_STRENGTH_TAG]) if t.get(keys.SHORTCUT_STRENGTH_TAG)
                     else np.nan})
    return pd.DataFrame(rows)


def noise_floor_runs(experiment_ids, source: str | None = None, *, seeds=None, shortcut_strengths=None
                     ) -> pd.DataFrame:
    """The newest FINISHED A/A comparison per (configuration, seed sets, strength), optionally only
    those over ``seeds`` (arm a) and at ``shortcut_strengths``."""
    flt = NOISE_FLOOR_FILTER + (f" and tags.source = '{source}'" if source else "")
    with gc_paused():
        runs = mlflow.search_runs(experiment_ids=list(experiment_ids), filter_string=flt, output_format="list",
                                  order_by=["attributes.start_time DESC"])
    rows, seen = [], set()
    for r in runs:
        t, m = r.data.tags, r.data.metrics
        strength = float(t[keys.SHORTCUT_STRENGTH_TAG]) if t.get(keys.SHORTCUT_STRENGTH_TAG) else np.nan
        row = {"hospitals": t.get("hospitals", ""), "eval_hospitals": t.get("eval_hospitals", ""),
               "label": t.get("label", ""), "arm": t.get("arm", ""), "shortcut_strength": strength,
               "seeds": t.get(keys.SEEDS_TAG, ""), "seeds_b": t.get(keys.AA_SEEDS_TAG, ""), "run_id": r.info.run_id,
               **{k: m.get(keys.NOISE_FLOOR_PREFIX + k, np.nan) for k in keys.NOISE_FLOOR_METRICS}}
        key = (row["hospitals"], row["label"], row["seeds"], row["seeds_b"], row["eval_hospitals"], strength)
        if key in seen:
            continue
        seen.add(key)
        rows.append(row)
    df = pd.DataFrame(rows, columns=NOISE_FLOOR_COLUMNS)
    if seeds:
        df = df[df["seeds"].map(seed_set) == seed_set(seeds)]
    if shortcut_strengths:
        df = df[df["shortcut_strength"].isna() | df["shortcut_strength"].isin([float(v) for v in shortcut_strengths])]
    return df.reset_index(drop=True)


# --- the analyze run -------------------------------------------------------------------------

def experiment_names(experiment_ids) -> str:
    import mlflow

    out = []
    for eid in experiment_ids:
        try:
            out.append(f"{mlflow.get_experiment(str(eid)).name!r} (id {eid})")
        except Exception:
            out.append(f"id {eid}")
    return ", ".join(out)


def active_run_id() -> str | None:
    """The id of the active MLflow run (the analyze run), or None."""
    run = mlflow.active_run()
    return run.info.run_id if run is not None else None


def log_results(result: dict) -> None:
    """Log the analysis metrics, files and a few provenance params to the active MLflow run."""
    import mlflow

    from cxrstudy.tracking import runs as tracking

    tracking.log_params({"experiment_ids": ",".join(result["experiment_ids"]), "source": result["source"] or "all",
                         "n_runs": result["n_runs"], "n_settings_total": len(result["settings"])},
                        prefix="cfg.analysis.")
    log_outputs(result["metrics"], result["files"])


def log_outputs(metrics: dict, files: dict) -> None:
    """Log ``metrics`` and every file of ``files`` (name -> path) to the active MLflow run."""
    if metrics:
        mlflow.log_metrics(metrics)
    for path in files.values():
        mlflow.log_artifact(str(path))


def training_seconds(experiment_ids, seeds=None) -> float:
    """Wall seconds of every FINISHED training run in the experiments (only seeds ``seeds`` when
    given): what the studied grid cost to train, for ``advise``'s cost ratio."""
    ids = resolve_experiment_ids(experiment_ids)
    flt = f"tags.`{keys.ENTRY_TAG}` = '{keys.ENTRY_TRAIN}' and attributes.status = 'FINISHED'"
    with gc_paused():
        runs = mlflow.search_runs(experiment_ids=ids, filter_string=flt, output_format="list")
    wanted = None if seeds is None else {str(s) for s in seeds}
    return float(sum(((r.info.end_time or 0) - (r.info.start_time or 0)) / 1000 for r in runs
                     if wanted is None or r.data.tags.get("seed") in wanted))
