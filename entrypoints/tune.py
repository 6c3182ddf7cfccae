"""tune: search lr, weight decay, batch size and augmentation strength with Optuna; every trial is
an MLflow run nested under the study's parent run.

    mlflow run . --env-manager local -e tune -P envs=cxp,nih -P label=effusion -P n_trials=20

Start the same command on several machines (or several times on one) with a shared storage and
they split the study's trials; run it again to resume or, with a larger n_trials, to extend it.
The storage is -P storage=journal:<path> (a file on a shared disk) or a database URL without a
password, -P storage=postgresql://user@host/db, with the password in PGPASSWORD or ~/.pgpass;
or leave storage empty and put the whole URL in the environment variable CXRSTUDY_TUNE_STORAGE.
Never put a password in a -P value: MLflow logs and prints every parameter (tune refuses it).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.runs import cli  # noqa: E402
from cxrstudy.tune.settings import TUNE_PARAMS as PARAMS  # noqa: E402


def main(argv=None) -> None:
    raw = cli.parse(PARAMS, argv, prog="tune", doc=__doc__)

    def body():
        from cxrstudy.tracking import runs as tracking
        from cxrstudy.train.device import pick_device
        from cxrstudy.runs.tune import run_tune
        from cxrstudy.tune.settings import tune_from_params

        settings = tune_from_params(raw, tracking.tracking_uri())
        pick_device(settings.device)  # a clear error before any work
        run_tune(settings)

    cli.run(body)


if __name__ == "__main__":
    main()
