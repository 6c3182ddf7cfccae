"""The tracked body of `advise`: gather the signals of the settings to advise on and of the settings
an experiment has studied, run :func:`analysis.advise.run_advise`, print its report and log it as
one MLflow run (docs/PROTOCOL.md "Advise: predicting the harm before training")."""

from __future__ import annotations

import sys
import tempfile

import pandas as pd

from cxrstudy.evaluate.signals import setting_signals
from cxrstudy.tracking import keys
from cxrstudy.tracking import runs as tracking
from cxrstudy.train.balancing import BALANCE_HOSPITAL_LABEL, BALANCE_NONE

from .advise import SETTING, run_advise
from .queries import active_run_id, comparison_table, log_outputs, seed_set, training_seconds
from .summary import model_flag_counts

#: the balance modes advise predicts (size matching is not among a study's default modes)
ADVISED_BALANCES = (BALANCE_NONE, BALANCE_HOSPITAL_LABEL)


def sound(table: pd.DataFrame) -> pd.Series:
    """Which comparisons measure the shortcut: none of their models is constant (predicts one class on
    validation) or unconverged (the analysis flags both, docs/PROTOCOL.md "Training")."""
    constant, unconverged = model_flag_counts(table)
    return (constant == 0) & (unconverged == 0)


def studied(spec, experiment_id: str, source: str, *, images: bool, seed: int):
    """The experiment's FINISHED ERM comparisons of ``source`` whose models all learned and converged
    (:func:`sound`), with their signals (recomputed at each one's shortcut strength on synthetic data),
    the training seconds of its grid (the study's seeds only, not the A/A floor's), what those signals
    cost, and how many comparisons were left out as unsound. ``(None, nan, nan, 0)`` without studies."""
    table = comparison_table([experiment_id], source)
    table = table[(table["method"] == keys.DEFAULT_METHOD) & table["balance"].isin(ADVISED_BALANCES)
                  & table["delta_ci_low"].notna()]
    keep = sound(table)
    unsound = int((~keep).sum())
    table = table[keep]
    if table.empty:
        return None, float("nan"), float("nan"), unsound
    parts = []
    for strength, part in table.groupby(table["shortcut_strength"].fillna(-1.0), sort=True):
        s_spec = spec.at_strength(strength) if spec.is_synthetic and strength >= 0 else spec
        sig = setting_signals(s_spec, list(part[SETTING].itertuples(index=False, name=None)), images=images,
                              seed=seed)
        parts.append(sig.merge(part, on=SETTING))
    history = pd.concat(parts, ignore_index=True)
    seeds = sorted(set().union(*(seed_set(s) for s in table["seeds"])))
    cost = float(history["table_seconds"].sum() + history["image_seconds"].sum())
    return history, training_seconds([experiment_id], seeds or None), cost, unsound


def run_study_advice(spec, envs, labels, balances, experiment, *, images: bool, seed: int = 0) -> dict:
    """Advise on every (base, added, label, balance) of ``envs`` x ``labels`` x ``balances``, learning
    from (and scored against) the studies of ``experiment`` (an MLflow experiment); one tracked run."""
    settings = [(b, a, lab, bal) for lab in labels for b in envs for a in envs if a != b for bal in balances]
    signals = setting_signals(spec, settings, images=images, seed=seed)
    source = "real" if spec.source == "metadata" else spec.source  # label tables alone: learn from real studies
    history, grid_s, hist_cost, unsound = studied(spec, experiment.experiment_id, source, images=images, seed=seed)
    studies = f"experiment {experiment.name!r}"
    if unsound:
        studies += f" ({unsound} comparison(s) resting on a constant or unconverged model left out)"
    with tempfile.TemporaryDirectory(prefix="cxrstudy-advise-") as tmp:
        result = run_advise(signals, history, tmp, images=images, studies=studies,
                            grid_seconds=grid_s, history_signal_seconds=hist_cost)
        print("\n".join(result["report"]), flush=True)
        with tracking.run(run_name=f"advise-{'+'.join(envs)}",
                          tags={keys.ENTRY_TAG: keys.ENTRY_ADVISE, "source": spec.source}):
            tracking.mark_synthetic(spec.is_synthetic)
            tracking.log_params({"envs": ",".join(envs), "labels": ",".join(labels), "balances": ",".join(balances),
                                 "signals": "tables+images" if images else "tables",
                                 "fitted_on": result["fitted_on"][:250]}, prefix="cfg.")
            log_outputs(result["metrics"], result["files"])
            print(f"advice logged to run {active_run_id()}", file=sys.stderr)
    return result
