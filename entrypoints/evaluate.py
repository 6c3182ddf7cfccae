"""evaluate: score a registered model on each named hospital's test split.

    mlflow run . --env-manager local -e evaluate -P model_uri=models:/<name>@latest -P envs=cxp,nih

For a model trained on two hospitals it also scores the correlation-strength test sets
(docs/PROTOCOL.md): WGA and AUROC for hospital-label correlation r = 0.0, 0.1, ..., 1.0, logged as
``corr/<r>/wga`` and ``corr/<r>/auroc`` with the curve ``corr_sweep.png`` (``-P corr_sweep=false``
turns it off; ``true`` makes it an error when it cannot run).

A model trained on real data needs ``-P data_root=`` (and ``-P roots=`` where its training had them):
its run logs no paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.runs import cli  # noqa: E402

PARAMS = {
    "model_uri": "",
    "envs": "",
    "n_bootstrap": "1000",
    "seed": "0",
    "corr_sweep": "auto",
    "corr_draws": "5",
    "device": "auto",
    "data_root": "",
    "roots": "",
    "cache_dir": "",
}


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="evaluate", doc=__doc__)

    def body():
        from cxrstudy.errors import UsageError
        from cxrstudy.hospitals import parse_envs
        from cxrstudy.params import as_choice, as_int, optional
        from cxrstudy.runs.evaluate import run_evaluate
        from cxrstudy.tracking import runs as tracking
        from cxrstudy.train.device import pick_device
        from cxrstudy.data.cache import check_cache_dir
        from cxrstudy.data.dataspec import parse_roots

        if not optional(raw["model_uri"]):
            raise UsageError("parameter model_uri is required, e.g. models:/<name>@latest or a training run id")
        envs = parse_envs(raw["envs"]) if optional(raw["envs"]) else None
        n_boot = as_int("n_bootstrap", raw["n_bootstrap"], lo=0, hi=100000)
        seed = as_int("seed", raw["seed"], lo=0)
        sweep_mode = as_choice("corr_sweep", raw["corr_sweep"], ("auto", "true", "false"))
        draws = as_int("corr_draws", raw["corr_draws"], lo=1, hi=1000)
        pick_device(raw["device"])
        if optional(raw["cache_dir"]):
            check_cache_dir(raw["cache_dir"])  # one line, before any work
        tracking.setup()
        run_evaluate(raw["model_uri"], envs, n_boot=n_boot, seed=seed, sweep_mode=sweep_mode, draws=draws,
                     device=raw["device"], data_root=optional(raw["data_root"]), cache_dir=optional(raw["cache_dir"]),
                     roots=parse_roots(raw["roots"]))

    cli.run(body)


if __name__ == "__main__":
    main()
