"""The Slurm launcher: every unfinished grid cell as one task of a Slurm job array.

Each task runs ``mlflow run <project> --env-manager local -e train --run-id <id> -P ...``
against the shared tracking server (``MLFLOW_TRACKING_URI``, an ``http(s)://`` server the
compute nodes reach). Before ``mlflow run`` the task creates, or on a requeue finds again, its
training run (:mod:`cxrstudy.runs.launchers.job`), so retried requests and requeued jobs never log
a second run. The launcher is a thin client of ``sbatch``/``squeue``/``sacct`` (``scontrol``
where accounting is off): it submits, waits until the tasks leave the queue, asks MLflow which
cells FINISHED, reports each task's Slurm state and log, resubmits failed cells up to
``max_retries`` times, and raises naming the cells that still failed. Running ``main`` again
submits only the cells without a FINISHED run, and waits for (instead of resubmitting) cells
whose job from an earlier ``main`` is still queued or running.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from cxrstudy.errors import DataError, UsageError
from cxrstudy.runs.launchers.common import cell_name, http_retry_env, pending
from cxrstudy.runs.launchers.slurm_commands import active_tasks, check_slurm, final_states, sbatch, scancel
from cxrstudy.runs.launchers.slurm_options import SlurmOptions
from cxrstudy.runs.launchers.slurm_script import render_script
from cxrstudy.tracking import keys
from cxrstudy.tracking.runs import mark_orphans_failed, search_all_experiments
from cxrstudy.train.config import TrainConfig


def check_tracking_uri(uri: str) -> None:
    if not str(uri).startswith(("http://", "https://")):
        raise UsageError(
            f"launcher=slurm needs an MLflow tracking server the compute nodes can reach; MLFLOW_TRACKING_URI is "
            f"{uri!r}. Start one (`make server`, README 'Running on a cluster') and set "
            "MLFLOW_TRACKING_URI=http://<host>:<port>")


def adoptable(cells: list[TrainConfig], active: dict[str, str]) -> dict[str, TrainConfig]:
    """Cells whose run, from an earlier ``main``, belongs to a task still in the queue."""
    out = {}
    for cfg in cells:
        for run in search_all_experiments(f"tags.`{keys.CELL_HASH_TAG}` = '{cfg.content_hash()}' "
                                          "and attributes.status = 'RUNNING'"):
            key = run.data.tags.get(keys.SLURM_JOB_TAG)
            if key and key in active:
                out[key] = cfg
                break
    return out


def run_slurm(cells: list[TrainConfig], opts: SlurmOptions, *, parent_run_id: str, experiment_id: str,
              tracking_uri: str, device: str = "auto", progress: bool = True) -> None:
    """Train every cell without a FINISHED run as Slurm jobs; raises DataError naming the cells
    that still failed after ``opts.max_retries`` resubmissions."""
    from cxrstudy.runs.train import find_trained

    check_tracking_uri(tracking_uri)
    check_slurm()
    for k, v in http_retry_env().items():  # this process talks to the same server for as long
        os.environ.setdefault(k, v)
    todo = pending(cells)
    if not todo:
        return
    log_dir = Path(opts.log_dir or Path(cells[0].data.cache_dir) / "logs" / "slurm").expanduser().resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    tag = parent_run_id[:8]
    watched: dict[str, TrainConfig] = {}  # task key -> cell
    submitted: dict[str, int] = {}  # cell hash -> submissions so far
    failed_final: list[tuple[TrainConfig, str, str]] = []

    adopted = adoptable(todo, active_tasks())
    if adopted:
        print(f"slurm: {len(adopted)} cell(s) already have a queued or running job from an earlier main; "
              f"waiting for them: {', '.join(sorted(adopted))}", file=sys.stderr)
        watched.update(adopted)
    adopted_hashes = {c.content_hash() for c in adopted.values()}

    def submit(batch: list[TrainConfig]) -> None:
        for start in range(0, len(batch), opts.array_max):
            chunk = batch[start:start + opts.array_max]
            attempt = 1 + max(submitted.get(c.content_hash(), 0) for c in chunk)
            name = f"cxrstudy-{tag}"
            script = log_dir / f"{name}-{int(time.time() * 1000)}-try{attempt}.sbatch"
            script.write_text(render_script(chunk, opts, job_name=name, parent_run_id=parent_run_id,
                                            experiment_id=experiment_id, tracking_uri=tracking_uri, device=device,
                                            log_dir=log_dir))
            job = sbatch(script)
            for i, cfg in enumerate(chunk):
                watched[f"{job}_{i}"] = cfg
                submitted[cfg.content_hash()] = submitted.get(cfg.content_hash(), 0) + 1
            print(f"slurm: submitted {len(chunk)} cell(s) as job array {job} (attempt {attempt}; script {script})",
                  file=sys.stderr, flush=True)

    submit([c for c in todo if c.content_hash() not in adopted_hashes])
    total, done = len(todo), 0
    try:
        while watched:
            active = active_tasks()
            gone = {k: c for k, c in watched.items() if k not in active and k.split("_")[0] not in active}
            if not gone:
                time.sleep(opts.poll_seconds)
                continue
            states = final_states(sorted({k.split("_")[0] for k in gone}))
            retry = []
            for key, cfg in sorted(gone.items()):
                del watched[key]
                state, code = states.get(key, ("UNKNOWN", ""))
                log = log_dir / f"cxrstudy-{tag}-{key}.log"
                if find_trained(cfg) is not None:
                    done += 1
                    print(f"slurm: [{done}/{total}] cell {cell_name(cfg)} FINISHED (job {key}, {state})",
                          file=sys.stderr, flush=True)
                    continue
                mark_orphans_failed(keys.SLURM_JOB_TAG, key)  # a task cancelled, timed out or dead
                n = submitted.get(cfg.content_hash(), 0)
                again = n < 1 + opts.max_retries
                print(f"slurm: cell {cell_name(cfg)} did not finish (job {key}: {state}"
                      f"{', exit ' + code if code else ''}; log {log})"
                      + (f"; resubmitting ({n}/{opts.max_retries} retries used)" if again else
                         f"; giving up after {opts.max_retries} retries"), file=sys.stderr, flush=True)
                if again:
                    retry.append(cfg)
                else:
                    failed_final.append((cfg, key, state))
            if retry:
                submit(retry)
    except KeyboardInterrupt:
        print(f"slurm: interrupted; cancelling {len(watched)} job task(s)", file=sys.stderr)
        scancel(sorted(watched))
        for key in watched:
            mark_orphans_failed(keys.SLURM_JOB_TAG, key)
        raise
    if failed_final:
        raise DataError(f"{len(failed_final)} of {total} training cells failed on Slurm: "
                        + ", ".join(f"{cell_name(c)} (job {k}: {s})" for c, k, s in failed_final[:5])
                        + f"; logs in {log_dir}; run main again to retry them")
