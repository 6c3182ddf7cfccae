"""Run the training cells of a study (kept for compatibility: the code lives in
:mod:`cxrstudy.launchers.local`; :mod:`cxrstudy.launchers` picks local or Slurm)."""

from __future__ import annotations

from .launchers.local import (  # noqa: F401
    ROOT,
    cell_name,
    gpu_count as _gpu_count,
    mark_orphans_failed,
    pending,
    run_cells,
    run_local,
    train_command,
    worker_env,
)
