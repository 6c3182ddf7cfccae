"""Study orchestration: tracked comparisons and the training grid behind them."""

from __future__ import annotations

import itertools
import sys

import mlflow
from tqdm.auto import tqdm

from cxrstudy.evaluate.compare import Setting, pair_config, single_config
from cxrstudy.runs.compare import run_compare
from cxrstudy.tracking import keys
from cxrstudy.tracking import runs as tracking
from cxrstudy.train.config import TrainConfig


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
             probe: bool = False, launcher=None, analyze=None) -> dict:
    """The whole study as nested runs under one parent: preprocess, training grid, comparisons, analysis.
    ``launcher`` (:mod:`cxrstudy.runs.launchers`) decides where the grid trains; default: locally.
    ``analyze(experiment_ids=..., source=...)`` is the study-level analysis (the top-level ``analysis``
    package's ``run_analysis``, passed in by the entry point so that the library never imports it)."""
    from cxrstudy.runs.launchers import Launcher
    from cxrstudy.runs.preprocess import run_preprocess

    launcher = launcher or Launcher("local")

    settings = grid_settings(envs, labels, balances)
    cells = grid_cells(template, settings, seeds)
    with tracking.run(run_name="main", tags={keys.ENTRY_TAG: keys.ENTRY_MAIN, "source": template.data.source}) as parent:
        pid = parent.info.run_id
        tracking.mark_synthetic(template.data.is_synthetic)
        tracking.log_params({"envs": ",".join(envs), "labels": ",".join(labels), "seeds": ",".join(map(str, seeds)),
                             "balances": ",".join(balances), "workers": workers, "launcher": launcher.name,
                             "n_settings": len(settings),
                             "n_training_cells": len(cells)}, prefix="cfg.")
        print(f"study: {len(envs)} hospitals, {len(labels)} labels, {len(seeds)} seed(s), balance {balances}: "
              f"{len(settings)} settings, {len(cells)} models", file=sys.stderr)
        run_preprocess(template.data, envs, nested=True, progress=progress)
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
        summary = None
        if analyze is not None:
            with tracking.run(run_name="analyze", nested=True, tags={keys.ENTRY_TAG: keys.ENTRY_ANALYZE}):
                summary = analyze(experiment_ids=[exp_id], source=template.data.source)
            mlflow.log_metrics({k: v for k, v in _flat_headline(summary).items()})
    return {"run_id": pid, "settings": results, "analysis": summary}


def run_probes_for(cells: list[TrainConfig], envs: list[str], *, device: str = "auto",
                   parent_run_id: str | None = None, progress: bool = True) -> list[dict]:
    """A hospital-identifiability probe run (on ``envs``' test images) for each trained cell's model."""
    from cxrstudy.runs.probe import run_probe
    from cxrstudy.runs.train import find_trained

    out = []
    for cfg in tqdm(cells, desc="probes", unit="model", disable=not progress):
        run = find_trained(cfg)
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
