"""probe: can a model's embedding tell the hospitals apart? (docs/PROTOCOL.md "Hospital identifiability probe")

    mlflow run . --env-manager local -e probe -P model_uri=models:/<name>@latest
    mlflow run . --env-manager local -e probe -P model_uri=models:/<name>/3 -P envs=cxp,nih,pad

Embeds the test images of the named hospitals (default: all four) with the registered model
(the pooled features its head reads), then fits StandardScaler + LinearSVC probes at a fixed label
value: every pair of hospitals and all at once, classes undersampled to the smallest, 80/20 split;
plus two controls (random halves of one hospital; the label within each hospital). Logs
``probe/<a>_vs_<b>/label<0|1>/acc``, ``probe/all/label<v>/acc``, ``probe/control/<h>/acc``,
``probe/label/<h>/acc`` and ``probe_results.csv``. A model trained on real data needs
``-P data_root=`` (and ``-P roots=`` where its training had them): its run logs no paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.runs import cli  # noqa: E402

PARAMS = {
    "model_uri": "",
    "envs": "all",
    "seed": "0",
    "min_per_class": "20",
    "force": "false",
    "device": "auto",
    "data_root": "",
    "roots": "",
    "cache_dir": "",
}


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="probe", doc=__doc__)

    def body():
        from cxrstudy.tracking import runs as tracking
        from cxrstudy.errors import UsageError
        from cxrstudy.hospitals import parse_env_pairs
        from cxrstudy.params import as_bool, as_int, optional
        from cxrstudy.runs.probe import run_probe
        from cxrstudy.train.device import pick_device
        from cxrstudy.data.cache import check_cache_dir
        from cxrstudy.data.dataspec import parse_roots

        if not optional(raw["model_uri"]):
            raise UsageError("parameter model_uri is required, e.g. models:/<name>@latest or models:/<name>/<version>")
        envs = parse_env_pairs(raw["envs"], "the probe")
        seed = as_int("seed", raw["seed"], lo=0)
        min_per_class = as_int("min_per_class", raw["min_per_class"], lo=2, hi=1_000_000)
        force = as_bool("force", raw["force"])
        pick_device(raw["device"])
        if optional(raw["cache_dir"]):
            check_cache_dir(raw["cache_dir"])  # one line, before any work
        tracking.setup()
        run_probe(raw["model_uri"], envs, seed=seed, min_per_class=min_per_class, device=raw["device"],
                  data_root=optional(raw["data_root"]), cache_dir=optional(raw["cache_dir"]),
                  roots=parse_roots(raw["roots"]), force=force)

    cli.run(body)


if __name__ == "__main__":
    main()
