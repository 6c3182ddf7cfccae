"""evaluate: score a registered model on each named hospital's test split.

    mlflow run . --env-manager local -e evaluate -P model_uri=models:/<name>@latest -P envs=cxp,nih

For a model trained on two hospitals it also scores the correlation-strength test sets
(PROTOCOL.md): WGA and AUROC for hospital-label correlation r = 0.0, 0.1, ..., 1.0, logged as
``corr/<r>/wga`` and ``corr/<r>/auroc`` with the curve ``corr_sweep.png`` (``-P corr_sweep=false``
turns it off; ``true`` makes it an error when it cannot run).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy import cli  # noqa: E402

PARAMS = {
    "model_uri": "",
    "envs": "",
    "n_bootstrap": "1000",
    "seed": "0",
    "corr_sweep": "auto",
    "corr_draws": "5",
    "device": "auto",
    "data_root": "",
    "cache_dir": "",
}


def sweep_hospitals(train_envs, eval_envs, mode: str):
    """The two hospitals of the correlation sweep, or None when it is off (or, in auto, not possible)."""
    from cxrstudy.errors import UsageError

    if mode == "false":
        return None
    if len(train_envs) == 2 and set(train_envs) <= set(eval_envs):
        return tuple(train_envs)
    if mode == "true":
        raise UsageError(f"corr_sweep=true needs a model trained on two hospitals and both of them in envs; this "
                         f"model was trained on {','.join(train_envs)} and envs={','.join(eval_envs)}")
    return None


def log_sweep(predictions, envs, trained, *, draws: int, seed: int) -> None:
    import tempfile

    import mlflow

    from cxrstudy.correlation import correlation_sweep, plot_sweep, sweep_metrics
    from cxrstudy.errors import DataError

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


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="evaluate", doc=__doc__)

    def body():
        import tempfile

        import mlflow

        from cxrstudy import tracking
        from cxrstudy.errors import UsageError
        from cxrstudy.evaluation import evaluate, load_trained, numeric_metrics
        from cxrstudy.hospitals import parse_envs
        from cxrstudy.params import as_choice, as_int, optional
        from cxrstudy.trainer import pick_device

        if not optional(raw["model_uri"]):
            raise UsageError("parameter model_uri is required, e.g. models:/<name>@latest or a training run id")
        envs = parse_envs(raw["envs"]) if optional(raw["envs"]) else None
        n_boot = as_int("n_bootstrap", raw["n_bootstrap"], lo=0, hi=100000)
        seed = as_int("seed", raw["seed"], lo=0)
        sweep_mode = as_choice("corr_sweep", raw["corr_sweep"], ("auto", "true", "false"))
        draws = as_int("corr_draws", raw["corr_draws"], lo=1, hi=1000)
        pick_device(raw["device"])
        tracking.setup()
        trained = load_trained(raw["model_uri"], data_root=optional(raw["data_root"]),
                               cache_dir=optional(raw["cache_dir"]))
        envs = envs or list(trained.envs)
        sweep_envs = sweep_hospitals(trained.envs, envs, sweep_mode)
        with tracking.run(run_name=f"evaluate-{trained.uri.split('/', 1)[-1]}-on-{'+'.join(envs)}",
                          tags={"cxrstudy.entry": "evaluate", "model_uri": trained.uri,
                                "train_run_id": trained.run_id, "label": trained.label,
                                "eval_envs": ",".join(envs)}):
            tracking.mark_synthetic(trained.spec.is_synthetic)
            tracking.log_params({"model_uri": trained.uri, "envs": ",".join(envs), "label": trained.label,
                                 "threshold": trained.threshold, "n_bootstrap": n_boot}, prefix="cfg.")
            ev = evaluate(trained.model, trained.spec, envs, trained.label, trained.threshold,
                          n_bootstrap=n_boot, seed=seed, device=raw["device"])
            mlflow.log_metrics(numeric_metrics(ev.metrics, "test/"))
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

    cli.run(body)


if __name__ == "__main__":
    main()
