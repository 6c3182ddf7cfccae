"""The local launcher: the grid's cells in this process, or in N parallel worker processes.

Parallel workers are ``python entrypoints/train.py`` subprocesses, each nested under the study's
parent run; each training runs on one CPU thread (``TRAIN_THREADS``), so a model's weights do not
depend on the number of workers, and ``workers=auto`` on a CPU machine starts one per usable core. With a SQLite store they log through one local
``mlflow server`` (see :mod:`cxrstudy.tracking.server`): SQLite behind one process, no 'database is
locked'. On a node with several visible GPUs every worker slot owns one GPU
(``CUDA_VISIBLE_DEVICES``); ``workers=auto`` starts one worker per GPU, and two workers share a
GPU only when more workers than GPUs are asked for explicitly. A cell whose configuration
already has a FINISHED run is skipped, so a killed study resumes where it stopped.

Interrupted (Ctrl-C, i.e. SIGINT, or any error in the parent), the parent starts no further cell,
passes SIGINT on to every running worker (each in its own session, so a terminal's Ctrl-C reaches
them once, through the parent), which ends its run KILLED; a worker still alive after
:data:`STOP_GRACE_S` seconds is killed, and its run, if still RUNNING, is marked KILLED for it.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm.auto import tqdm

from cxrstudy.errors import DataError, UsageError
from cxrstudy.runs.launchers.common import ROOT, cell_name, http_retry_env, pending
from cxrstudy.runs.train import run_training
from cxrstudy.tracking import keys
from cxrstudy.tracking.runs import mark_orphans_failed
from cxrstudy.train.config import TrainConfig, config_to_params
from cxrstudy.train.device import TRAIN_THREADS


#: how long an interrupted worker may take to end its run KILLED before it is killed
STOP_GRACE_S = 30.0


def stop_workers(procs: list[subprocess.Popen], grace_s: float = STOP_GRACE_S) -> None:
    """SIGINT to each running worker's process group (the worker ends its run KILLED and exits 130);
    SIGKILL to any still alive after ``grace_s`` seconds."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGINT)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def _ignoring_sigint():
    """Ignore SIGINT (a second Ctrl-C) while workers are being stopped; returns the handler to restore,
    or None off the main thread (where signal handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, signal.SIG_IGN)


def train_argv(cfg: TrainConfig, parent_run_id: str | None, device: str) -> list[str]:
    params = {**config_to_params(cfg), "device": device, "parent_run_id": parent_run_id or ""}
    cmd = [sys.executable, str(ROOT / "entrypoints" / "train.py")]
    for k, v in params.items():
        cmd += [f"--{k}", v]
    return cmd


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def visible_gpus() -> list[str]:
    """The GPU ids workers may be given: the parent's ``CUDA_VISIBLE_DEVICES`` entries when it is
    set (so ``CUDA_VISIBLE_DEVICES=2,3`` spreads over GPUs 2 and 3), else ``0..n-1``."""
    n = gpu_count()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        ids = [g.strip() for g in given.split(",") if g.strip()]
        return ids[:n] if n else []
    return [str(i) for i in range(n)]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, e.g. a Slurm allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_workers(value, gpus: list[str] | None = None) -> int:
    """``auto`` -> one worker per visible GPU, or one per usable core without a GPU (each training
    runs on one thread, :data:`cxrstudy.train.device.TRAIN_THREADS`); an integer as given. Asking for
    more workers than GPUs on a multi-GPU node is allowed (they share) and said once."""
    gpus = visible_gpus() if gpus is None else gpus
    v = str(value).strip().lower()
    if v in ("", "auto"):
        return len(gpus) if gpus else max(1, usable_cores() // TRAIN_THREADS)
    try:
        n = int(v)
    except ValueError:
        raise UsageError(f"parameter workers={value!r} is not an integer or 'auto'") from None
    if not 1 <= n <= 256:
        raise UsageError(f"parameter workers={n} is out of range; expected 1..256 or auto")
    if len(gpus) > 1 and n > len(gpus):
        print(f"note: {n} workers on {len(gpus)} GPUs: some GPUs run two workers (workers=auto runs one per GPU)",
              file=sys.stderr)
    return n


def slot_gpu(slot: int, gpus: list[str]) -> str | None:
    """The GPU a worker slot owns on a multi-GPU node (None: leave CUDA_VISIBLE_DEVICES alone)."""
    return gpus[slot % len(gpus)] if len(gpus) > 1 else None


def worker_env(i: int, workers: int, tracking_uri: str, experiment_id: str, gpus: list[str] | None = None) -> dict:
    environ = {k: v for k, v in os.environ.items() if k != "MLFLOW_RUN_ID"}
    threads = max(1, usable_cores() // workers)
    environ.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_EXPERIMENT_ID=experiment_id,
                   OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if str(tracking_uri).startswith(("http://", "https://")):
        environ.update(http_retry_env())
    gpu = slot_gpu(i, visible_gpus() if gpus is None else gpus)
    if gpu is not None:
        environ["CUDA_VISIBLE_DEVICES"] = gpu
    return environ


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
    gpus = visible_gpus()

    slots: queue.Queue = queue.Queue()
    for i in range(workers):
        slots.put(i)

    stop = threading.Event()  # set when interrupted: no further cell starts
    started: dict[str, tuple[TrainConfig, subprocess.Popen]] = {}  # running workers, by config hash
    guard = threading.Lock()

    def launch(cfg: TrainConfig) -> tuple[TrainConfig, int | None, Path]:
        log = log_dir / f"train-{cfg.content_hash()}.log"
        slot = slots.get()  # worker slot: decides the GPU on a multi-GPU node
        try:
            with guard:
                if stop.is_set():
                    return cfg, None, log
                fh = open(log, "w")
                # its own session: a terminal's Ctrl-C reaches the worker only through stop_workers
                proc = subprocess.Popen(train_argv(cfg, parent_run_id, device), stdout=fh, stderr=subprocess.STDOUT,
                                        env=worker_env(slot, workers, tracking_uri, experiment_id, gpus), cwd=ROOT,
                                        start_new_session=True)
                started[cfg.content_hash()] = (cfg, proc)
            try:
                rc = proc.wait()
            finally:
                fh.close()
                with guard:
                    started.pop(cfg.content_hash(), None)
        finally:
            slots.put(slot)
        return cfg, rc, log

    def interrupt(futures) -> None:
        """Start no further cell, stop the running workers, and leave none of their runs RUNNING."""
        restore = _ignoring_sigint()
        try:
            with guard:
                stop.set()
                running = list(started.values())
            for fut in futures:
                fut.cancel()
            stop_workers([proc for _, proc in running])  # first: a closed stderr must not keep them running
            try:
                print(f"interrupted: no further cell started; {len(running)} running worker(s) stopped",
                      file=sys.stderr, flush=True)
            except OSError:
                pass
            mine = f" and tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else ""
            for cfg, _ in running:
                try:
                    mark_orphans_failed(keys.CONFIG_HASH_TAG, cfg.content_hash(), also=mine, status="KILLED",
                                        reason="interrupted: the study was stopped")
                except Exception as e:  # the store is unreachable: say so, do not hide the interrupt
                    print(f"warning: could not mark the run of {cell_name(cfg)} KILLED: {str(e).splitlines()[0]}",
                          file=sys.stderr)
        finally:
            if restore is not None:
                signal.signal(signal.SIGINT, restore)

    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(launch, cfg) for cfg in todo]
        bar = tqdm(total=len(futures), desc=f"training grid ({workers} workers)", unit="model", disable=not progress)
        try:
            for fut in as_completed(futures):
                cfg, rc, log = fut.result()
                if rc != 0:
                    failed.append((cfg, rc, log))
                    mark_orphans_failed(keys.CONFIG_HASH_TAG, cfg.content_hash())
                    tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                    print(f"cell {cell_name(cfg)} failed (exit {rc}): {tail[0] if tail else ''} [log: {log}]",
                          file=sys.stderr)
                bar.update(1)
        except BaseException:  # Ctrl-C (KeyboardInterrupt) or an error: nothing new, nothing left running
            interrupt(futures)
            raise
        finally:
            bar.close()
    if failed:
        raise DataError(f"{len(failed)} of {len(todo)} training cells failed; their logs: "
                        + ", ".join(str(f[2]) for f in failed[:5]) + "; run again to retry them")



def run_local(cells: list[TrainConfig], *, workers: int = 1, parent_run_id: str | None = None,
              device: str = "auto", tracking_uri: str, experiment_id: str, progress: bool = True) -> None:
    """The grid on this machine. Parallel workers and a SQLite store: start a local ``mlflow
    server`` in front of it for the grid's duration and point the workers at it."""
    import mlflow

    from cxrstudy.tracking.server import local_server

    if workers > 1 and tracking_uri.startswith("sqlite:"):
        db = Path(tracking_uri.split("sqlite:///", 1)[1])
        with local_server(tracking_uri, db.parent / "mlartifacts", log_dir=Path(cells[0].data.cache_dir) / "logs") as url:
            mlflow.set_tracking_uri(url)
            try:
                run_cells(cells, workers=workers, parent_run_id=parent_run_id, device=device, tracking_uri=url,
                          experiment_id=experiment_id, progress=progress)
            finally:
                mlflow.set_tracking_uri(tracking_uri)
    else:
        run_cells(cells, workers=workers, parent_run_id=parent_run_id, device=device, tracking_uri=tracking_uri,
                  experiment_id=experiment_id, progress=progress)
