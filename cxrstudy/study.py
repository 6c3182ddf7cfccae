"""Study orchestration: tracked comparisons and the training grid behind them."""

from __future__ import annotations

import itertools
import sys

import mlflow

from . import tracking
from .comparison import Setting, compare, compare_key, pair_config, single_config
from .config import TrainConfig
from .labels import label_key
from .train_run import run_training
from tqdm.auto import tqdm

COMPARE_TAG = "cxrstudy.compare_key"


def run_compare(setting: Setting, template: TrainConfig, seeds: list[int], *, n_bootstrap: int = 1000,
                device: str = "auto", force: bool = False, parent_run_id: str | None = None,
                progress: bool = True) -> dict:
    """The tracked comparison of one setting (reused when an identical one has FINISHED)."""
    single_h = [single_config(template, setting.base, setting.label, s).content_hash() for s in seeds]
    pair_h = [pair_config(template, setting, s).content_hash() for s in seeds]
    key = compare_key(setting, seeds, single_h, pair_h, n_bootstrap)
    if not force:
        done = tracking.find_finished(COMPARE_TAG, key)
        if done is not None:
            return {"run_id": done.info.run_id, "reused": True,
                    **{k.split("/", 1)[1]: v for k, v in done.data.metrics.items() if k.startswith("compare/")}}
    tags = {"cxrstudy.entry": "compare", COMPARE_TAG: key, "base": setting.base, "added": setting.added,
            "label": setting.label, "balance": setting.balance, "source": template.data.source,
            "seeds": ",".join(map(str, seeds))}
    name = f"compare-{setting.base}+{setting.added}-{label_key(setting.label)}-{setting.balance}"
    with tracking.run(run_name=name, tags=tags, nested=parent_run_id is not None or mlflow.active_run() is not None,
                      parent_run_id=parent_run_id) as active:
        tracking.mark_synthetic(template.data.is_synthetic)
        me = active.info.run_id

        def train(cfg):
            return run_training(cfg, device=device, progress=progress, parent_run_id=me)

        res = compare(setting, template, seeds, train, n_bootstrap=n_bootstrap, device=device)
        tracking.log_params({"seeds": ",".join(map(str, seeds)), "n_bootstrap": n_bootstrap,
                             "single_config_hashes": ",".join(single_h), "pair_config_hashes": ",".join(pair_h)},
                            prefix="cfg.")
        mlflow.log_metrics({f"compare/{k}": float(res[k]) for k in
                            ("wga_single", "wga_pair", "delta_wga", "delta_ci_low", "delta_ci_high", "hurt", "n_seeds")})
        for r in res["per_seed"]:
            mlflow.log_metrics({f"compare/seed{r['seed']}/delta_wga": r["delta"],
                                f"compare/seed{r['seed']}/wga_single": r["wga_single"],
                                f"compare/seed{r['seed']}/wga_pair": r["wga_pair"]})
        mlflow.set_tags({"single_runs": ",".join(res["runs"]["single"]), "pair_runs": ",".join(res["runs"]["pair"])})
        tracking.log_json(res["per_seed"], "per_seed.json")
        print(f"{setting.name}: WGA single {res['wga_single']:.3f} -> pair {res['wga_pair']:.3f}, "
              f"delta {res['delta_wga']:+.3f} [{res['delta_ci_low']:+.3f}, {res['delta_ci_high']:+.3f}]"
              f"{'  HURT' if res['hurt'] else ''}", file=sys.stderr)
        return {"run_id": me, "reused": False, **{k: v for k, v in res.items() if k not in ("per_seed", "runs")}}


def grid_settings(envs: list[str], labels: list[str], balances: list[str]) -> list[Setting]:
    """Every ordered (base, added) pair of distinct hospitals x label x balance."""
    return [Setting(a, b, lab, bal) for lab in labels for bal in balances
            for a, b in itertools.permutations(envs, 2)]


def grid_cells(template: TrainConfig, settings: list[Setting], seeds: list[int]) -> list[TrainConfig]:
    """The distinct training runs the settings need (a pair model serves both orders)."""
    seen, cells = set(), []
    for st in settings:
        for seed in seeds:
            for cfg in (single_config(template, st.base, st.label, seed), pair_config(template, st, seed)):
                h = cfg.content_hash()
                if h not in seen:
                    seen.add(h)
                    cells.append(cfg)
    return cells


def run_main(template: TrainConfig, envs: list[str], labels: list[str], seeds: list[int], balances: list[str], *,
             workers: int = 1, n_bootstrap: int = 1000, device: str = "auto", progress: bool = True,
             probe: bool = False, launcher=None) -> dict:
    """The whole study as nested runs under one parent: preprocess, training grid, comparisons, analysis.
    ``launcher`` (:mod:`cxrstudy.launchers`) decides where the grid trains; default: locally."""
    from .launchers import Launcher
    from .preprocess import tracked_preprocess

    launcher = launcher or Launcher("local")

    settings = grid_settings(envs, labels, balances)
    cells = grid_cells(template, settings, seeds)
    with tracking.run(run_name="main", tags={"cxrstudy.entry": "main", "source": template.data.source}) as parent:
        pid = parent.info.run_id
        tracking.mark_synthetic(template.data.is_synthetic)
        tracking.log_params({"envs": ",".join(envs), "labels": ",".join(labels), "seeds": ",".join(map(str, seeds)),
                             "balances": ",".join(balances), "workers": workers, "launcher": launcher.name,
                             "n_settings": len(settings),
                             "n_training_cells": len(cells)}, prefix="cfg.")
        print(f"study: {len(envs)} hospitals, {len(labels)} labels, {len(seeds)} seed(s), balance {balances}: "
              f"{len(settings)} settings, {len(cells)} models", file=sys.stderr)
        tracked_preprocess(template.data, envs, nested=True, progress=progress)
        uri = mlflow.get_tracking_uri()
        exp_id = parent.info.experiment_id
        launcher.run(cells, workers=workers, parent_run_id=pid, experiment_id=exp_id, tracking_uri=uri,
                     device=device, progress=progress)
        results = []
        for st in tqdm(settings, desc="comparisons", unit="setting", disable=not progress):
            results.append(run_compare(st, template, seeds, n_bootstrap=n_bootstrap, device=device,
                                       parent_run_id=pid, progress=False))
        if probe:
            run_probes_for(cells, envs, device=device, parent_run_id=pid, progress=progress)
        from analysis import run_analysis

        with tracking.run(run_name="analyze", nested=True, tags={"cxrstudy.entry": "analyze"}):
            summary = run_analysis(experiment_ids=[exp_id], source=template.data.source)
        mlflow.log_metrics({k: v for k, v in _flat_headline(summary).items()})
    return {"run_id": pid, "settings": results, "analysis": summary}


def run_probes_for(cells: list[TrainConfig], envs: list[str], *, device: str = "auto",
                   parent_run_id: str | None = None, progress: bool = True) -> list[dict]:
    """A hospital-identifiability probe run (on ``envs``' test images) for each trained cell's model."""
    from .probe_run import run_probe
    from .train_run import find_finished

    out = []
    for cfg in tqdm(cells, desc="probes", unit="model", disable=not progress):
        run = find_finished(cfg.content_hash())
        if run is None:  # cannot happen after a complete grid; say so rather than crash
            print(f"probe: no FINISHED training run for {cfg.model_name()} seed {cfg.seed}; skipped", file=sys.stderr)
            continue
        # a training run id resolves to the model version it registered (registry.resolve_model_uri)
        out.append(run_probe(run.info.run_id, envs, device=device, data_root=cfg.data.data_root,
                             cache_dir=cfg.data.cache_dir, parent_run_id=parent_run_id, progress=False))
    return out


def _flat_headline(summary: dict) -> dict:
    out = {}
    for k, v in (summary or {}).get("metrics", {}).items():
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out
