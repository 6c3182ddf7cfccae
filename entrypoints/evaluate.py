"""evaluate: score a registered model on each named hospital's test split.

    mlflow run . --env-manager local -e evaluate -P model_uri=models:/<name>@latest -P envs=cxp,nih
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
    "device": "auto",
    "data_root": "",
    "cache_dir": "",
}


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="evaluate", doc=__doc__)

    def body():
        import tempfile

        import mlflow

        from cxrstudy import tracking
        from cxrstudy.errors import UsageError
        from cxrstudy.evaluation import evaluate, load_trained, numeric_metrics
        from cxrstudy.hospitals import parse_envs
        from cxrstudy.params import as_int, optional
        from cxrstudy.trainer import pick_device

        if not optional(raw["model_uri"]):
            raise UsageError("parameter model_uri is required, e.g. models:/<name>@latest or a training run id")
        envs = parse_envs(raw["envs"]) if optional(raw["envs"]) else None
        n_boot = as_int("n_bootstrap", raw["n_bootstrap"], lo=0, hi=100000)
        seed = as_int("seed", raw["seed"], lo=0)
        pick_device(raw["device"])
        tracking.setup()
        trained = load_trained(raw["model_uri"], data_root=optional(raw["data_root"]),
                               cache_dir=optional(raw["cache_dir"]))
        envs = envs or list(trained.envs)
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

    cli.run(body)


if __name__ == "__main__":
    main()
