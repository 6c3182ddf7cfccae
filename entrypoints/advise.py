"""advise: predict, before training, which added hospital will hurt which label, and how sure we are
(docs/PROTOCOL.md "Advise: predicting the harm before training").

    mlflow run . --env-manager local -e advise                                  # synthetic default grid
    mlflow run . --env-manager local -e advise -P against=cxrstudy              # learn from, and score against, a finished study
    mlflow run . --env-manager local -e advise -P source=metadata -P envs=cxp,nih,pad -P labels=Effusion

For every setting (base, added, label, balance) of the hospitals and labels: the probability that
adding the hospital lowers worst-group accuracy, a verdict (hurts / no clear effect / helps) and a
recommendation (pool, pool with hospital-label balancing, keep apart), from cheap signals: the label
tables (prevalences, sizes, how strongly hospital and label are associated once pooled) and, unless
``source=metadata`` (label tables only), a domain classifier on cheap features of the train images
(thumbnails, intensity, texture) and two proxies of the study, scored on the val splits: linear
models on those features, and short runs of the study's small network (two per training arm, every
label at once).
The predictor is a ridge regression fitted on the finished studies of the experiment (``against``,
default: the current experiment; a main run's id names its experiment), scored there by leave-one-hospital-pair-out cross-validation
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
        import mlflow

        from analysis.advise_study import ADVISED_BALANCES, run_study_advice
        from cxrstudy.data.dataspec import spec_from_params
        from cxrstudy.hospitals import parse_env_pairs
        from cxrstudy.labels import parse_labels
        from cxrstudy.params import as_int, optional
        from cxrstudy.tracking import runs as tracking
        from cxrstudy.train.balancing import parse_balance_list

        envs = parse_env_pairs(raw["envs"], "advise")
        labels = parse_labels(raw["labels"])
        balances = parse_balance_list(raw["balances"], allowed=ADVISED_BALANCES)
        seed = as_int("seed", raw["seed"], lo=0)
        spec = spec_from_params(raw, as_int("image_size", raw["image_size"], lo=8, hi=1024))
        tracking.check_tracking_server(tracking.tracking_uri())
        if optional(raw["against"]):
            experiment = tracking.resolve_experiment(raw["against"], runs_too=True)
            tracking.setup(experiment.name)
        else:
            tracking.setup()
            experiment = mlflow.get_experiment(tracking.current_experiment_id())
        run_study_advice(spec, envs, labels, balances, experiment, images=spec.source != "metadata", seed=seed)

    cli.run(body)


if __name__ == "__main__":
    main()
