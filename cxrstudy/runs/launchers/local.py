"""The local launcher: the grid's cells in this process, or in N parallel worker processes.

Parallel workers are persistent ``python -m cxrstudy.runs.launchers.train_worker`` processes, one
per slot, each training cell after cell (start-up paid once per slot), every run nested under the
study's parent run; each training runs on one CPU thread (``TRAIN_THREADS``), so a model's weights do not
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

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm.auto import tqdm

from cxrstudy.errors import DataError, UsageError
from cxrstudy.runs.launchers import train_worker
from cxrstudy.runs.launchers.common import ROOT, cell_name, http_retry_env, pending
from cxrstudy.runs.train import finished_hashes, run_training
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


def worker_argv() -> list[str]:
    """The command of a persistent training worker (:mod:`cxrstudy.runs.launchers.train_worker`)."""
    return [sys.executable, "-m", train_worker.__name__]


def cell_params(cfg: TrainConfig, parent_run_id: str | None, device: str) -> dict:
    """The ``train`` entry point's parameters for ``cfg`` (what a worker trains it from)."""
    return {**config_to_params(cfg), "device": device, "parent_run_id": parent_run_id or ""}


def run_cells(cells: list[TrainConfig], *, workers: int = 1, parent_run_id: str | None = None,
              device: str = "auto", tracking_uri: str | None = None, experiment_id: str | None = None,
              log_dir: Path | None = None, progress: bool = True) -> None:
    """Train every cell that has no FINISHED run. Raises DataError naming the cells that failed.

    With several workers, each slot keeps one persistent worker process and hands it cell after
    cell (start-up paid once per slot, not once per model); a worker that ends after a cell (a bug
    in it, or killed) is replaced by a fresh one for the slot's next cell."""
    todo = pending(cells)
    if not todo:
        return
    if workers <= 1:
        for cfg in tqdm(todo, desc="training grid", unit="model", disable=not progress):
            run_training(cfg, device=device, parent_run_id=parent_run_id, progress=False)
        return
    log_dir = Path(log_dir or Path(cells[0].data.cache_dir) / "logs")
    log_dir.mkdir(parents=True, exist_ok=True)
    gpus = visible_gpus()
    waiting: queue.Queue = queue.Queue()
    for cfg in todo:
        waiting.put(cfg)
    finished: queue.Queue = queue.Queue()  # (cfg, exit code, log) of each cell a slot ended
    stop = threading.Event()  # set when interrupted: no further cell starts
    busy: dict[int, tuple[TrainConfig | None, subprocess.Popen]] = {}  # slot -> (its cell or None, its worker)
    guard = threading.Lock()

    def start_worker(slot: int) -> subprocess.Popen:
        with open(log_dir / f"worker-{slot}.log", "a") as fh:
            # its own session: a terminal's Ctrl-C reaches the worker only through stop_workers
            return subprocess.Popen(worker_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=fh, text=True,
                                    env=worker_env(slot, workers, tracking_uri, experiment_id, gpus), cwd=ROOT,
                                    start_new_session=True)

    def serve(slot: int) -> None:
        proc = None
        try:
            while True:
                try:
                    cfg = waiting.get_nowait()
                except queue.Empty:
                    return
                log = log_dir / f"train-{cfg.content_hash()}.log"
                with guard:
                    if stop.is_set():
                        return
                    if proc is None:
                        proc = start_worker(slot)
                    busy[slot] = (cfg, proc)
                try:
                    proc.stdin.write(json.dumps({"params": cell_params(cfg, parent_run_id, device), "log": str(log)})
                                     + "\n")
                    proc.stdin.flush()
                    answer = proc.stdout.readline().split()
                except OSError:  # the worker is gone
                    answer = []
                if answer and answer[1] == train_worker.NEXT:
                    rc = int(answer[0])
                else:  # the worker ended after this cell: its code, and a fresh worker for the next
                    rc = int(answer[0]) if answer else (proc.wait() or 1)
                    proc.wait()
                    proc = None
                with guard:
                    busy[slot] = (None, proc)
                finished.put((cfg, rc, log))
        finally:
            if proc is not None and not stop.is_set():
                proc.stdin.close()  # end of input: the worker exits
                proc.wait()

    def interrupt() -> None:
        """Start no further cell, stop the workers, and leave none of their runs RUNNING."""
        restore = _ignoring_sigint()
        try:
            with guard:
                stop.set()
                running = [cfg for cfg, _ in busy.values() if cfg is not None]
                procs = [proc for _, proc in busy.values() if proc is not None]
            stop_workers(procs)  # first: a closed stderr must not keep them running
            try:
                print(f"interrupted: no further cell started; {len(running)} running worker(s) stopped",
                      file=sys.stderr, flush=True)
            except OSError:
                pass
            mine = f" and tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else ""
            for cfg in running:
                try:
                    mark_orphans_failed(keys.CONFIG_HASH_TAG, cfg.content_hash(), also=mine, status="KILLED",
                                        reason="interrupted: the study was stopped")
                except Exception as e:  # the store is unreachable: say so, do not hide the interrupt
                    print(f"warning: could not mark the run of {cell_name(cfg)} KILLED: {str(e).splitlines()[0]}",
                          file=sys.stderr)
        finally:
            if restore is not None:
                signal.signal(signal.SIGINT, restore)

    threads = [threading.Thread(target=serve, args=(i,), daemon=True) for i in range(min(workers, len(todo)))]
    for t in threads:
        t.start()
    failed = []
    bar = tqdm(total=len(todo), desc=f"training grid ({workers} workers)", unit="model", disable=not progress)
    try:
        for _ in range(len(todo)):
            while True:
                try:
                    cfg, rc, log = finished.get(timeout=0.5)  # a timeout: Ctrl-C reaches this thread at once
                    break
                except queue.Empty:
                    if not any(t.is_alive() for t in threads) and finished.empty():
                        raise DataError("the training workers stopped before every cell had an answer; "
                                        f"their logs: {log_dir}/worker-*.log")
            if rc != 0:
                failed.append((cfg, rc, log))
                mark_orphans_failed(keys.CONFIG_HASH_TAG, cfg.content_hash())
                tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
                print(f"cell {cell_name(cfg)} failed (exit {rc}): {tail[0] if tail else ''} [log: {log}]",
                      file=sys.stderr)
            bar.update(1)
    except BaseException:  # Ctrl-C (KeyboardInterrupt) or an error: nothing new, nothing left running
        interrupt()
        raise
    finally:
        bar.close()
    for t in threads:
        t.join()
    if failed:
        raise DataError(f"{len(failed)} of {len(todo)} training cells failed; their logs: "
                        + ", ".join(str(f[2]) for f in failed[:5]) + "; run again to retry them")


def run_local(cells: list[TrainConfig], *, workers: int = 1, parent_run_id: str | None = None,
              device: str = "auto", tracking_uri: str, experiment_id: str, progress: bool = True) -> None:
    """The grid on this machine. Parallel workers and a SQLite store: start a local ``mlflow
    server`` in front of it for the grid's duration and point the workers at it (not when every
    cell is trained already)."""
    import mlflow

    from cxrstudy.tracking.server import local_server

    hashes = {c.content_hash() for c in cells}
    if finished_hashes(hashes) == hashes:  # every model is trained (a re-run): no server to start
        return
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
