"""train: one binary model for one label on one set of hospitals (docs/PROTOCOL.md "Training").

    mlflow run . --env-manager local -e train -P envs=cxp,nih -P label=pneumonia
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.runs import cli  # noqa: E402
from cxrstudy.train.config import TRAIN_PARAMS as PARAMS  # noqa: E402


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="train", doc=__doc__)

    def body():
        from cxrstudy.tracking import runs as tracking
        from cxrstudy.train.config import config_from_params, force_from_params
        from cxrstudy.runs.train import preflight, run_training
        from cxrstudy.data.dataspec import check_cache_fits
        from cxrstudy.train.device import check_batch_fits, pick_device

        cfg = config_from_params(raw)
        force = force_from_params(raw)
        device = pick_device(raw["device"])  # a clear error before any work
        preflight(cfg)  # cache_dir writable, pretrained weights loadable
        check_cache_fits([cfg.data], cfg.envs)  # the image cache fits on the disk
        check_batch_fits(cfg.batch_size, cfg.image_size, device)  # one batch fits in memory
        tracking.setup()
        from cxrstudy.params import optional

        result = run_training(cfg, force=force, device=raw["device"], parent_run_id=optional(raw["parent_run_id"]))
        if result.get("reused"):  # a fresh model's line was printed by run_training
            from cxrstudy.tracking.registry import describe_version

            print(describe_version(result["registered_model"], result["registered_version"]))

    cli.run(body)


if __name__ == "__main__":
    main()
