"""compare: one setting (base hospital, added hospital, label): does adding the hospital lower WGA?

    mlflow run . --env-manager local -e compare -P base=cxp -P added=nih -P label=pneumonia -P seeds=0,1,2

Finds the FINISHED single- and two-hospital training runs for each seed (by configuration hash;
trains the missing ones), evaluates both on the base's and the added hospital's test splits, and
logs the mean WGA change with a paired patient-level bootstrap CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.runs import cli  # noqa: E402
from cxrstudy.train.balancing import BALANCE_NONE  # noqa: E402
from cxrstudy.train.config import TRAIN_PARAMS  # noqa: E402

PARAMS = {
    "base": "cxp",
    "added": "nih",
    "label": "Pneumonia",
    "balance": BALANCE_NONE,
    "seeds": "0",
    "n_bootstrap": "1000",
    **{k: v for k, v in TRAIN_PARAMS.items() if k not in ("envs", "label", "seed", "balance")},
}


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="compare", doc=__doc__)

    def body():
        from cxrstudy.tracking import runs as tracking
        from cxrstudy.train.balancing import parse_balance
        from cxrstudy.evaluate.compare import Setting
        from cxrstudy.train.config import config_from_params, force_from_params
        from cxrstudy.hospitals import canonical_hospital
        from cxrstudy.params import as_int, as_int_list
        from cxrstudy.runs.compare import run_compare
        from cxrstudy.runs.train import preflight
        from cxrstudy.train.device import pick_device

        base, added = canonical_hospital(raw["base"]), canonical_hospital(raw["added"])
        template = config_from_params({**raw, "envs": base, "seed": "0", "balance": BALANCE_NONE})
        setting = Setting(base, added, template.label, parse_balance(raw["balance"]))
        seeds = as_int_list("seeds", raw["seeds"], lo=0)
        n_boot = as_int("n_bootstrap", raw["n_bootstrap"], lo=10, hi=100000)
        pick_device(raw["device"])
        preflight(template)  # cache_dir writable, pretrained weights loadable: before any work
        tracking.setup()
        run_compare(setting, template, seeds, n_bootstrap=n_boot, device=raw["device"],
                    force=force_from_params(raw))

    cli.run(body)


if __name__ == "__main__":
    main()
