"""Study orchestration: tracked comparisons and the training grid behind them."""

from __future__ import annotations

import dataclasses
import itertools
import sys

import mlflow
from tqdm.auto import tqdm

from cxrstudy.data.dataspec import DataSpec
from cxrstudy.data.split import missing_label_values
from cxrstudy.data.synthetic.config import headline_strength
from cxrstudy.evaluate.compare import Setting, pair_config, single_config
from cxrstudy.evaluate.noise_floor import aa_comparisons, aa_training_cells
from cxrstudy.errors import DataError, UsageError
from cxrstudy.runs.compare import log_shortcut_attribution, run_compare
from cxrstudy.runs.noise_floor import run_noise_floor
from cxrstudy.tracking import keys
from cxrstudy.tracking import runs as tracking
from cxrstudy.train.config import TrainConfig, with_method


def grid_settings(envs: list[str], labels: list[str], balances: list[str],
                  methods: list[str] = (keys.DEFAULT_METHOD,)) -> list[Setting]:
    """Every ordered (base, added) pair of distinct hospitals x label x balance x method."""
    return [Setting(a, b, lab, bal, m) for m in methods for lab in labels for bal in balances
            for a, b in itertools.permutations(envs, 2)]


def method_templates(template: TrainConfig, methods: list[str], raw: dict | None = None) -> dict[str, TrainConfig]:
    """One template per method: ``template`` trained with that method, its hyperparameters from
    ``raw`` (entry-point parameters) or the method's defaults."""
    return {m: with_method(template, m, raw) for m in methods}


def template_for(templates, setting: Setting) -> TrainConfig:
    """The template of the setting's method (a single template stands for every method)."""
    if isinstance(templates, TrainConfig):
        return with_method(templates, setting.method)
    return templates[setting.method]


def grid_cells(templates, settings: list[Setting], seeds: list[int]) -> list[TrainConfig]:
    """The distinct training runs the settings need (a pair model serves both orders). ``templates``:
    one TrainConfig, or one per method (:func:`method_templates`)."""
    seen, cells = set(), []
    for st in settings:
        template = template_for(templates, st)
        for seed in seeds:
            for cfg in (single_config(template, st.base, st.label, seed), pair_config(template, st, seed)):
                h = cfg.content_hash()
                if h not in seen:
                    seen.add(h)
                    cells.append(cfg)
    return cells


def check_label_values(spec: DataSpec, envs: list[str], labels: list[str]) -> None:
    """Every hospital's splits hold the label values the study needs for every label (positives to
    train and validate, both values to score the test groups); else one :class:`DataError` line."""
    gaps = [f"{env} {gap} for {label}" for env in envs for label in labels
            for gap in missing_label_values(spec.table(env), label)]
    if gaps:
        raise DataError(f"the study cannot train and score every setting: {'; '.join(gaps)} (each hospital's "
                        "train and val splits need positives and its test split both label values: more "
                        "patients, or other labels)")


def run_main(template: TrainConfig, envs: list[str], labels: list[str], seeds: list[int], balances: list[str], *,
             workers: int = 1, n_bootstrap: int = 1000, device: str = "auto", progress: bool = True,
             probe: bool = False, launcher=None, analyze=None, methods: dict | None = None,
             strengths: list[float] | None = None, noise_floor: bool = True) -> dict:
    """The whole study as nested runs under one parent: preprocess, training grid, comparisons, analysis.
    ``launcher`` (:mod:`cxrstudy.runs.launchers`) decides where the grid trains; default: locally.
    ``analyze(experiment_ids=..., source=...)`` is the study-level analysis (the top-level ``analysis``
    package's ``run_analysis``, passed in by the entry point so that the library never imports it).
    ``methods`` maps each training method of the grid to its template (:func:`method_templates`);
    default: ``template``'s method alone. ``strengths`` (synthetic only) runs the grid at each shortcut
    strength on the same patients, labels and seeds -- the dose-response; with 0 among them, every
    comparison at s > 0 also gets its shortcut-attributable change delta(s) - delta(0). ``noise_floor``:
    also train the unbalanced models of the headline method (at the headline strength) with as many
    further seeds and compare each configuration with itself (:mod:`cxrstudy.evaluate.noise_floor`):
    how often the study's rule calls a change significant where nothing was added."""
    from cxrstudy.runs.launchers import Launcher
    from cxrstudy.runs.preprocess import run_preprocess

    launcher = launcher or Launcher("local")

    templates = methods or {template.method: template}
    doses = list(strengths) if strengths else [None]
    by_dose = {s: {m: at_strength(t, s) for m, t in templates.items()} for s in doses}
    settings = grid_settings(envs, labels, balances, list(templates))
    aa = []
    if noise_floor:
        at = by_dose[headline_strength(doses) if strengths else None]
        aa = aa_comparisons(at.get(keys.DEFAULT_METHOD, next(iter(at.values()))), envs, labels, seeds)
    cells, seen = [], set()
    for cfg in [c for s in doses for c in grid_cells(by_dose[s], settings, seeds)] + aa_training_cells(aa):
        if cfg.content_hash() not in seen:
            seen.add(cfg.content_hash())
            cells.append(cfg)
    check_label_values(template.data, envs, labels)  # before any run: one line, not a traceback after training
    with tracking.run(run_name="main", tags={keys.ENTRY_TAG: keys.ENTRY_MAIN, "source": template.data.source}) as parent:
        pid = parent.info.run_id
        tracking.mark_synthetic(template.data.is_synthetic)
        tracking.log_params({"envs": ",".join(envs), "labels": ",".join(labels), "seeds": ",".join(map(str, seeds)),
                             "balances": ",".join(balances), "methods": ",".join(templates), "workers": workers,
                             "launcher": launcher.name, "n_settings": len(settings) * len(doses),
                             "n_training_cells": len(cells), "noise_floor": noise_floor}, prefix="cfg.")
        if strengths:
            tracking.log_params({"shortcut_strengths": ",".join(f"{s:g}" for s in strengths)}, prefix="cfg.")
        dose = f", shortcut strengths {','.join(f'{s:g}' for s in strengths)}" if strengths else ""
        floor = f" and {len(aa)} A/A comparisons (seeds {','.join(map(str, aa[0].seeds_b))})" if aa else ""
        print(f"study: {len(envs)} hospitals, {len(labels)} labels, {len(seeds)} seed(s), balance {balances}, "
              f"method {list(templates)}{dose}: {len(settings) * len(doses)} settings{floor}, {len(cells)} models",
              file=sys.stderr)
        for s in doses:
            run_preprocess(at_strength(template, s).data, envs, nested=True, progress=progress)
        uri = mlflow.get_tracking_uri()
        exp_id = parent.info.experiment_id
        launcher.run(cells, workers=workers, parent_run_id=pid, experiment_id=exp_id, tracking_uri=uri,
                     device=device, progress=progress)
        results = []
        for s in doses:
            for st in tqdm(settings, desc="comparisons" + (f" (strength {s:g})" if s is not None else ""),
                           unit="setting", disable=not progress):
                res = run_compare(st, template_for(by_dose[s], st), seeds, n_bootstrap=n_bootstrap, device=device,
                                  parent_run_id=pid, progress=False)
                results.append({**res, "setting": st, "shortcut_strength": s})
        if strengths and 0.0 in strengths and len(strengths) > 1:
            for r in tqdm([r for r in results if r["shortcut_strength"] != 0.0], desc="shortcut attribution",
                          unit="setting", disable=not progress):
                if r.get("reused") and "attributable_delta" in r:
                    continue
                st = r["setting"]
                log_shortcut_attribution(st, template_for(by_dose[r["shortcut_strength"]], st),
                                         template_for(by_dose[0.0], st), seeds, r["run_id"],
                                         n_bootstrap=n_bootstrap, device=device)
        if aa:
            run_noise_floor(aa, n_bootstrap=n_bootstrap, device=device, parent_run_id=pid, progress=progress)
        if probe:
            run_probes_for(cells, envs, device=device, parent_run_id=pid, progress=progress)
        summary = None
        if analyze is not None:
            with tracking.run(run_name="analyze", nested=True, tags={keys.ENTRY_TAG: keys.ENTRY_ANALYZE}):
                # this study's strengths only: a null run next to a default one reads the null
                used = strengths or ([template.data.synthetic.shortcut_strength] if template.data.is_synthetic else None)
                # and this study's seeds: a one-seed study next to a three-seed one reads its own seed
                summary = analyze(experiment_ids=[exp_id], source=template.data.source, shortcut_strengths=used,
                                  seeds=seeds)
                tracking.mark_synthetic(summary["synthetic"])  # like every other run (and the analyze entry point)
            mlflow.log_metrics({k: v for k, v in _flat_headline(summary).items()})
    return {"run_id": pid, "settings": results, "analysis": summary}


def at_strength(cfg: TrainConfig, strength: float | None) -> TrainConfig:
    """``cfg`` on synthetic hospitals rendered at another shortcut strength: the same patients,
    labels and seeds, only the pixels differ (``None``: unchanged)."""
    if strength is None:
        return cfg
    if not cfg.data.is_synthetic:
        raise UsageError("shortcut_strengths needs source=synthetic: only synthetic hospitals have a shortcut knob")
    return dataclasses.replace(cfg, data=cfg.data.at_strength(strength))


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
                             roots=cfg.data.roots, cache_dir=cfg.data.cache_dir, parent_run_id=parent_run_id, progress=False))
    return out


def _flat_headline(summary: dict) -> dict:
    out = {}
    for k, v in (summary or {}).get("metrics", {}).items():
        if isinstance(v, (int, float)):
            out[k] = float(v)
    return out
