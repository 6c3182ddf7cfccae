"""Where an Optuna study lives, so that many ``tune`` processes, on one machine or many, share it.

``storage=`` takes

- ``journal:<path>``: an Optuna journal file (the default is ``optuna_journal.log`` next to the
  MLflow store). Good for processes on one machine, or on machines sharing a file system
  that supports the lock (``journal-openlock:<path>`` uses an ``open(O_EXCL)`` lock instead of
  a symlink, for file systems such as NFS where symlinks are unreliable);
- an RDB URL, ``sqlite:///<path>`` or ``postgresql://user@host/db`` (``mysql://`` too): the way
  to share a study between machines. A URL with a password in it is refused (it would be logged
  and printed): PostgreSQL reads the password from ``PGPASSWORD`` or ``~/.pgpass``.

Every storage records a **heartbeat** of each running trial. A trial whose process died (killed,
preempted, out of memory) stops beating; after ``grace_period`` seconds any ``tune`` process
of the study marks it FAIL and calls ``on_stale`` (which re-queues it: see ``tuning.py``).
RDB storages do this natively; Optuna's JournalStorage has no heartbeat, so
:class:`HeartbeatJournalStorage` adds one (the beat is a trial system attribute holding the
writer's wall-clock time, so the machines sharing a journal need synchronised clocks).
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import TrialState

from cxrstudy.errors import UsageError
from cxrstudy.tracking import keys

RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql")
JOURNAL_PREFIXES = ("journal:", "journal-openlock:")
DEFAULT_JOURNAL_NAME = "optuna_journal.log"


@dataclass(frozen=True)
class StorageSpec:
    kind: str  # "journal" or "rdb"
    target: str  # the journal file's absolute path, or the RDB URL
    open_lock: bool = False  # journal only: JournalFileOpenLock instead of the symlink lock

    def display(self) -> str:
        """The storage as users write it, with any password hidden (safe to log)."""
        if self.kind == "journal":
            return f"{'journal-openlock' if self.open_lock else 'journal'}:{self.target}"
        from sqlalchemy.engine import make_url

        return make_url(self.target).render_as_string(hide_password=True)


def default_journal_path(tracking_uri: str) -> Path:
    """``optuna_journal.log`` next to a local MLflow store (``sqlite:///...``), else in the cwd."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).resolve().parent / DEFAULT_JOURNAL_NAME
    return Path.cwd() / DEFAULT_JOURNAL_NAME


_PASSWORD_IN_URL = re.compile(r"^([A-Za-z0-9+.-]+://[^/:@]*):([^@/]*)@")


def redact(value: str) -> str:
    """``scheme://user:secret@host/db`` -> ``scheme://user:***@host/db`` (safe to print)."""
    return _PASSWORD_IN_URL.sub(r"\1:***@", str(value))


def parse_storage(value: str, tracking_uri: str) -> StorageSpec:
    """Validate ``storage=`` (empty: the default journal file next to the MLflow store).

    A database URL with an embedded password is refused: it would be logged as a run parameter
    and printed. The password belongs in ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads both)."""
    v = str(value or "").strip()
    if _PASSWORD_IN_URL.match(v):
        bare = _PASSWORD_IN_URL.sub(r"\1@", v)
        raise UsageError(
            f"parameter storage={redact(v)} holds a password, which would be logged and printed; "
            f"use storage={bare} and put the password in PGPASSWORD or ~/.pgpass")
    if not v:
        return StorageSpec("journal", str(default_journal_path(tracking_uri)))
    for prefix in JOURNAL_PREFIXES:
        if v.startswith(prefix):
            path = v[len(prefix):].strip()
            if not path:
                raise UsageError(f"parameter storage={value!r} names no file; expected {prefix}<path>")
            p = Path(path).expanduser().resolve()
            if p.is_dir():
                raise UsageError(f"parameter storage={value!r} is a directory; expected a journal file path")
            return StorageSpec("journal", str(p), open_lock=prefix == "journal-openlock:")
    scheme = v.split("://", 1)[0].split("+", 1)[0].lower() if "://" in v else ""
    if scheme in RDB_SCHEMES:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(v)
        except (ArgumentError, ValueError) as e:
            raise UsageError(f"parameter storage={value!r} is not a valid database URL ({e})") from None
        if scheme == "sqlite" and not v.startswith("sqlite:///"):
            raise UsageError(f"parameter storage={value!r}: a SQLite URL is sqlite:///<path>")
        return StorageSpec("rdb", with_installed_driver(v))
    raise UsageError(
        f"parameter storage={value!r} is not understood; expected journal:<path> (a journal file), "
        "sqlite:///<path> or postgresql://user@host/db (password in PGPASSWORD or ~/.pgpass)")


def with_installed_driver(url: str) -> str:
    """``postgresql://`` (or ``postgres://``) without a driver -> ``postgresql+psycopg2://`` when
    psycopg 3 is not installed: SQLAlchemy 2.1 picks psycopg 3 for a bare ``postgresql://``, and
    this package installs psycopg2. A URL that names its driver is left as it is."""
    head, sep, rest = url.partition("://")
    if not sep or "+" in head or head.lower() not in ("postgresql", "postgres"):
        return url
    try:
        import psycopg  # noqa: F401

        return f"postgresql://{rest}"
    except ImportError:
        return f"postgresql+psycopg2://{rest}"


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """Optuna's JournalStorage plus the heartbeat protocol RDBStorage implements.

    ``study.optimize`` then beats for each running trial and, before each new trial, fails
    trials whose last beat is older than ``grace_period`` and hands them to ``on_stale``.
    """

    def __init__(self, backend, *, heartbeat_interval: int, grace_period: int | None = None,
                 on_stale: Callable | None = None) -> None:
        super().__init__(backend)
        self._heartbeat_interval = int(heartbeat_interval)
        self._grace_period = int(grace_period) if grace_period else 2 * self._heartbeat_interval
        self._on_stale = on_stale

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, keys.TUNE_HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process already declared this trial stale

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = t.system_attrs.get(keys.TUNE_HEARTBEAT_ATTR)
            if last is None and t.datetime_start is not None:
                last = t.datetime_start.timestamp()  # naive local time, as the journal stores it
            if last is not None and now - float(last) > self._grace_period:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self._on_stale


def open_storage(spec: StorageSpec, *, heartbeat_interval: int, grace_period: int | None,
                 on_stale: Callable | None):
    """The Optuna storage object for ``spec``, with heartbeat and stale-trial callback."""
    if spec.kind == "journal":
        path = Path(spec.target)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = JournalFileOpenLock(str(path)) if spec.open_lock else None
        backend = JournalFileBackend(str(path), lock_obj=lock)
        return HeartbeatJournalStorage(backend, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                                       on_stale=on_stale)
    if spec.target.startswith("sqlite:///"):
        Path(spec.target[len("sqlite:///"):]).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
    # optuna >= 4.9 renamed failed_trial_callback to heartbeat_stale_trial_callback
    names = inspect.signature(RDBStorage.__init__).parameters
    cb_name = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
    try:
        return RDBStorage(spec.target, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                          **{cb_name: on_stale})
    except ImportError as e:
        raise UsageError(f"storage={spec.display()} needs a database driver that is not installed ({e})") from None
