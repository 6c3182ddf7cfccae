"""One holder at a time, kept alive by a heartbeat: what the cache's lock file and the tracking
server's claim have in common (waiting, the heartbeat thread, giving back, ``with``).

A subclass says how the hold is taken (:meth:`ExclusiveHold.try_acquire`), who holds it and how
to name them (``holder``, ``describe``), what one heartbeat does (``_beat_once``) and how it is
given back (``_give_back``). It lives in ``data/``, the lowest layer, so that both the lock file
(:mod:`cxrstudy.train.lock`) and the claim (:mod:`cxrstudy.tracking.claims`) may build on it.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Callable


class ExclusiveHold:
    """An exclusive hold; ``acquire`` waits, ``release`` gives it back."""

    #: seconds between heartbeats while held
    heartbeat_s: float = 30.0
    #: seconds between attempts while waiting
    poll_s: float = 0.5

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------ what a subclass says
    def try_acquire(self) -> bool:
        """Take the hold if free (breaking a stale one); True when this process now holds it."""
        raise NotImplementedError

    def holder(self) -> dict | None:
        """The holder's record, or None when nobody holds it."""
        raise NotImplementedError

    def describe(self, info: dict | None) -> str:
        """The holder, in words, for a message."""
        raise NotImplementedError

    def _beat_once(self) -> bool:
        """One heartbeat; False when there is nothing left to keep alive."""
        raise NotImplementedError

    def _give_back(self) -> None:
        """Remove the hold if it is still this process's."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ acquire/release
    def acquire(self, *, stop: Callable[[], bool] | None = None, on_wait: Callable[[str], None] | None = None,
                poll_s: float | None = None, stop_every_s: float = 2.0) -> bool:
        """Wait for the hold. True once held; False as soon as ``stop()`` says waiting is pointless
        (e.g. the holder finished the work we wanted). ``on_wait`` gets one message naming the holder."""
        told, last_stop = False, 0.0
        while True:
            if self.try_acquire():
                return True
            if not told and on_wait is not None:
                on_wait(self.describe(self.holder()))
                told = True
            now = time.monotonic()
            if stop is not None and now - last_stop >= stop_every_s:
                last_stop = now
                if stop():
                    return False
            time.sleep(self.poll_s if poll_s is None else poll_s)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.held:
            self._give_back()
        self.held = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def _start_heartbeat(self, name: str) -> None:
        """Mark the hold as this process's and start beating."""
        self.held = True
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, name=name, daemon=True)
        self._thread.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            if not self._beat_once():
                return
