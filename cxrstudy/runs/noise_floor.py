"""The tracked A/A comparisons of a study (its noise floor): one MLflow run per comparison, reused
when an identical one has FINISHED. What an A/A comparison is: :mod:`cxrstudy.evaluate.noise_floor`."""

from __future__ import annotations

import mlflow
from tqdm.auto import tqdm

from cxrstudy.evaluate.bootstrap import mean_delta_bootstrap
from cxrstudy.evaluate.noise_floor import AAComparison
from cxrstudy.runs.predictions import cached_predictions
from cxrstudy.runs.train import run_training
from cxrstudy.tracking import keys
from cxrstudy.tracking import runs as tracking


def aa_result(aa: AAComparison, *, n_bootstrap: int = 1000, device: str = "auto") -> dict:
    """The A/A delta mean_k [WGA(b_k) - WGA(a_k)] with the study's seed-aware CI, and its verdict
    under the study's rule (``significant``: -1, 0 or +1)."""
    envs = list(aa.eval_envs)
    pairs, flags = [], {"n_constant_models": 0, "n_unconverged_models": 0}
    for cfg_a, cfg_b in zip(aa.configs(aa.seeds_a), aa.configs(aa.seeds_b)):
        frames = []
        for cfg in (cfg_a, cfg_b):
            res = run_training(cfg, device=device, progress=False)  # reused: the grid trained it
            flags["n_constant_models"] += int(bool(res.get("constant", False)))
            flags["n_unconverged_models"] += int(not res.get("converged", True))
            frames.append(cached_predictions(res["model_uri"], res["run_id"], envs, cfg.data, device))
        pairs.append(tuple(frames))
    boot = mean_delta_bootstrap(pairs, n_resamples=n_bootstrap, seed=0, expected_envs=envs)
    return {"delta_wga": boot["estimate"], "delta_ci_low": boot["low"], "delta_ci_high": boot["high"],
            "significant": keys.significance(boot["low"], boot["high"]), "n_seeds": boot["n_seeds"],
            "delta_seed_sd": boot["seed_sd"], **flags, "per_seed": [float(v) for v in boot["per_seed"]]}


def run_noise_floor(comparisons: list[AAComparison], *, n_bootstrap: int = 1000, device: str = "auto",
                    parent_run_id: str | None = None, progress: bool = True) -> list[dict]:
    """Each A/A comparison as a nested run tagged ``cxrstudy.entry=noise_floor`` (metrics
    ``noise_floor/*``); the models must have been trained (the study's grid trains them)."""
    out = []
    for aa in tqdm(comparisons, desc="noise floor (A/A)", unit="comparison", disable=not progress):
        key = aa.key()
        done = tracking.find_finished(keys.NOISE_FLOOR_KEY_TAG, key)
        if done is not None:
            out.append({"run_id": done.info.run_id, "reused": True, "name": aa.name,
                        **{k.split("/", 1)[1]: v for k, v in done.data.metrics.items()
                           if k.startswith(keys.NOISE_FLOOR_PREFIX)}})
            continue
        cfg = aa.config
        tags = {keys.ENTRY_TAG: keys.ENTRY_NOISE_FLOOR, keys.NOISE_FLOOR_KEY_TAG: key, "label": cfg.label,
                "hospitals": ",".join(cfg.envs), "eval_hospitals": ",".join(aa.eval_envs), "arm": aa.arm,
                keys.METHOD_TAG: cfg.method, "source": cfg.data.source,
                keys.SEEDS_TAG: ",".join(map(str, aa.seeds_a)), keys.AA_SEEDS_TAG: ",".join(map(str, aa.seeds_b)),
                **({keys.SHORTCUT_STRENGTH_TAG: f"{cfg.data.synthetic.shortcut_strength:g}"}
                   if cfg.data.is_synthetic else {})}
        with tracking.run(run_name=f"aa-{'+'.join(cfg.envs)}-{cfg.label}", tags=tags, nested=True,
                          parent_run_id=parent_run_id) as active:
            tracking.mark_synthetic(cfg.data.is_synthetic)
            res = aa_result(aa, n_bootstrap=n_bootstrap, device=device)
            tracking.log_params({"n_bootstrap": n_bootstrap}, prefix="cfg.")
            mlflow.log_metrics({keys.NOISE_FLOOR_PREFIX + k: float(res[k]) for k in keys.NOISE_FLOOR_METRICS})
            tracking.log_json(res["per_seed"], "per_seed.json")
            out.append({"run_id": active.info.run_id, "reused": False, "name": aa.name,
                        **{k: v for k, v in res.items() if k != "per_seed"}})
    return out
