"""The tracked body of the ``compare`` entry point: one setting's comparison (single-hospital
vs two-hospital models, every seed) as an MLflow run, reused when an identical one has FINISHED."""

from __future__ import annotations

import dataclasses
import sys
from typing import Callable

import mlflow

from cxrstudy.evaluate.bootstrap import difference_in_delta_bootstrap
from cxrstudy.evaluate.compare import (Setting, compare_key, pair_config, seed_comparison, single_config,
                                       summarise)
from cxrstudy.labels import label_key
from cxrstudy.runs.predictions import cached_predictions
from cxrstudy.runs.train import find_trained, run_training
from cxrstudy.tracking import keys
from cxrstudy.tracking import runs as tracking
from cxrstudy.tracking.claims import ServerClaim, claim_key
from cxrstudy.train.balancing import BALANCE_NONE
from cxrstudy.train.registry import method_suffix
from cxrstudy.train.config import TrainConfig, with_method


def run_compare(setting: Setting, template: TrainConfig, seeds: list[int], *, n_bootstrap: int = 1000,
                device: str = "auto", force: bool = False, parent_run_id: str | None = None,
                progress: bool = True) -> dict:
    """The tracked comparison of one setting (reused when an identical one has FINISHED). Both arms
    are trained with the setting's method (``template``'s hyperparameters when it is that method's)."""
    template = with_method(template, setting.method)
    single_h = [single_config(template, setting.base, setting.label, s).content_hash() for s in seeds]
    pair_h = [pair_config(template, setting, s).content_hash() for s in seeds]
    key = compare_key(setting, seeds, single_h, pair_h, n_bootstrap)

    def finished():
        return None if force else tracking.find_finished(keys.COMPARE_KEY_TAG, key)

    def waiting(who: str) -> None:
        if progress:
            print(f"waiting: {who} is computing {setting.name}", file=sys.stderr, flush=True)

    if (done := finished()) is not None:
        return _reused(done)
    # claim the comparison on the tracking server (per experiment: that is where reuse looks), so
    # two studies started at once compute it once; the other waits and reuses it
    claim = ServerClaim(claim_key("compare", tracking.current_experiment_id(), key),
                        what=f"comparison {setting.name} ({key})")
    while not claim.acquire(stop=lambda: finished() is not None, on_wait=waiting):
        if (done := finished()) is not None:
            return _reused(done)
    with claim:
        if (done := finished()) is not None:  # finished while we took the claim
            return _reused(done)
        return _compute(setting, template, seeds, key, single_h, pair_h, n_bootstrap=n_bootstrap, device=device,
                        parent_run_id=parent_run_id, progress=progress)


def compare_setting(setting: Setting, template: TrainConfig, seeds: list[int], train: Callable[[TrainConfig], dict],
                    *, n_bootstrap: int = 1000, device: str = "auto",
                    trained: Callable[[TrainConfig], dict | None] | None = None) -> dict:
    """Train (or reuse) the models of a setting for every seed, predict on both hospitals' test
    splits, and summarise (:mod:`cxrstudy.evaluate.compare`).

    ``train(cfg)`` returns a dict with ``run_id`` and ``model_uri`` (e.g.
    :func:`cxrstudy.runs.train.run_training`). ``trained(cfg)``: the same for a model that was
    already trained, else None; with it, a balanced setting also gets ``balanced_minus_pair``
    (hypothesis 2) when the unbalanced two-hospital models exist for every seed.
    """
    envs = [setting.base, setting.added]
    pairs, per_seed, runs, constant, unconverged = [], [], {keys.ARM_SINGLE: [], keys.ARM_PAIR: []}, [], []
    for seed in seeds:
        s_res = train(single_config(template, setting.base, setting.label, seed))
        p_res = train(pair_config(template, setting, seed))
        runs[keys.ARM_SINGLE].append(s_res["run_id"])
        runs[keys.ARM_PAIR].append(p_res["run_id"])
        df_s = cached_predictions(s_res["model_uri"], s_res["run_id"], envs, template.data, device)
        df_p = cached_predictions(p_res["model_uri"], p_res["run_id"], envs, template.data, device)
        pairs.append((df_s, df_p))
        per_seed.append(seed_comparison(setting, seed, df_s, df_p))
        constant += [bool(r.get("constant", False)) for r in (s_res, p_res)]
        unconverged += [not r.get("converged", True) for r in (s_res, p_res)]
    unbalanced = None
    if trained is not None and setting.balance != BALANCE_NONE:
        plain = dataclasses.replace(setting, balance=BALANCE_NONE)
        found = [trained(pair_config(template, plain, seed)) for seed in seeds]
        if all(found):
            unbalanced = [cached_predictions(r["model_uri"], r["run_id"], envs, template.data, device) for r in found]
    res = summarise(setting, per_seed, pairs, n_bootstrap=n_bootstrap, unbalanced=unbalanced)
    return {**res,
            # models that predict one class on validation (train warns): such a comparison is flagged
            "n_constant_models": int(sum(constant)),
            # models cut off while still improving (train warns): such a comparison is flagged too
            "n_unconverged_models": int(sum(unconverged)),
            "runs": runs}


def _reused(done) -> dict:
    """What run_compare returns for a FINISHED comparison it reuses."""
    return {"run_id": done.info.run_id, "reused": True,
            **{k.split("/", 1)[1]: v for k, v in done.data.metrics.items() if k.startswith(keys.COMPARE_PREFIX)}}


def _compute(setting: Setting, template: TrainConfig, seeds: list[int], key: str, single_h: list[str],
             pair_h: list[str], *, n_bootstrap: int, device: str, parent_run_id: str | None, progress: bool) -> dict:
    """Compute and log the comparison (the caller holds its claim)."""
    tags = {keys.ENTRY_TAG: keys.ENTRY_COMPARE, keys.COMPARE_KEY_TAG: key, "base": setting.base, "added": setting.added,
            "label": setting.label, "balance": setting.balance, keys.METHOD_TAG: setting.method,
            "source": template.data.source,
            **({keys.SHORTCUT_STRENGTH_TAG: f"{template.data.synthetic.shortcut_strength:g}"}
               if template.data.is_synthetic else {}),
            "seeds": ",".join(map(str, seeds))}
    method = method_suffix(setting.method)
    name = f"compare-{setting.base}+{setting.added}-{label_key(setting.label)}-{setting.balance}{method}"
    with tracking.run(run_name=name, tags=tags, nested=parent_run_id is not None or mlflow.active_run() is not None,
                      parent_run_id=parent_run_id) as active:
        tracking.mark_synthetic(template.data.is_synthetic)
        me = active.info.run_id

        def train(cfg):
            return run_training(cfg, device=device, progress=progress, parent_run_id=me)

        def trained(cfg):
            return run_training(cfg, device=device, progress=False) if find_trained(cfg) is not None else None

        res = compare_setting(setting, template, seeds, train, n_bootstrap=n_bootstrap, device=device,
                              trained=trained)
        tracking.log_params({"seeds": ",".join(map(str, seeds)), "n_bootstrap": n_bootstrap,
                             "single_config_hashes": ",".join(single_h), "pair_config_hashes": ",".join(pair_h)},
                            prefix="cfg.")
        mlflow.log_metrics({keys.compare_metric(k): float(res[k]) for k in keys.COMPARE_METRICS + keys.PER_HOSPITAL_WGA
                            if k in res})
        for r in res["per_seed"]:
            mlflow.log_metrics({keys.COMPARE_PREFIX + f"seed{r['seed']}/delta_wga": r["delta"],
                                keys.COMPARE_PREFIX + f"seed{r['seed']}/wga_single": r["wga_single"],
                                keys.COMPARE_PREFIX + f"seed{r['seed']}/wga_pair": r["wga_pair"]})
        mlflow.set_tags({f"{keys.ARM_SINGLE}_runs": ",".join(res["runs"][keys.ARM_SINGLE]), f"{keys.ARM_PAIR}_runs": ",".join(res["runs"][keys.ARM_PAIR])})
        tracking.log_json(res["per_seed"], "per_seed.json")
        print(f"{setting.name}: WGA single {res['wga_single']:.3f} -> pair {res['wga_pair']:.3f}, "
              f"delta {res['delta_wga']:+.3f} [{res['delta_ci_low']:+.3f}, {res['delta_ci_high']:+.3f}]"
              f"{'  HURT' if res['hurt'] else ''}", file=sys.stderr)
        return {"run_id": me, "reused": False, **{k: v for k, v in res.items() if k not in ("per_seed", "runs")}}


def log_shortcut_attribution(setting: Setting, template: TrainConfig, reference: TrainConfig, seeds: list[int],
                             compare_run_id: str, *, n_bootstrap: int = 1000, device: str = "auto") -> dict:
    """The shortcut-attributable change of one setting: per seed, delta(s) - delta(0), where the two
    strengths' models saw the same patients, labels and seeds (only the pixels differ), with a paired
    patient-bootstrap CI; logged on the comparison run at strength s (``compare/attributable_*``)."""
    envs = [setting.base, setting.added]
    quads = []
    for seed in seeds:
        frames = []
        for t in (template, reference):
            for cfg in (single_config(t, setting.base, setting.label, seed), pair_config(t, setting, seed)):
                res = run_training(cfg, device=device, progress=False)  # reused: the grid trained it
                frames.append(cached_predictions(res["model_uri"], res["run_id"], envs, cfg.data, device))
        quads.append(tuple(frames))
    boot = difference_in_delta_bootstrap(quads, n_resamples=n_bootstrap, seed=0, expected_envs=envs)
    out = {"attributable_delta": boot["estimate"], "attributable_ci_low": boot["low"],
           "attributable_ci_high": boot["high"]}
    tracking.log_metrics_to(compare_run_id, {keys.compare_metric(k): v for k, v in out.items()})
    return out
