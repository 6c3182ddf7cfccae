"""Run the training cells of a study: in this process, or in N parallel worker processes.

Parallel workers are ``python entrypoints/train.py`` subprocesses that log through one local
``mlflow server`` (see :mod:`cxrstudy.server`), each nested under the study's parent run and
given ``cores / N`` CPU threads (and, on a multi-GPU node, one GPU each via
``CUDA_VISIBLE_DEVICES``). A cell whose configuration already has a FINISHED run is skipped,
so a killed study resumes where it stopped.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from .config import TrainConfig, config_to_params
from .errors import DataError
from .train_run import find_finished, run_training

ROOT = Path(__file__).resolve().parents[1]


def pending(cells: list[TrainConfig]) -> list[TrainConfig]:
    return [c for c in cells if find_finished(c.content_hash()) is None]


def mark_orphans_failed(cfg: TrainConfig) -> None:
    """A worker that died (killed, out of memory) cannot end its run: mark it FAILED for it."""
    from mlflow.tracking import MlflowClient

    from .train_run import HASH_TAG, search_training_runs

    client = MlflowClient()
    for run in search_training_runs(f"tags.`{HASH_TAG}` = '{cfg.content_hash()}' and attributes.status = 'RUNNING'"):
        client.set_terminated(run.info.run_id, "FAILED")


def train_command(cfg: TrainConfig, parent_run_id: str | None, device: str) -> list[str]:
    params = {**config_to_params(cfg), "device": device, "parent_run_id": parent_run_id or ""}
    cmd = [sys.executable, str(ROOT / "entrypoints" / "train.py")]
    for k, v in params.items():
        cmd += [f"--{k}", v]
    return cmd


def worker_env(i: int, workers: int, tracking_uri: str, experiment_id: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    threads = max(1, (os.cpu_count() or 1) // workers)
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_EXPERIMENT_ID=experiment_id,
               OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    n_gpus = _gpu_count()
    if n_gpus > 1 and "CUDA_VISIBLE_DEVICES" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = str(i % n_gpus)
    return env


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_cells(cells: list[TrainConfig], *, workers: int = 1, parent_run_id: str | None = None,
              device: str = "auto", tracking_uri: str | None = None, experiment_id: str | None = None,
              log_dir: Path | None = None, progress: bool = True) -> None:
    """Train every cell that has no FINISHED run. Raises DataError naming the cells that failed."""
    todo = pending(cells)
    if not todo:
        return
    if workers <= 1:
        for cfg in tqdm(todo, desc="training grid", unit="model", disable=not progress):
            run_training(cfg, device=device, parent_run_id=parent_run_id, progress=False)
        return
    log_dir = Path(log_dir or Path(cells[0].data.cache_dir) / "logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    failed = []

    slots: queue.Queue = queue.Queue()
    for i in range(workers):
        slots.put(i)

    def launch(cfg: TrainConfig) -> tuple[TrainConfig, int, Path]:
        log = log_dir / f"train-{cfg.content_hash()}.log"
        slot = slots.get()  # worker slot: decides the GPU on a multi-GPU node
        try:
            with open(log, "w") as fh:
                rc = subprocess.run(train_command(cfg, parent_run_id, device), stdout=fh, stderr=subprocess.STDOUT,
                                    env=worker_env(slot, workers, tracking_uri, experiment_id), cwd=ROOT).returncode
        finally:
            slots.put(slot)
        return cfg, rc, log

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(launch, cfg) for cfg in todo]
        bar = tqdm(total=len(futures), desc=f"training grid ({workers} workers)", unit="model", disable=not progress)
        for fut in as_completed(futures):
            cfg, rc, log = fut.result()
            if rc != 0:
                failed.append((cfg, rc, log))
                mark_orphans_failed(cfg)
                tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                print(f"cell {'+'.join(cfg.envs)}/{cfg.label}/{cfg.balance}/s{cfg.seed} failed (exit {rc}): "
                      f"{tail[0] if tail else ''} [log: {log}]", file=sys.stderr)
            bar.update(1)
        bar.close()
    if failed:
        raise DataError(f"{len(failed)} of {len(todo)} training cells failed; their logs: "
                        + ", ".join(str(f[2]) for f in failed[:5]) + "; run again to retry them")
