"""The ``sbatch`` script of one submission: a job array whose every task trains one cell with
``mlflow run ... -e train`` against the shared tracking server, continuing the run that
:mod:`cxrstudy.runs.launchers.job` creates (or finds again) for the task."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from cxrstudy.runs.launchers.common import ROOT, http_retry_env
from cxrstudy.runs.launchers.slurm_options import SlurmOptions
from cxrstudy.train.config import TRAIN_PARAMS, TrainConfig, config_to_params


def job_params(cfg: TrainConfig, parent_run_id: str, device: str) -> dict[str, str]:
    """The train entry point's ``-P`` values for one cell (blank values equal to their default
    are left out: MLflow fills them)."""
    params = {**config_to_params(cfg), "device": device, "parent_run_id": parent_run_id}
    return {k: v for k, v in params.items() if not (v == "" and TRAIN_PARAMS.get(k) == "")}


def render_script(cells: list[TrainConfig], opts: SlurmOptions, *, job_name: str, parent_run_id: str,
                  experiment_id: str, tracking_uri: str, device: str, log_dir: Path) -> str:
    """One ``sbatch`` script: a job array with one task per cell."""
    if not cells:
        raise ValueError("no cells to submit")
    py = opts.python or sys.executable
    n = len(cells)
    array = f"0-{n - 1}" + (f"%{opts.max_parallel}" if opts.max_parallel else "")
    sb = [f"--job-name={job_name}", f"--array={array}", f"--output={log_dir}/%x-%A_%a.log", "--ntasks=1",
          f"--cpus-per-task={opts.cpus}"]
    if opts.partition:
        sb.append(f"--partition={opts.partition}")
    if opts.gpus:
        sb.append(f"--gres=gpu:{opts.gpus}")
    if opts.mem:
        sb.append(f"--mem={opts.mem}")
    if opts.time:
        sb.append(f"--time={opts.time}")
    lines = ["#!/bin/bash", f"# cxrstudy: {n} training cell(s) of main run {parent_run_id}, one per array task"]
    lines += [f"#SBATCH {s}" for s in sb]
    lines += [e if e.startswith("#SBATCH") else f"#SBATCH {e}" for e in opts.extra]
    exports = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_ID": experiment_id, "PYTHONUNBUFFERED": "1",
               **http_retry_env()}
    lines += ["set -euo pipefail", "unset MLFLOW_RUN_ID"]
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in exports.items()]
    lines += ['export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}" MKL_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
              f"cd {shlex.quote(str(ROOT))}"]
    lines += list(opts.setup)
    lines += [f"PY={shlex.quote(py)}", 'export PATH="$(dirname "$PY"):$PATH"  # `mlflow run` calls `python`',
              'case "${SLURM_ARRAY_TASK_ID:-0}" in']
    for i, cfg in enumerate(cells):
        p = " ".join(f"-P {shlex.quote(f'{k}={v}')}" for k, v in job_params(cfg, parent_run_id, device).items())
        name = f"train-{'+'.join(cfg.envs)}-{cfg.label.replace(' ', '_')}-{cfg.balance}-s{cfg.seed}"
        lines.append(f"  {i}) CELL={cfg.content_hash()}; NAME={shlex.quote(name)}; PARAMS=({p}) ;;")
    lines += ['  *) echo "no cell for array task ${SLURM_ARRAY_TASK_ID:-}" >&2; exit 2 ;;', "esac",
              'echo "cxrstudy: cell $CELL ($NAME) on $(hostname), job ${SLURM_ARRAY_JOB_ID:-}_${SLURM_ARRAY_TASK_ID:-}"',
              f'RUN_ID=$("$PY" -m cxrstudy.runs.launchers.job --cell "$CELL" --run-name "$NAME" '
              f'--parent-run-id {shlex.quote(parent_run_id)} --experiment-id {shlex.quote(experiment_id)})',
              'if [ "$RUN_ID" = finished ]; then echo "cxrstudy: cell $CELL already has a FINISHED run"; exit 0; fi',
              f'exec "$PY" -m mlflow run {shlex.quote(str(ROOT))} --env-manager local -e train '
              f'--experiment-id {shlex.quote(experiment_id)} --run-id "$RUN_ID" "${{PARAMS[@]}}"']
    return "\n".join(lines) + "\n"
