"""advise: predict, before training, which added hospital will hurt which label, and how sure we are
(docs/PROTOCOL.md "Advise: predicting the harm before training").

    mlflow run . --env-manager local -e advise                                  # synthetic default grid
    mlflow run . --env-manager local -e advise -P against=cxrstudy              # learn from, and score against, a finished study
    mlflow run . --env-manager local -e advise -P source=metadata -P envs=cxp,nih,pad -P labels=Effusion

For every setting (base, added, label, balance) of the hospitals and labels: the probability that
adding the hospital lowers worst-group accuracy, a verdict (hurts / no clear effect / helps) and a
recommendation (pool, pool with hospital-label balancing, keep apart), from cheap signals: the label
tables (prevalences, sizes, how strongly hospital and label are associated once pooled) and, unless
``source=metadata`` (label tables only), a domain classifier on small thumbnails of the train images.
The predictor is a ridge regression fitted on the finished studies of the experiment (``against``,
default: the current experiment), scored there by leave-one-hospital-pair-out cross-validation
against the studies' seed-aware verdicts, next to three baselines; with no study to learn from it
uses the shipped predictor (``analysis/advise_default.json``). Logs ``advise/...`` metrics and
advice.csv, advice_validation.csv, advice_confusion.csv, advice_coefficients.csv, predictor.json,
advice.png and advice.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.runs import cli  # noqa: E402
from cxrstudy.tracking import keys  # noqa: E402

PARAMS = {
    "envs": "mimic,cxp,nih",
    "labels": "Effusion,Any",
    "balances": "none,hospital_label",
    "against": "",
    "image_size": "32",
    "seed": "0",
    "source": "synthetic",
    "data_root": "",
    "roots": "",
    "cache_dir": "",
    "synthetic_patients": "5000",
    "shortcut_strength": "1.0",
    "synthetic_seed": "0",
}


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="advise", doc=__doc__)

    def body():
        import dataclasses
        import tempfile

        import mlflow
        import pandas as pd

        from analysis.advise import SETTING, run_advise
        from analysis.queries import comparison_table, training_seconds
        from cxrstudy.data.dataspec import spec_from_params
        from cxrstudy.data.sources import parse_source_kind
        from cxrstudy.data.synthetic.config import SyntheticConfig
        from cxrstudy.errors import UsageError
        from cxrstudy.evaluate.signals import setting_signals
        from cxrstudy.hospitals import parse_envs
        from cxrstudy.labels import parse_labels
        from cxrstudy.params import as_int, optional
        from cxrstudy.tracking import runs as tracking
        from cxrstudy.train.balancing import BALANCE_HOSPITAL_LABEL, BALANCE_NONE, parse_balance

        envs = parse_envs(raw["envs"])
        if len(envs) < 2:
            raise UsageError(f"parameter envs={raw['envs']!r} names one hospital; advise needs at least two")
        labels = parse_labels(raw["labels"])
        balances = []
        for b in [p for p in raw["balances"].split(",") if p.strip()]:
            b = parse_balance(b)
            if b not in (BALANCE_NONE, BALANCE_HOSPITAL_LABEL):
                raise UsageError(f"parameter balances: advise predicts balance none and hospital_label; got {b!r}")
            if b not in balances:
                balances.append(b)
        seed = as_int("seed", raw["seed"], lo=0)
        source = parse_source_kind(raw["source"])
        images = source != "metadata"
        spec = spec_from_params(raw, as_int("image_size", raw["image_size"], lo=8, hi=1024))
        tracking.check_tracking_server(tracking.tracking_uri())
        if optional(raw["against"]):
            exp = tracking.resolve_experiment(raw["against"])
            tracking.setup(exp.name)
        else:
            tracking.setup()
            exp = mlflow.get_experiment(tracking.current_experiment_id())
        settings = [(b, a, lab, bal) for lab in labels for b in envs for a in envs if a != b for bal in balances]
        signals = setting_signals(spec, settings, images=images, seed=seed)

        studied = "real" if source == "metadata" else source
        history = comparison_table([exp.experiment_id], studied)
        history = history[(history["method"] == keys.DEFAULT_METHOD)
                          & history["balance"].isin([BALANCE_NONE, BALANCE_HOSPITAL_LABEL])
                          & history["delta_ci_low"].notna()]
        hist_signals = []
        for strength, part in history.groupby(history["shortcut_strength"].fillna(-1.0), sort=True):
            s_spec = spec
            if spec.is_synthetic and strength >= 0:
                s_spec = dataclasses.replace(spec, synthetic=SyntheticConfig(
                    **{**spec.synthetic.to_dict(), "shortcut_strength": float(strength)}))
            sig = setting_signals(s_spec, list(part[SETTING].itertuples(index=False, name=None)),
                                  images=images, seed=seed)
            hist_signals.append(sig.merge(part, on=SETTING))
        hist = pd.concat(hist_signals, ignore_index=True) if hist_signals else None
        seeds = sorted({int(s) for ss in history["seeds"] for s in str(ss).split(",") if s.strip()})
        grid_s = training_seconds([exp.experiment_id], seeds or None) if len(history) else float("nan")
        hist_cost = (float(hist["table_seconds"].sum() + hist["image_seconds"].sum())
                     if hist is not None else float("nan"))
        with tempfile.TemporaryDirectory(prefix="cxrstudy-advise-") as tmp:
            result = run_advise(signals, hist, tmp, images=images, studies=f"experiment {exp.name!r}",
                                grid_seconds=grid_s, history_signal_seconds=hist_cost)
            print("\n".join(result["report"]), flush=True)
            with tracking.run(run_name=f"advise-{'+'.join(envs)}", tags={keys.ENTRY_TAG: keys.ENTRY_ADVISE,
                                                                           "source": source}):
                tracking.mark_synthetic(spec.is_synthetic)
                tracking.log_params({"envs": ",".join(envs), "labels": ",".join(labels),
                                     "balances": ",".join(balances), "signals": "tables+images" if images
                                     else "tables", "fitted_on": result["fitted_on"][:250]}, prefix="cfg.")
                mlflow.log_metrics(result["metrics"])
                for path in result["files"].values():
                    mlflow.log_artifact(str(path))
                print(f"advice logged to run {mlflow.active_run().info.run_id}", file=sys.stderr)

    cli.run(body)


if __name__ == "__main__":
    main()
