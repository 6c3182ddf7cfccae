"""One setting of the study: does adding hospital B to hospital A's training data lower WGA?

A setting is (base A, added B, label, balance). For each seed the model trained on A alone and
the model trained on A+B (balanced as asked) are scored on A's and B's test splits; delta =
WGA(A+B) - WGA(A) over the four (hospital, label value) groups. The setting is *hurt* when the
mean delta over seeds is below 0; its 95% CI is seed-aware: a paired, patient-level bootstrap that
resamples the shared test subjects once for every seed's pair of models (test sampling), widened by
the spread of the per-seed deltas (training randomness; see
:func:`cxrstudy.evaluate.bootstrap.seed_aware_interval` and docs/PROTOCOL.md "Statistics").

This module is the statistics on the models' test predictions; training the arms and fetching
(and caching) their predictions is :func:`cxrstudy.runs.compare.compare_setting`'s job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrstudy.errors import DataError, UsageError
from cxrstudy.evaluate.bootstrap import mean_delta_bootstrap
from cxrstudy.evaluate.metrics import evaluate_predictions
from cxrstudy.labels import label_key
from cxrstudy.tracking import keys
from cxrstudy.train.balancing import BALANCE_NONE
from cxrstudy.train.groups import parse_group_name
from cxrstudy.train.registry import method_suffix
from cxrstudy.train.config import TrainConfig, normalise_envs


@dataclass(frozen=True)
class Setting:
    base: str
    added: str
    label: str
    balance: str = BALANCE_NONE
    #: the training method of both arms (cxrstudy.train.methods); erm = the paper
    method: str = keys.DEFAULT_METHOD

    def __post_init__(self):
        if self.base == self.added:
            raise UsageError(f"base and added must be different hospitals; both are {self.base!r}")

    @property
    def name(self) -> str:
        method = method_suffix(self.method, "/")
        return f"{self.base}+{self.added}/{label_key(self.label)}/{self.balance}{method}"


def single_config(template: TrainConfig, env: str, label: str, seed: int) -> TrainConfig:
    """The single-hospital arm (trained with ``template``'s method)."""
    return dataclasses.replace(template, envs=(env,), label=label, seed=seed, balance=BALANCE_NONE)


def pair_config(template: TrainConfig, setting: Setting, seed: int) -> TrainConfig:
    """The two-hospital arm (trained with ``template``'s method)."""
    envs = normalise_envs([setting.base, setting.added], setting.balance)
    return dataclasses.replace(template, envs=envs, label=setting.label, seed=seed, balance=setting.balance)


def compare_key(setting: Setting, seeds, single_hashes, pair_hashes, n_bootstrap: int) -> str:
    d = {"setting": dataclasses.asdict(setting), "seeds": list(seeds), "single": list(single_hashes),
         "pair": list(pair_hashes), "n_bootstrap": n_bootstrap, "version": 4}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def worst_group_size(metrics: dict) -> int:
    """How many test images the worst group of ``evaluate_predictions``' result holds."""
    env, value = parse_group_name(metrics["wga_group"])
    return int(metrics[f"{env}/n_pos"] if value == 1 else metrics[f"{env}/n_neg"])


def wga_at(metrics: dict, env: str) -> float:
    """The worst-group accuracy over one hospital's two groups, from ``evaluate_predictions``' result."""
    return float(min(metrics[f"{env}/tpr"], metrics[f"{env}/tnr"]))


def same_sign(values) -> bool:
    """Whether every value is on the same side of 0 (all < 0 or all > 0)."""
    v = np.asarray(values, dtype=float)
    return bool(len(v) and ((v < 0).all() or (v > 0).all()))


def seed_comparison(setting: Setting, seed: int, single: pd.DataFrame, pair: pd.DataFrame) -> dict:
    """One seed's WGA of each arm, over both hospitals and per hospital, from the two models' test
    predictions on both hospitals; ``delta`` = WGA(pair) - WGA(single)."""
    envs = [setting.base, setting.added]
    try:
        ms = evaluate_predictions(single, expected_envs=envs)
        mp = evaluate_predictions(pair, expected_envs=envs)
    except ValueError as e:  # a hospital without positives or negatives for this label
        raise DataError(f"test split, label {setting.label!r}: {e}") from None
    return {"seed": seed, "wga_single": ms["wga"], "wga_pair": mp["wga"],
            "group_single": ms["wga_group"], "group_pair": mp["wga_group"],
            "n_group_single": worst_group_size(ms), "n_group_pair": worst_group_size(mp),
            **{f"wga_{arm}_{role}": wga_at(m, env) for arm, m in (("single", ms), ("pair", mp))
               for role, env in (("base", setting.base), ("added", setting.added))},
            "delta": mp["wga"] - ms["wga"]}


def summarise(setting: Setting, per_seed: list[dict], pairs: list[tuple[pd.DataFrame, pd.DataFrame]], *,
              n_bootstrap: int = 1000, unbalanced: list[pd.DataFrame] | None = None) -> dict:
    """The comparison over seeds: mean WGAs and delta with the seed-aware CI, from each seed's
    :func:`seed_comparison` and its ``(single, pair)`` predictions.

    ``unbalanced``: for a balanced setting, the unbalanced two-hospital model's predictions per seed;
    with them the result also has ``balanced_minus_pair``, WGA(balanced pair) - WGA(unbalanced pair)
    with the same seed-aware CI (hypothesis 2).
    """
    envs = [setting.base, setting.added]
    boot = mean_delta_bootstrap(pairs, n_resamples=n_bootstrap, seed=0, expected_envs=envs)
    delta = float(np.mean([r["delta"] for r in per_seed]))
    h2 = {}
    if unbalanced is not None:
        b2 = mean_delta_bootstrap([(f, p) for f, (_, p) in zip(unbalanced, pairs)], n_resamples=n_bootstrap, seed=0,
                                  expected_envs=envs)
        h2 = {"balanced_minus_pair": float(b2["estimate"]), "balanced_minus_pair_ci_low": float(b2["low"]),
              "balanced_minus_pair_ci_high": float(b2["high"])}
    return {
        **h2,
        "wga_single": float(np.mean([r["wga_single"] for r in per_seed])),
        "wga_pair": float(np.mean([r["wga_pair"] for r in per_seed])),
        "delta_wga": delta,
        "delta_ci_low": float(boot["low"]),
        "delta_ci_high": float(boot["high"]),
        "delta_patient_ci_low": float(boot["patient_low"]),
        "delta_patient_ci_high": float(boot["patient_high"]),
        "delta_seed_sd": float(boot["seed_sd"]),
        # every seed's delta on the same side of 0 (one seed: trivially)
        "seeds_same_sign": int(same_sign([r["delta"] for r in per_seed])),
        "hurt": int(delta < 0),
        "n_seeds": len(per_seed),
        # the size of each arm's worst group (smallest over seeds): how many images one WGA rests on
        "worst_group_n_single": int(min(r["n_group_single"] for r in per_seed)),
        "worst_group_n_pair": int(min(r["n_group_pair"] for r in per_seed)),
        # each arm's WGA over one hospital's groups: the single model's "added" one is out of distribution
        **{k: float(np.mean([r[k] for r in per_seed])) for k in keys.PER_HOSPITAL_WGA},
        "per_seed": per_seed,
    }
