"""Claims on the tracking server: one holder at a time per key among every process that shares
the tracking server, whether or not they share a disk (docs/PROTOCOL.md "Run identity and reuse").

The cache's lock file (:mod:`cxrstudy.train.lock`) serialises the processes that share a cache;
a claim serialises those that share only the server: two machines training one configuration,
or two studies computing one comparison. A claim is a registered model named
``cxrstudy-claim-<key>``: creating a registered model is the one atomic test-and-set that every
MLflow backend offers (a second create of one name fails with ``RESOURCE_ALREADY_EXISTS``). Its
tags name the holder (``cxrstudy.claim_holder``: host, pid, a random token, since when) and carry
a heartbeat (``cxrstudy.claim_heartbeat``, epoch seconds) that a background thread refreshes
every :data:`~cxrstudy.train.lock.HEARTBEAT_S` seconds. The holder deletes it when done
(a registered model is deleted outright), so a claim is seen in the registry only while its
work runs, or after its holder died.

Stale rule, as the lock file's: the holder is on this host and its process is gone, or its
heartbeat is older than :data:`~cxrstudy.train.lock.STALE_AFTER_S` seconds
(``CXRSTUDY_LOCK_STALE_S``). A stale claim is broken by renaming it aside, checking that what was
renamed is the claim judged stale (same token), and deleting it; a fresh claim renamed by
mistake is renamed back.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxrstudy.data.exclusive import ExclusiveHold
from cxrstudy.tracking import keys
from cxrstudy.train.lock import HEARTBEAT_S, STALE_AFTER_S, pid_alive

CLAIM_PREFIX = "cxrstudy-claim-"


def claim_key(*parts: str) -> str:
    """A short key for a claim name from any strings (a config hash, an experiment and a comparison key)."""
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:20]


def _code(e: MlflowException) -> str:
    return str(getattr(e, "error_code", ""))


class ServerClaim(ExclusiveHold):
    """An exclusive claim on ``key`` at the tracking server; ``acquire`` waits, ``release`` gives it
    back. ``what`` says in the registry what the claim is for. See the module docstring."""

    heartbeat_s = HEARTBEAT_S
    poll_s = 2.0  # a waiter polls the server: not as often as a file

    def __init__(self, key: str, what: str = "") -> None:
        super().__init__()
        self.name = CLAIM_PREFIX + key
        self.what = what

    # ---------------------------------------------------------------------------- the holder
    def holder(self, name: str | None = None) -> dict | None:
        """The holder's record with its ``heartbeat``, or None when nobody holds the claim."""
        try:
            rm = MlflowClient().get_registered_model(name or self.name)
        except MlflowException as e:
            if _code(e) == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        try:
            info = json.loads(rm.tags.get(keys.CLAIM_HOLDER_TAG, "{}"))
        except ValueError:
            info = {}
        info = info if isinstance(info, dict) else {}
        try:
            info["heartbeat"] = float(rm.tags.get(keys.CLAIM_HEARTBEAT_TAG, "0"))
        except ValueError:
            info["heartbeat"] = 0.0
        return info

    def holder_alive(self, info: dict | None) -> bool:
        if info is None:
            return False
        if info.get("token") == self.token:
            return True
        if info.get("host") == socket.gethostname() and "pid" in info:
            return pid_alive(int(info["pid"]))
        return time.time() - info.get("heartbeat", 0.0) < STALE_AFTER_S

    def describe(self, info: dict | None) -> str:
        if not info or "pid" not in info:
            return "another process"
        return f"pid {info.get('pid')} on {info.get('host')} (since {info.get('since', '?')})"

    # ------------------------------------------------------------------------ acquire/release
    def try_acquire(self) -> bool:
        """Take the claim if free (breaking a stale one); True when this process now holds it."""
        for _ in range(3):
            info = self.holder()  # look first: a waiter polls with reads, not with failing creates
            if info is None:
                if self._create():
                    return True
                continue  # taken between our look and our create: look again
            if info.get("token") == self.token:  # our create succeeded, its answer was lost and retried
                if not self.held:
                    self._held()
                return True
            if self.holder_alive(info):
                return False
            self._break(info)
        return False

    def _give_back(self) -> None:
        try:
            if (self.holder() or {}).get("token") == self.token:
                MlflowClient().delete_registered_model(self.name)
        except MlflowException:
            pass  # gone already, or the server is down: the claim goes stale on its own

    # ------------------------------------------------------------------------------ internals
    def _create(self) -> bool:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "token": self.token,
                  "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            MlflowClient().create_registered_model(
                self.name, tags={keys.CLAIM_HOLDER_TAG: json.dumps(record), keys.CLAIM_HEARTBEAT_TAG: f"{time.time():.0f}"},
                description=f"Transient cxrstudy claim, not a model: {self.what or self.name} is being done by "
                            f"{self.describe(record)}. Deleted when done; one older than "
                            f"{STALE_AFTER_S:.0f} s without a heartbeat is stale.")
        except MlflowException as e:
            if _code(e) == "RESOURCE_ALREADY_EXISTS":
                return False
            raise
        self._held()
        return True

    def _held(self) -> None:
        self._start_heartbeat(f"claim-heartbeat-{self.name}")

    def _beat_once(self) -> bool:
        try:
            MlflowClient().set_registered_model_tag(self.name, keys.CLAIM_HEARTBEAT_TAG, f"{time.time():.0f}")
        except MlflowException:
            pass  # the server is down for a while, or the claim was broken: keep trying
        return True

    def _break(self, judged: dict) -> None:
        """Remove a claim judged stale, never a fresh claim taken meanwhile."""
        client = MlflowClient()
        aside = f"{self.name}-stale-{self.token[:8]}"
        try:
            client.rename_registered_model(self.name, aside)
        except MlflowException:
            return  # someone else broke or released it
        got = self.holder(aside) or {}
        if got.get("token") != judged.get("token"):
            try:  # a claim taken after our judgement: put it back unless a newer one exists
                client.rename_registered_model(aside, self.name)
                return
            except MlflowException:
                pass
        try:
            client.delete_registered_model(aside)
        except MlflowException:
            pass
