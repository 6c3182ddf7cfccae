"""Where an Optuna study lives, so that many ``tune`` processes, on one machine or many, share it.

``storage=`` (or, for a database URL that carries a password, the environment variable
``CXRSTUDY_TUNE_STORAGE``) takes

- ``journal:<path>``: an Optuna journal file (the default is ``optuna_journal.log`` next to the
  MLflow store). Good for processes on one machine, or on machines sharing a file system
  that supports the lock (``journal-openlock:<path>`` uses an ``open(O_EXCL)`` lock instead of
  a symlink, for file systems such as NFS where symlinks are unreliable);
- an RDB URL, ``sqlite:///<path>`` or ``postgresql://user@host/db`` (``mysql://`` too): the way
  to share a study between machines. The ``storage`` *parameter* never carries a password, in
  the user part (``user:secret@``) or the query (``?password=secret``): ``mlflow run`` logs and
  prints every ``-P`` value, so such a value is refused in one line that does not repeat it.
  The password goes in ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads both), or the whole URL goes
  in ``CXRSTUDY_TUNE_STORAGE``, which nothing logs; what is logged and printed is
  :meth:`StorageSpec.display`, with every password hidden.

Every storage records a **heartbeat** of each running trial. A trial whose process died (killed,
preempted, out of memory) stops beating; after ``grace_period`` seconds any ``tune`` process
of the study marks it FAIL and calls ``on_stale`` (which re-queues it:
:meth:`cxrstudy.runs.tune_worker.StudyWorker.on_stale`).
RDB storages do this natively; Optuna's JournalStorage has no heartbeat, so
:class:`HeartbeatJournalStorage` adds one (the beat is a trial system attribute holding the
writer's wall-clock time, so the machines sharing a journal need synchronised clocks).
"""

from __future__ import annotations

import inspect
import os
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
#: the environment variable that may hold the storage instead of the ``storage`` parameter
STORAGE_ENV = "CXRSTUDY_TUNE_STORAGE"


@dataclass(frozen=True)
class StorageSpec:
    kind: str  # "journal" or "rdb"
    target: str  # the journal file's absolute path, or the RDB URL
    open_lock: bool = False  # journal only: JournalFileOpenLock instead of the symlink lock

    def display(self) -> str:
        """The storage as users write it, with any password hidden (safe to log)."""
        if self.kind == "journal":
            return f"{'journal-openlock' if self.open_lock else 'journal'}:{self.target}"
        return redact(self.target)

    def scrub(self, text: str) -> str:
        """``text`` (an error from a database driver, say) with this storage's passwords hidden."""
        return scrub_secrets(str(text), self.target)


def default_journal_path(tracking_uri: str) -> Path:
    """``optuna_journal.log`` next to a local MLflow store (``sqlite:///...``), else in the cwd."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).resolve().parent / DEFAULT_JOURNAL_NAME
    return Path.cwd() / DEFAULT_JOURNAL_NAME


_PASSWORD_IN_URL = re.compile(r"^([A-Za-z0-9+.-]+://[^/:@]*):([^@/]*)@")
#: query keys that carry a secret (libpq's ``password``, MySQL's ``passwd``, tokens)
_SECRET_KEY = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
_HIDDEN = "***"


def _url(value: str):
    """SQLAlchemy's reading of ``value`` as a database URL, or None if it is not one."""
    if "://" not in value:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(value)
    except (ArgumentError, ValueError, TypeError):
        return None


def _secrets(value: str) -> list[str]:
    """The secrets in a storage value: the user part's password and secret query values."""
    from urllib.parse import unquote

    found = []
    m = _PASSWORD_IN_URL.match(value)
    if m and m.group(2):
        found += [m.group(2), unquote(m.group(2))]
    url = _url(value)
    if url is not None:
        if url.password:
            found.append(str(url.password))
        for k, v in url.query.items():
            if _SECRET_KEY.search(k):
                found += [v] if isinstance(v, str) else list(v)
    return sorted({f for f in found if f}, key=len, reverse=True)


def has_password(value: str) -> bool:
    """Whether a storage value carries a password (``user:secret@`` or ``?password=secret``)."""
    v = str(value or "")
    if _secrets(v):
        return True
    query = v.partition("?")[2]  # a URL SQLAlchemy cannot read: any secret-looking key counts
    return "://" in v and any(_SECRET_KEY.search(part.partition("=")[0]) for part in query.split("&"))


def scrub_secrets(text: str, value: str) -> str:
    """``text`` with every secret of the storage value ``value`` replaced by ``***``."""
    out = str(text)
    for secret in _secrets(str(value)):
        out = out.replace(secret, _HIDDEN)
    return out


def without_password(value: str) -> str | None:
    """The URL with its password and secret query keys removed (None if it is not a URL)."""
    url = _url(str(value))
    if url is None:
        return None
    from sqlalchemy.engine import URL

    bare = URL.create(url.drivername, username=url.username, password=None, host=url.host, port=url.port,
                      database=url.database, query={k: v for k, v in url.query.items() if not _SECRET_KEY.search(k)})
    return scrub_secrets(bare.render_as_string(hide_password=False), value)


def redact(value: str) -> str:
    """``scheme://user:secret@host/db?password=secret`` -> ``scheme://user:***@host/db?password=***``
    (safe to print and log)."""
    v = str(value)
    url = _url(v)
    if url is not None and (url.password or any(_SECRET_KEY.search(k) for k in url.query)):
        url = url.set(query={k: (_HIDDEN if _SECRET_KEY.search(k) else q) for k, q in url.query.items()})
        v = url.render_as_string(hide_password=True).replace("%2A%2A%2A", _HIDDEN)
    return scrub_secrets(_PASSWORD_IN_URL.sub(r"\1:***@", v), value)


def parse_storage(value: str, tracking_uri: str, environ=None) -> StorageSpec:
    """Validate the storage: the ``storage`` parameter ``value``, else the environment variable
    ``CXRSTUDY_TUNE_STORAGE`` (of ``environ``, default ``os.environ``), else the default journal
    file next to the MLflow store.

    The parameter may not hold a password: ``mlflow run`` logs and prints every parameter. It is
    refused with a line that does not repeat it. The environment variable may (nothing logs it);
    every message and log shows the storage with its passwords hidden."""
    v = str(value or "").strip()
    env = str((os.environ if environ is None else environ).get(STORAGE_ENV, "") or "").strip()
    if v and has_password(v):
        bare = without_password(v)
        instead = (f"use storage={bare} with the password in PGPASSWORD or ~/.pgpass, or leave storage empty "
                   f"and put the whole URL in the environment variable {STORAGE_ENV}") if bare else \
            (f"leave storage empty and put the whole URL in the environment variable {STORAGE_ENV}, "
             "or the password in PGPASSWORD or ~/.pgpass")
        raise UsageError(f"parameter storage holds a password, which MLflow logs and prints as a run parameter; "
                         f"{instead}")
    if v and env and v != env:
        raise UsageError(f"the storage is given twice, as parameter storage and in {STORAGE_ENV}; give one of them")
    what = "parameter storage" if v else f"{STORAGE_ENV}"
    v = v or env
    if not v:
        return StorageSpec("journal", str(default_journal_path(tracking_uri)))
    shown = redact(v)
    for prefix in JOURNAL_PREFIXES:
        if v.startswith(prefix):
            path = v[len(prefix):].strip()
            if not path:
                raise UsageError(f"{what}={shown!r} names no file; expected {prefix}<path>")
            p = Path(path).expanduser().resolve()
            if p.is_dir():
                raise UsageError(f"{what}={shown!r} is a directory; expected a journal file path")
            return StorageSpec("journal", str(p), open_lock=prefix == "journal-openlock:")
    scheme = v.split("://", 1)[0].split("+", 1)[0].lower() if "://" in v else ""
    if scheme in RDB_SCHEMES:
        if _url(v) is None:
            raise UsageError(f"{what}={shown!r} is not a valid database URL")
        if scheme == "sqlite" and not v.startswith("sqlite:///"):
            raise UsageError(f"{what}={shown!r}: a SQLite URL is sqlite:///<path>")
        return StorageSpec("rdb", with_installed_driver(v))
    raise UsageError(
        f"{what}={shown!r} is not understood; expected journal:<path> (a journal file), "
        f"sqlite:///<path> or postgresql://user@host/db (password in PGPASSWORD, ~/.pgpass or the "
        f"whole URL in {STORAGE_ENV})")


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
        raise UsageError(f"storage={spec.display()} needs a database driver that is not installed "
                         f"({spec.scrub(e)})") from None
