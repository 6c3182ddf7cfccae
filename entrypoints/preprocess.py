"""preprocess: harmonised tables, the subject-wise split, dataset statistics and the image cache.

    mlflow run . --env-manager local -e preprocess -P source=metadata -P envs=cxp,nih,pad
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.runs import cli  # noqa: E402
from cxrstudy.data.dataspec import DATA_PARAMS  # noqa: E402

PARAMS = {
    "envs": "all",
    "preset": "auto",
    "image_size": "",
    "workers": "0",
    **DATA_PARAMS,
}


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="preprocess", doc=__doc__)

    def body():
        from cxrstudy.tracking import runs as tracking
        from cxrstudy.data.cache import check_cache_dir
        from cxrstudy.data.dataspec import check_cache_fits, spec_from_params
        from cxrstudy.hospitals import parse_envs
        from cxrstudy.params import as_int, optional
        from cxrstudy.data.preprocess import check_sources
        from cxrstudy.runs.preprocess import run_preprocess
        from cxrstudy.train.presets import resolve_preset

        envs = parse_envs(raw["envs"])
        _, preset = resolve_preset(raw["preset"], verbose=False)
        size = as_int("image_size", optional(raw["image_size"]) or preset["image_size"], lo=8, hi=1024)
        workers = as_int("workers", raw["workers"], lo=0) or None
        spec = spec_from_params(raw, size)
        check_cache_dir(spec.cache_dir)  # a file or a read-only folder: one line, before any work
        check_sources(spec, envs)  # a missing dataset folder: one line, before the run is created
        check_cache_fits([spec], envs)  # the image cache fits on the disk
        tracking.setup()
        run_preprocess(spec, envs, workers=workers)

    cli.run(body)


if __name__ == "__main__":
    main()
