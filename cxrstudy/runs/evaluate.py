"""The tracked body of the ``evaluate`` entry point: score a registered model on each named
hospital's test split, log the group metrics, the patient-level bootstrap CI and the predictions
(no pixels, no paths), and, for a two-hospital model, the correlation-strength sweep
(docs/PROTOCOL.md "Evaluation", "Correlation sweep")."""

from __future__ import annotations

import tempfile
from pathlib import Path

import mlflow

from cxrstudy.errors import DataError, UsageError
from cxrstudy.evaluate.correlation import correlation_sweep, plot_sweep, sweep_metrics
from cxrstudy.evaluate.predict import evaluate, numeric_metrics
from cxrstudy.tracking import keys
from cxrstudy.tracking import runs as tracking
from cxrstudy.tracking.registry import load_trained


def sweep_hospitals(train_envs, eval_envs, mode: str):
    """The two hospitals of the correlation sweep, or None when it is off (or, in auto, not possible)."""
    if mode == "false":
        return None
    if len(train_envs) == 2 and set(train_envs) <= set(eval_envs):
        return tuple(train_envs)
    if mode == "true":
        raise UsageError(f"corr_sweep=true needs a model trained on two hospitals and both of them in envs; this "
                         f"model was trained on {','.join(train_envs)} and envs={','.join(eval_envs)}")
    return None


def log_sweep(predictions, envs, trained, *, draws: int, seed: int) -> None:
    try:
        sweep = correlation_sweep(predictions, envs, trained.threshold, draws=draws, seed=seed)
    except ValueError as e:
        raise DataError(f"correlation sweep on {'+'.join(envs)}, label {trained.label!r}: {e}") from None
    mlflow.log_metrics(sweep_metrics(sweep))
    with tempfile.TemporaryDirectory() as tmp:
        sweep.to_csv(Path(tmp) / "corr_sweep.csv", index=False)
        plot_sweep(sweep, Path(tmp) / "corr_sweep.png", synthetic=trained.spec.is_synthetic,
                   title=f"{trained.uri} ({trained.label}) on {'+'.join(envs)}")
        mlflow.log_artifact(str(Path(tmp) / "corr_sweep.csv"))
        mlflow.log_artifact(str(Path(tmp) / "corr_sweep.png"))
    print(f"correlation sweep ({int(sweep['n_per_cell'].iloc[0])} images per cell, positives at "
          f"{sweep['pos_env'].iloc[0]}, mean of {draws} draws):")
    print("  r     " + " ".join(f"{r:5.1f}" for r in sweep["r"]))
    print("  WGA   " + " ".join(f"{v:5.3f}" for v in sweep["wga"]))
    print("  AUROC " + " ".join(f"{v:5.3f}" for v in sweep["auroc"]))


def run_evaluate(model_uri: str, envs: list[str] | None, *, n_boot: int = 1000, seed: int = 0,
                 sweep_mode: str = "auto", draws: int = 5, device: str = "auto", data_root: str | None = None,
                 cache_dir: str | None = None, roots: tuple = ()) -> dict:
    """Evaluate ``model_uri`` (``envs``: default, the hospitals it was trained on); return the metrics."""
    trained = load_trained(model_uri, data_root=data_root, cache_dir=cache_dir, roots=roots)
    envs = envs or list(trained.envs)
    sweep_envs = sweep_hospitals(trained.envs, envs, sweep_mode)
    with tracking.run(run_name=f"evaluate-{trained.uri.split('/', 1)[-1]}-on-{'+'.join(envs)}",
                      tags={keys.ENTRY_TAG: keys.ENTRY_EVALUATE, "model_uri": trained.uri,
                            "train_run_id": trained.run_id, "label": trained.label,
                            "eval_envs": ",".join(envs)}):
        tracking.mark_synthetic(trained.spec.is_synthetic)
        tracking.log_params({"model_uri": trained.uri, "envs": ",".join(envs), "label": trained.label,
                             "threshold": trained.threshold, "n_bootstrap": n_boot}, prefix="cfg.")
        ev = evaluate(trained.model, trained.spec, envs, trained.label, trained.threshold,
                      n_bootstrap=n_boot, seed=seed, device=device)
        mlflow.log_metrics(numeric_metrics(ev.metrics, keys.TEST_PREFIX))
        mlflow.set_tag("test/wga_group", ev.metrics["wga_group"])
        with tempfile.TemporaryDirectory() as tmp:
            ev.predictions.to_csv(Path(tmp) / "predictions.csv", index=False)
            mlflow.log_artifact(str(Path(tmp) / "predictions.csv"))
        m = ev.metrics
        print(f"{trained.uri} ({trained.label}) on {', '.join(envs)}: WGA {m['wga']:.3f} "
              f"[{m.get('wga_ci_low', float('nan')):.3f}, {m.get('wga_ci_high', float('nan')):.3f}] "
              f"worst group {m['wga_group']}; AUROC {m['auroc']:.3f}, macro-F1 {m['macro_f1']:.3f}")
        for e in envs:
            print(f"  {e:6s} TPR {m[f'{e}/tpr']:.3f}  TNR {m[f'{e}/tnr']:.3f}  AUROC {m[f'{e}/auroc']:.3f}  "
                  f"n_pos {int(m[f'{e}/n_pos'])}  n_neg {int(m[f'{e}/n_neg'])}")
        if sweep_envs:
            log_sweep(ev.predictions, sweep_envs, trained, draws=draws, seed=seed)
    return ev.metrics
