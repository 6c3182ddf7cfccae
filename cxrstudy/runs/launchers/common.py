"""What both launchers share: the repository their workers run in, the HTTP retry settings of a
worker that talks to a tracking server, the cells still to train, and a cell's short name."""

from __future__ import annotations

import os
from pathlib import Path

from cxrstudy.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[3]

#: HTTP retry settings for workers talking to a tracking server (a user's own values win):
#: 10 retries with exponential backoff (capped at 120 s each) ride out a server restart of
#: several minutes; retried requests are safe because runs are created idempotently
#: (see :mod:`cxrstudy.runs.launchers.job`).
HTTP_RETRY_ENV = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "10",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "1.0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "120",
}


def http_retry_env(environ=None) -> dict:
    environ = os.environ if environ is None else environ
    return {k: environ.get(k, v) for k, v in HTTP_RETRY_ENV.items()}


def pending(cells: list[TrainConfig]) -> list[TrainConfig]:
    """The cells without a FINISHED run (a study resumes where it stopped): one search for the
    finished ones, then :func:`~cxrstudy.runs.train.find_trained`'s fuller look (a registered model
    whose run did not finish, a run logged before the data fingerprint) for the others only."""
    from cxrstudy.runs.train import find_trained, finished_hashes

    done = finished_hashes(c.content_hash() for c in cells)
    return [c for c in cells if c.content_hash() not in done and find_trained(c) is None]


def cell_name(cfg: TrainConfig) -> str:
    """How the launchers name a cell in messages: ``<envs>/<label>/<balance>/s<seed>``."""
    return f"{'+'.join(cfg.envs)}/{cfg.label}/{cfg.balance}/s{cfg.seed}"
