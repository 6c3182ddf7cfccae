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
        from cxrstudy.runs.train import train_from_params

        train_from_params(raw)

    cli.run(body)


if __name__ == "__main__":
    main()
