"""One training at a time per configuration, across processes and machines (docs/PROTOCOL.md
"Run identity and reuse").

The lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local filesystems and on NFSv3+),
``<cache_dir>/checkpoints/<config hash>.lock``, next to that configuration's checkpoint folder, so
every process or machine that shares the cache shares the lock. It holds the holder's host, pid,
process start time and a random token as JSON. While held, a background thread touches the file
every :data:`HEARTBEAT_S` seconds.

Stale rule: a lock is stale when its holder is on this host and that process is gone (or is a
zombie, or the pid was reused by a later process), or when the holder is on another host and the
file has not been touched for :data:`STALE_AFTER_S` seconds (``CXRSTUDY_LOCK_STALE_S``). A stale
lock is broken by renaming it aside (only one process can win the rename) and checking that what
was renamed is the lock judged stale; a fresh lock renamed by mistake is put back.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from cxrstudy.data.exclusive import ExclusiveHold

HEARTBEAT_S = 30.0
STALE_AFTER_S = float(os.environ.get("CXRSTUDY_LOCK_STALE_S", "600"))
#: a lock file younger than this whose JSON cannot be read yet is being written, not garbage
_WRITE_GRACE_S = 10.0


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[19] if len(fields) > 19 else None


def _proc_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int, start: str | None = None) -> bool:
    """Whether process ``pid`` on this host runs (not a zombie; the same process if ``start`` is given)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if _proc_state(pid) in ("Z", "X"):
        return False
    if start is not None:
        now = _proc_start(pid)
        if now is not None and now != start:
            return False
    return True


class TrainLock(ExclusiveHold):
    """An exclusive lock file; ``acquire`` waits, ``release`` gives it back. See the module docstring."""

    heartbeat_s = HEARTBEAT_S

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = Path(path)

    # -------------------------------------------------------------------------------- holder info
    def holder(self) -> dict | None:
        """The current holder's record (``{}`` if unreadable), or None when there is no lock file."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}
        try:
            info = json.loads(text)
            return info if isinstance(info, dict) else {}
        except ValueError:
            return {}

    def _age(self) -> float | None:
        try:
            return time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None

    def holder_alive(self, info: dict | None = None) -> bool:
        """Whether the lock's holder is alive (False when there is no lock)."""
        info = self.holder() if info is None else info
        age = self._age()
        if info is None or age is None:
            return False
        if not info:  # unreadable: being written (young) or garbage (old)
            return age < _WRITE_GRACE_S
        if info.get("host") == socket.gethostname():
            return pid_alive(int(info.get("pid", -1)), info.get("start"))
        return age < STALE_AFTER_S

    def describe(self, info: dict | None = None) -> str:
        info = self.holder() if info is None else info
        if not info:
            return "another process"
        return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('since', '?')})"

    # ------------------------------------------------------------------------------ acquire/release
    def try_acquire(self) -> bool:
        """Take the lock if free (breaking a stale one); True when this process now holds it."""
        for _ in range(3):
            if self._create():
                return True
            info = self.holder()
            if info is None:
                continue  # released between our attempt and our look: try again
            if self.holder_alive(info):
                return False
            self._break(info)
        return False

    def _give_back(self) -> None:
        if (self.holder() or {}).get("token") == self.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------------------------ internals
    def _create(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        record = {"host": socket.gethostname(), "pid": os.getpid(), "start": _proc_start(os.getpid()),
                  "token": self.token, "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        self._start_heartbeat(f"lock-heartbeat-{self.path.name}")
        return True

    def _beat_once(self) -> bool:
        if (self.holder() or {}).get("token") != self.token:
            return False  # lost (removed by hand): nothing to keep alive
        try:
            os.utime(self.path)
        except OSError:
            return False
        return True

    def _break(self, judged: dict) -> None:
        """Remove a lock judged stale, without ever removing a fresh lock taken meanwhile."""
        aside = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # someone else broke or released it
        try:
            got = json.loads(aside.read_text())
        except (OSError, ValueError):
            got = {}
        if got == judged:
            aside.unlink(missing_ok=True)
            return
        try:  # we renamed a lock taken after our judgement: put it back unless a newer one exists
            os.link(aside, self.path)
        except FileExistsError:
            pass
        aside.unlink(missing_ok=True)
