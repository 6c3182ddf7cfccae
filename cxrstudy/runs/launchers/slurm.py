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

import dataclasses
import getpass
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cxrstudy.errors import DataError, UsageError
from cxrstudy.runs.launchers.local import ROOT, cell_name, http_retry_env, pending
from cxrstudy.tracking import keys
from cxrstudy.train.config import TRAIN_PARAMS, TrainConfig, config_to_params

#: The Slurm states after which a task is gone for good (anything else may still run).
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "REVOKED", "SPECIAL_EXIT"}

_TIME = re.compile(r"^(\d+|\d+:\d{2}|\d+:\d{2}:\d{2}|\d+-\d+|\d+-\d+:\d{2}|\d+-\d+:\d{2}:\d{2}|infinite|unlimited)$")
_MEM = re.compile(r"^\d+[KMGT]?$", re.IGNORECASE)


@dataclass
class SlurmOptions:
    """Everything a job asks Slurm for. Blank or None: Slurm's (or the cluster's) default."""

    partition: str = ""
    gpus: int = 0  # GPUs per job (one job trains one cell): --gres=gpu:N
    cpus: int = 4  # --cpus-per-task
    mem: str = ""  # --mem, e.g. 32G
    time: str = ""  # --time, e.g. 12:00:00 or 1-00:00:00
    extra: list = field(default_factory=list)  # extra #SBATCH lines, e.g. --account=lab
    max_retries: int = 2  # resubmissions of a failed cell before main gives up on it
    max_parallel: int = 0  # array throttle (%N); 0: no limit
    setup: list = field(default_factory=list)  # shell lines run before the job (module load ...)
    python: str = ""  # the Python on the compute nodes (default: this one; a shared venv)
    log_dir: str = ""  # where job scripts and logs go (default: <cache_dir>/logs/slurm)
    poll_seconds: float = 30.0  # how often squeue is asked
    array_max: int = 1000  # largest array submitted at once (Slurm's MaxArraySize is 1001 by default)

    def validate(self) -> "SlurmOptions":
        if self.time and not _TIME.match(self.time):
            raise UsageError(f"slurm time={self.time!r} is not a Slurm time limit; expected e.g. 90, 12:00:00 "
                             "or 1-00:00:00")
        if self.mem and not _MEM.match(self.mem):
            raise UsageError(f"slurm mem={self.mem!r} is not a Slurm memory size; expected e.g. 32G or 16000M")
        for name, lo, hi in (("gpus", 0, 64), ("cpus", 1, 1024), ("max_retries", 0, 100), ("max_parallel", 0, 100000),
                             ("array_max", 1, 1000000)):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
                raise UsageError(f"slurm {name}={v!r} is out of range; expected an integer {lo}..{hi}")
        if not (isinstance(self.poll_seconds, (int, float)) and 0.1 <= self.poll_seconds <= 3600):
            raise UsageError(f"slurm poll_seconds={self.poll_seconds!r} is out of range; expected 0.1..3600")
        if self.partition and not re.match(r"^[\w.,-]+$", self.partition):
            raise UsageError(f"slurm partition={self.partition!r} is not a partition name")
        for line in self.extra:
            if "\n" in line:
                raise UsageError(f"slurm extra line {line!r} contains a line break")
        return self


FIELDS = {f.name: f for f in dataclasses.fields(SlurmOptions)}
_INT_FIELDS = ("gpus", "cpus", "max_retries", "max_parallel", "array_max")


def _lines(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [p.strip() for p in re.split(r"[;\n]", value) if p.strip()]
    if isinstance(value, (list, tuple)):
        return [str(p).strip() for p in value if str(p).strip()]
    raise UsageError(f"expected a list of lines, got {value!r}")


def _coerce(name: str, value, where: str):
    if name in ("extra", "setup"):
        return _lines(value)
    if name in _INT_FIELDS:
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(str(value).strip())
        except ValueError:
            raise UsageError(f"{where}: {name}={value!r} is not an integer") from None
    if name == "poll_seconds":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{where}: {name}={value!r} is not a number") from None
    return str(value).strip()


def load_config(path: str | Path) -> dict:
    """Read a Slurm config file: TOML (``.toml``) or YAML (``.yaml``/``.yml``), keys at the top
    level or under a ``[slurm]`` table. Unknown keys are an error (a typo must not be ignored)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UsageError(f"slurm_config={str(path)!r} does not exist")
    text = path.read_text()
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            import tomllib

            data = tomllib.loads(text)
    except Exception as e:  # noqa: BLE001 -- any parse error is the user's file
        raise UsageError(f"slurm_config {path}: cannot parse: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"slurm_config {path}: expected a table of settings")
    if isinstance(data.get("slurm"), dict):
        data = data["slurm"]
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise UsageError(f"slurm_config {path}: unknown setting(s) {', '.join(unknown)}; expected: {', '.join(FIELDS)}")
    return {k: _coerce(k, v, f"slurm_config {path}") for k, v in data.items()}


def options_from_params(raw: dict) -> SlurmOptions:
    """Defaults < the config file (``slurm_config``) < non-empty ``slurm_*`` parameters."""
    values: dict = {}
    if str(raw.get("slurm_config", "")).strip():
        values.update(load_config(raw["slurm_config"].strip()))
    for name in ("partition", "gpus", "cpus", "mem", "time", "extra", "max_retries", "max_parallel"):
        v = str(raw.get(f"slurm_{name}", "")).strip()
        if v:
            values[name] = _coerce(name, v, f"parameter slurm_{name}")
    return SlurmOptions(**values).validate()


# ------------------------------------------------------------------------------------ job script

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
    env = {"MLFLOW_TRACKING_URI": tracking_uri, "MLFLOW_EXPERIMENT_ID": experiment_id, "PYTHONUNBUFFERED": "1",
           **http_retry_env()}
    lines += ["set -euo pipefail", "unset MLFLOW_RUN_ID"]
    lines += [f"export {k}={shlex.quote(str(v))}" for k, v in env.items()]
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


# ------------------------------------------------------------------------------- Slurm commands

def _run(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise DataError(f"{cmd[0]} not found: launcher=slurm needs the Slurm client commands "
                        "(sbatch, squeue, scancel) on PATH") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"{' '.join(cmd[:2])} did not answer within 120 s; is slurmctld up?") from None
    if check and out.returncode != 0:
        raise DataError(f"{' '.join(cmd[:2])} failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    return out


def sbatch(script: Path) -> str:
    """Submit; returns the (array) job id."""
    out = _run(["sbatch", "--parsable", str(script)])
    job = out.stdout.strip().splitlines()[-1].split(";")[0].strip() if out.stdout.strip() else ""
    if not re.match(r"^\d+$", job):
        raise DataError(f"sbatch printed no job id: {out.stdout.strip()!r} {out.stderr.strip()!r}")
    return job


def active_tasks() -> dict[str, str]:
    """This user's queued or running tasks: ``{"<job>_<task>" or "<job>": state}``."""
    for attempt in range(6):  # a busy slurmctld may time a query out: ask again before giving up
        out = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i|%T"], check=attempt == 5)
        if out.returncode == 0:
            break
        time.sleep(5)
    res = {}
    for line in out.stdout.splitlines():
        if "|" in line:
            key, state = line.strip().split("|", 1)
            res[key] = state.strip()
    return res


def final_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """``{"<job>_<task>": (state, exit code)}`` from ``sacct``, or ``scontrol`` when accounting is off."""
    res: dict[str, tuple[str, str]] = {}
    if not job_ids:
        return res
    out = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(job_ids), "-o", "JobID,State,ExitCode"], check=False) \
        if _has("sacct") else None
    if out is not None and out.returncode == 0:
        for line in out.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) >= 3:
                res[parts[0]] = (parts[1].split()[0] if parts[1] else "UNKNOWN", parts[2])
    if not res and _has("scontrol"):
        for job in job_ids:
            out = _run(["scontrol", "-o", "show", "job", job], check=False)
            for line in out.stdout.splitlines():
                kv = dict(re.findall(r"(\w+)=(\S*)", line))
                if kv.get("ArrayTaskId"):
                    key = f"{kv.get('ArrayJobId')}_{kv['ArrayTaskId']}"
                else:
                    key = kv.get("JobId", "")
                res[key] = (kv.get("JobState", "UNKNOWN"), kv.get("ExitCode", ""))
    return res


def scancel(keys: list[str]) -> None:
    if keys:
        _run(["scancel", *keys], check=False)


def _has(cmd: str) -> bool:
    import shutil

    return shutil.which(cmd) is not None


# --------------------------------------------------------------------------------- the launcher

def check_tracking_uri(uri: str) -> None:
    if not str(uri).startswith(("http://", "https://")):
        raise UsageError(
            f"launcher=slurm needs an MLflow tracking server the compute nodes can reach; MLFLOW_TRACKING_URI is "
            f"{uri!r}. Start one (`make server`, README 'Running on a cluster') and set "
            "MLFLOW_TRACKING_URI=http://<host>:<port>")


def check_slurm() -> None:
    missing = [c for c in ("sbatch", "squeue", "scancel") if not _has(c)]
    if missing:
        raise UsageError(f"launcher=slurm needs the Slurm client commands on PATH; missing: {', '.join(missing)}")


def _runs_of_job(key: str, status: str = "RUNNING"):
    from cxrstudy.runs.train import search_training_runs

    return search_training_runs(f"tags.`{keys.SLURM_JOB_TAG}` = '{key}' and attributes.status = '{status}'")


def mark_job_runs_failed(key: str) -> int:
    """A task that was cancelled, timed out or died cannot end its run: mark it FAILED for it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    runs = _runs_of_job(key)
    for run in runs:
        client.set_terminated(run.info.run_id, "FAILED")
    return len(runs)


def adoptable(cells: list[TrainConfig], active: dict[str, str]) -> dict[str, TrainConfig]:
    """Cells whose run, from an earlier ``main``, belongs to a task still in the queue."""
    from cxrstudy.runs.train import search_training_runs

    out = {}
    for cfg in cells:
        for run in search_training_runs(f"tags.`{keys.CELL_HASH_TAG}` = '{cfg.content_hash()}' and attributes.status = 'RUNNING'"):
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
                mark_job_runs_failed(key)
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
            mark_job_runs_failed(key)
        raise
    if failed_final:
        raise DataError(f"{len(failed_final)} of {total} training cells failed on Slurm: "
                        + ", ".join(f"{cell_name(c)} (job {k}: {s})" for c, k, s in failed_final[:5])
                        + f"; logs in {log_dir}; run main again to retry them")
