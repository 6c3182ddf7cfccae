"""Inside a Slurm task: create (or find again) the task's training run, print its id.

    python -m cxrstudy.runs.launchers.job --cell <config hash> --run-name NAME --parent-run-id ID --experiment-id ID

Prints ``finished`` when the cell already has a FINISHED run (the task then exits at once), else
the id of the run ``mlflow run --run-id`` continues. The run is identified by the task
(``cxrstudy.slurm_job`` = ``<array job id>_<task id>``) and the cell (``cxrstudy.cell_hash``):

- a requeued task (same job id after a node failure or ``scontrol requeue``) finds its own
  RUNNING run and continues it instead of creating a second one;
- a create request that the HTTP client retried after a lost response can leave two runs with
  the same task tag; every one but the returned one is deleted at once.

The run is nested under main's parent run. ``cxrstudy.config_hash`` is set only when training
actually starts (:func:`cxrstudy.runs.train.run_training`), so a task that finds the cell already
trained never adds a second FINISHED run for it.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys

from cxrstudy.runs.launchers.common import ROOT
from cxrstudy.tracking import keys


def task_key(environ=None) -> str:
    """``<array job id>_<task id>`` (or the plain job id) of the Slurm task this process runs in."""
    environ = os.environ if environ is None else environ
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    if environ.get("SLURM_JOB_ID"):
        return environ["SLURM_JOB_ID"]
    raise SystemExit("cxrstudy.runs.launchers.job runs inside a Slurm job (SLURM_JOB_ID is not set)")


def run_for_task(cell: str, key: str, *, run_name: str, parent_run_id: str, experiment_id: str) -> str:
    """The run id this task logs to ("finished" when the cell needs no training)."""
    from mlflow.entities import RunStatus
    from mlflow.tracking import MlflowClient
    from mlflow.utils.mlflow_tags import (MLFLOW_PARENT_RUN_ID, MLFLOW_PROJECT_ENTRY_POINT, MLFLOW_RUN_NAME,
                                          MLFLOW_SOURCE_NAME, MLFLOW_SOURCE_TYPE, MLFLOW_USER)

    from cxrstudy.runs.train import find_by_hash

    if find_by_hash(cell) is not None:
        return "finished"
    client = MlflowClient()

    def mine():
        return client.search_runs([experiment_id], f"tags.`{keys.SLURM_JOB_TAG}` = '{key}' and tags.`{keys.CELL_HASH_TAG}` = '{cell}' "
                                  "and attributes.status = 'RUNNING'", order_by=["attributes.start_time ASC"])

    existing = mine()
    if existing:
        run_id = existing[0].info.run_id  # a requeued task: continue its run
        print(f"cxrstudy: task {key} continues its run {run_id}", file=sys.stderr)
    else:
        # the tags `mlflow run` gives a run it creates itself, plus the task's and the parent's
        tags = {keys.ENTRY_TAG: keys.ENTRY_TRAIN, keys.SLURM_JOB_TAG: key, keys.CELL_HASH_TAG: cell, MLFLOW_PARENT_RUN_ID: parent_run_id,
                MLFLOW_RUN_NAME: run_name, MLFLOW_PROJECT_ENTRY_POINT: "train", MLFLOW_SOURCE_TYPE: "PROJECT",
                MLFLOW_SOURCE_NAME: str(ROOT), MLFLOW_USER: getpass.getuser()}
        run_id = client.create_run(experiment_id, run_name=run_name, tags=tags).info.run_id
    for dup in mine():  # duplicates left by a retried create request
        if dup.info.run_id != run_id:
            client.set_terminated(dup.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            client.delete_run(dup.info.run_id)
            print(f"cxrstudy: deleted duplicate run {dup.info.run_id} of task {key}", file=sys.stderr)
    return run_id


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m cxrstudy.runs.launchers.job", description=__doc__.splitlines()[0])
    ap.add_argument("--cell", required=True)
    ap.add_argument("--run-name", required=True)
    ap.add_argument("--parent-run-id", required=True)
    ap.add_argument("--experiment-id", required=True)
    args = ap.parse_args(argv)
    from cxrstudy.tracking import runs as tracking

    tracking.setup()
    print(run_for_task(args.cell, task_key(), run_name=args.run_name, parent_run_id=args.parent_run_id,
                       experiment_id=args.experiment_id))


if __name__ == "__main__":
    main()
