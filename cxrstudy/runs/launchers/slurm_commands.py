"""The Slurm client commands the launcher uses (``sbatch``, ``squeue``, ``sacct``, ``scontrol``,
``scancel``), each a function that returns parsed output or raises one clear DataError."""

from __future__ import annotations

import getpass
import re
import shutil
import subprocess
import time
from pathlib import Path

from cxrstudy.errors import DataError, UsageError


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
    return shutil.which(cmd) is not None


def check_slurm() -> None:
    missing = [c for c in ("sbatch", "squeue", "scancel") if not _has(c)]
    if missing:
        raise UsageError(f"launcher=slurm needs the Slurm client commands on PATH; missing: {', '.join(missing)}")
