"""Store writes that another process may make at the same moment.

Parallel training workers share one store (a local ``mlflow server`` in front of SQLite, or
PostgreSQL) and write rows with the same key: ``best`` on one registered model, one dataset
input per experiment. MLflow writes such a row with a select followed by an insert, so when two
requests interleave, the later insert breaks the table's unique key and the store answers with
an ``IntegrityError`` (SQLite: "UNIQUE constraint failed", PostgreSQL: "UniqueViolation"),
although the row it wanted now exists. Done again, the same write finds the row and updates it.
"""

from __future__ import annotations

import time
from typing import Callable, TypeVar

from mlflow.exceptions import MlflowException

T = TypeVar("T")

# how the store says an insert lost to a concurrent one: SQLAlchemy's class name and its error-page code
# for IntegrityError, and the two drivers' own words (the server passes the database's message on)
LOST_RACE_MARKERS = ("IntegrityError", "sqlalche.me/e/21/gkpj", "UNIQUE constraint failed", "UniqueViolation")
RACE_TRIES = 5
RACE_WAIT_S = 0.2


def lost_race(e: BaseException) -> bool:
    """Whether ``e`` is the store refusing an insert because a concurrent request made the row first."""
    return isinstance(e, MlflowException) and any(m in str(e) for m in LOST_RACE_MARKERS)


def retry_lost_race(write: Callable[[], T], *, tries: int = RACE_TRIES, wait_s: float = RACE_WAIT_S) -> T:
    """``write()``, done again (up to ``tries`` times in all, after a short, growing pause) while it
    loses a race with another process; any other error, or the last lost race, is raised."""
    for attempt in range(1, tries + 1):
        try:
            return write()
        except MlflowException as e:
            if attempt == tries or not lost_race(e):
                raise
            time.sleep(wait_s * attempt)
    raise AssertionError("unreachable")
