"""A local ``mlflow server`` for parallel workers (SQLite behind one process: no 'database is locked')."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from cxrstudy.errors import DataError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout: float = 90.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise DataError(f"mlflow server exited with code {proc.returncode} before answering on {url}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise DataError(f"mlflow server at {url} did not answer /health within {timeout:.0f} s")


@contextmanager
def local_server(backend_uri: str, artifacts_dir: Path, host: str = "127.0.0.1", port: int | None = None,
                 log_dir: Path | None = None):
    """Start ``mlflow server`` on ``host`` (loopback by default), yield its URL, stop it at the end.
    Its log is ``<log_dir>/mlflow-server-<port>.log`` (default: beside ``artifacts_dir``; the study
    passes the cache's log folder, so nothing lands in the repository)."""
    port = port or free_port()
    url = f"http://{host}:{port}"
    log_dir = Path(log_dir) if log_dir is not None else Path(artifacts_dir).parent
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"mlflow-server-{port}.log", "w")
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_uri,
           "--artifacts-destination", str(artifacts_dir), "--host", host, "--port", str(port), "--workers", "1"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_RUN_ID")}
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        wait_healthy(url, proc=proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def check_reachable(uri: str | None = None, timeout: float = 5.0) -> None:
    """Raise DataError (one line naming the URI) when an ``http(s)://`` tracking URI does not answer
    ``/health`` within ``timeout`` s. No MLflow import: cheap enough to run before ``mlflow run``,
    which itself retries for minutes and ends in a traceback when the server is down."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
            if r.status == 200:
                return
            reason = f"answered {r.status} on /health"
    except OSError as e:
        reason = f"unreachable ({getattr(e, 'reason', e)})"
    raise DataError(f"MLflow tracking server {uri} is {reason}; start it or set MLFLOW_TRACKING_URI")


def check_then_run(argv: list[str]) -> int:
    """``python -m cxrstudy.tracking.server [COMMAND ...]``: check ``MLFLOW_TRACKING_URI``
    (:func:`check_reachable`; one line and exit 1 in seconds when it does not answer), then replace
    this process with ``COMMAND`` (typically ``mlflow run . -e main ...``), whose exit code becomes
    ours. ``mlflow run`` creates its run on the server before our entry point starts, and with
    MLflow's default HTTP retries it spends about 4 minutes and five tracebacks on a server that is
    down; this check says so at once. Returns the exit code when there is no command to run."""
    try:
        check_reachable()
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if argv:
        sys.stdout.flush()
        try:
            os.execvp(argv[0], argv)
        except OSError as e:
            print(f"error: cannot run {argv[0]!r}: {e.strerror or e}", file=sys.stderr)
            return 127
    return 0


if __name__ == "__main__":  # the Makefile runs `python -m cxrstudy.tracking.server mlflow run ...`
    sys.exit(check_then_run(sys.argv[1:]))
