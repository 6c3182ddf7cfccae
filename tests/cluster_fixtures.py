"""A throwaway cluster on this machine for the Slurm tests: PostgreSQL on loopback, an
``mlflow server`` backed by it, munged, and a single-node Slurm (slurmctld + slurmd on
localhost), all in a temporary directory and all stopped at the end (also on failure).

Without Debian's ``slurm-wlm``, ``munge`` and ``postgresql`` the tests skip and say what is
missing; with ``CXRSTUDY_REQUIRE_CLUSTER=1`` (set by ``.ci/run``) anything missing fails.
"""

from __future__ import annotations

import getpass
import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from cxrstudy.tracking.server import free_port

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_VAR = "CXRSTUDY_REQUIRE_CLUSTER"
INSTALL_HINT = "install slurm-wlm munge postgresql (Debian: apt-get install slurm-wlm munge postgresql)"


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    cands = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    return cands[-1] if cands else None


def missing_tools() -> list[str]:
    missing = [c for c in ("sbatch", "squeue", "scancel", "sinfo", "slurmctld", "slurmd", "munged", "mungekey")
               if shutil.which(c) is None and not Path(f"/usr/sbin/{c}").exists()]
    missing += [f"postgres {c}" for c in ("initdb", "pg_ctl") if pg_bin(c) is None]
    if os.geteuid() != 0:
        missing.append("root (slurmd runs jobs as any user only as root)")
    return missing


def require_or_skip(what: str, missing: list[str]) -> None:
    if not missing:
        return
    msg = f"{what}: missing: {', '.join(missing)}; {INSTALL_HINT}"
    if os.environ.get(REQUIRE_VAR, "").strip() not in ("", "0"):
        pytest.fail(f"{msg} ({REQUIRE_VAR} is set, so this is a failure, not a skip)", pytrace=False)
    pytest.skip(msg)


def _sbin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


def _wait(pred, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.3)
    tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s\n{tail}")


def _stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


# ---------------------------------------------------------------------------------- PostgreSQL

@contextmanager
def postgres_server():
    """PostgreSQL on 127.0.0.1:<free port> in a temporary data directory (run as the ``postgres``
    user when we are root: postgres refuses to run as root). Yields a SQLAlchemy URL of an empty
    database ``mlflow``."""
    import psycopg2

    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    base = Path(tempfile.mkdtemp(prefix="cxrstudy-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()
    subprocess.run(as_user + [initdb, "-D", str(data), "-U", "cxr", "--auth=trust", "-E", "UTF8"], check=True,
                   capture_output=True)
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off"
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "postgres.log"), "-w", "-t", "60",
                              "start"], check=True, capture_output=True)
    try:
        conn = psycopg2.connect(host="127.0.0.1", port=port, user="cxr", dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE mlflow")
        conn.close()
        yield f"postgresql+psycopg2://cxr@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def mlflow_server(backend_uri: str, workdir: Path):
    """The documented recipe, ``make server BACKEND=... ARTIFACTS=...`` (loopback, a free port),
    with the artifacts destination in ``workdir``. Yields the server's URL."""
    sys.path.insert(0, str(ROOT))
    from cxrstudy.tracking.server import wait_healthy

    port = free_port()
    (workdir / "artifacts").mkdir(parents=True, exist_ok=True)
    log = workdir / "mlflow-server.log"
    # -o: the venv is already set up (by `make test` in CI); never reinstall it from a test
    cmd = ["make", "-s", "-o", ".venv/.installed", "server", f"BACKEND={backend_uri}",
           f"ARTIFACTS={workdir / 'artifacts'}", f"PORT={port}", "SERVER_WORKERS=2"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        try:
            wait_healthy(f"http://127.0.0.1:{port}", timeout=120, proc=proc)
        except Exception as e:
            raise RuntimeError(f"{e}\n{log.read_text()[-3000:]}") from None
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


# --------------------------------------------------------------------------------------- Slurm

SLURM_CONF = """\
ClusterName=cxrtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.socket
SlurmUser={user}
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
SwitchType=switch/none
PlugStackConfig={d}/plugstack.conf
ReturnToService=2
MinJobAge=600
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=60
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@contextmanager
def slurm_cluster(cpus: int = 2):
    """munged + slurmctld + slurmd on localhost. Yields the environment variables that point
    Slurm's commands at it (``SLURM_CONF``); cancels every job and stops all three at the end."""
    d = Path(tempfile.mkdtemp(prefix="cxrstudy-slurm-"))
    os.chmod(d, 0o755)
    for sub in ("state", "spool"):
        (d / sub).mkdir()
    (d / "plugstack.conf").write_text("")
    host = socket.gethostname().split(".")[0]
    conf = d / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, ctld_port=free_port(), d_port=free_port(), d=d,
                                      user=getpass.getuser(), cpus=cpus))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    procs: list[subprocess.Popen] = []

    def start(cmd, log):
        fh = open(d / log, "w")
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        procs.append(p)
        return p

    try:
        subprocess.run([_sbin("mungekey"), "-c", "-k", str(d / "munge.key")], check=True, capture_output=True)
        start([_sbin("munged"), "-F", "-f", f"--key-file={d / 'munge.key'}", f"--socket={d / 'munge.socket'}",
               f"--pid-file={d / 'munged.pid'}", f"--log-file={d / 'munged.log'}", f"--seed-file={d / 'munged.seed'}"],
              "munged.out")
        _wait(lambda: (d / "munge.socket").exists(), 30, "munged", d / "munged.out")
        start([_sbin("slurmctld"), "-D", "-i", "-f", str(conf)], "slurmctld.out")
        start([_sbin("slurmd"), "-D", "-f", str(conf), "-N", host], "slurmd.out")

        def idle():
            out = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            return out.returncode == 0 and out.stdout.strip() == "idle"

        _wait(idle, 60, "the Slurm node", d / "slurmctld.log")
        yield {"SLURM_CONF": str(conf), "_dir": str(d)}
    finally:
        subprocess.run(["scancel", "-u", getpass.getuser()], env=env, capture_output=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            q = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True)
            if q.returncode != 0 or not q.stdout.strip():
                break
            time.sleep(0.5)
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """PostgreSQL + mlflow server + Slurm, for a whole test module. Yields a dict with
    ``tracking_uri``, ``backend_uri`` and ``env`` (the variables a test's subprocesses need)."""
    require_or_skip("Slurm + PostgreSQL cluster tests", missing_tools())
    work = tmp_path_factory.mktemp("cluster")
    os.chmod(work, 0o755)
    with ExitStack() as stack:
        backend = stack.enter_context(postgres_server())
        url = stack.enter_context(mlflow_server(backend, work))
        slurm_env = stack.enter_context(slurm_cluster())
        yield {"tracking_uri": url, "backend_uri": backend, "env": {"SLURM_CONF": slurm_env["SLURM_CONF"]},
               "slurm_dir": slurm_env["_dir"], "work": work}
