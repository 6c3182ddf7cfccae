"""main: the whole study in one command (what `make demo` runs).

    mlflow run . --env-manager local -e main                       # synthetic default, ~CPU minutes
    mlflow run . -e main -P source=real -P data_root=/data -P envs=all -P labels=all -P seeds=0,1,2 -P preset=paper

Preprocess, the training grid (single-hospital, two-hospital and balanced two-hospital models,
for each training method in ``-P methods=erm,groupdro,...``),
every comparison, the A/A noise floor (each unbalanced configuration compared with itself under a
second, disjoint seed set: seeds 3,4,5 against the study's 0,1,2; ``-P noise_floor=false`` skips it),
then the analysis, as nested MLflow runs under one parent. Seeds 0,1,2 by default (the paper's protocol). With ``-P probe=true``
every trained model also gets a hospital-identifiability probe run (on the study's hospitals),
and the analysis report gains a probe table and figure. On the synthetic hospitals,
``-P shortcut_strengths=0,0.5,1,2`` trains the same grid at each shortcut strength (the same
patients, labels and seeds; only the pixels differ) and the analysis adds the dose-response. Resumable: run it
again and only unfinished cells are redone.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.runs import cli  # noqa: E402
from cxrstudy.tracking import keys  # noqa: E402
from cxrstudy.train.balancing import BALANCE_HOSPITAL_LABEL, BALANCE_NONE  # noqa: E402
from cxrstudy.train.config import TRAIN_PARAMS  # noqa: E402
from cxrstudy.runs.launchers import LAUNCHER_PARAMS  # noqa: E402

PARAMS = {
    "envs": "mimic,cxp,nih",
    "labels": "Effusion,Any",
    "seeds": "0,1,2",
    "balances": f"{BALANCE_NONE},{BALANCE_HOSPITAL_LABEL}",
    "methods": keys.DEFAULT_METHOD,
    "shortcut_strengths": "",
    "workers": "auto",
    "n_bootstrap": "1000",
    "probe": "false",
    "noise_floor": "true",
    **{k: v for k, v in TRAIN_PARAMS.items() if k not in ("envs", "label", "seed", "balance", "method", "force",
                                                          "parent_run_id")},
    **LAUNCHER_PARAMS,
}


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="main", doc=__doc__)

    def body():
        from cxrstudy.tracking import runs as tracking
        from cxrstudy.train.balancing import parse_balance_list
        from cxrstudy.train.config import config_from_params, for_method
        from cxrstudy.errors import UsageError
        from cxrstudy.hospitals import parse_env_pairs
        from cxrstudy.labels import parse_labels
        from cxrstudy.runs.launchers import launcher_from_params
        from cxrstudy.runs.launchers.local import resolve_workers
        from cxrstudy.params import as_bool, as_float_list, as_int, as_int_list, optional
        from analysis import run_analysis
        from cxrstudy.runs.study import at_strength, method_templates, run_main
        from cxrstudy.data.dataspec import check_cache_fits
        from cxrstudy.runs.train import preflight
        from cxrstudy.train.methods import parse_method_list
        from cxrstudy.train.device import check_batch_fits, pick_device

        envs = parse_env_pairs(raw["envs"], "the study")
        labels = parse_labels(raw["labels"])
        seeds = as_int_list("seeds", raw["seeds"], lo=0)
        balances = parse_balance_list(raw["balances"])
        workers = resolve_workers(raw["workers"])  # auto: one per visible GPU, else one per core
        launcher = launcher_from_params(raw)
        n_boot = as_int("n_bootstrap", raw["n_bootstrap"], lo=10, hi=100000)
        probe = as_bool("probe", raw["probe"])
        noise_floor = as_bool("noise_floor", raw["noise_floor"])
        methods = parse_method_list(raw["methods"], given={k: v for k, v in raw.items() if optional(v)})
        template = config_from_params({**for_method(raw, methods[0]), "envs": envs[0], "label": labels[0], "seed": "0",
                                       "balance": BALANCE_NONE, "method": methods[0]})
        templates = method_templates(template, methods, raw)  # each method's hyperparameters, range-checked
        device = pick_device(raw["device"])
        strengths = None
        if optional(raw["shortcut_strengths"]):
            strengths = as_float_list("shortcut_strengths", raw["shortcut_strengths"], lo=0.0, hi=10.0)
            if template.data.source != "synthetic":
                raise UsageError("parameter shortcut_strengths needs source=synthetic (real hospitals have no knob)")
        preflight(template)  # cache_dir writable, pretrained weights loadable: before any work
        check_cache_fits([at_strength(template, s).data for s in strengths or [None]], envs)  # disk
        check_batch_fits(template.batch_size, template.image_size, device)  # one batch in memory
        launcher.check(tracking.setup())
        run_main(template, envs, labels, seeds, balances, workers=workers, n_bootstrap=n_boot, device=raw["device"],
                 probe=probe, launcher=launcher, analyze=run_analysis,
                 methods=templates, strengths=strengths,
                 noise_floor=noise_floor)

    cli.run(body)


if __name__ == "__main__":
    main()
