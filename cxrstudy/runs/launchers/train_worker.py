"""A persistent training worker of the local launcher: one process that trains cell after cell.

Started as ``python -m cxrstudy.runs.launchers.train_worker`` by :mod:`cxrstudy.runs.launchers.local`,
it pays Python's, PyTorch's and MLflow's start-up once (about 3.5 s of a core) instead of once per
model. It reads one cell per line on stdin (JSON: the ``train`` entry point's parameters and the
cell's log file), runs the entry point's body (:func:`cxrstudy.runs.train.train_from_params`) with
its output in that log, and answers each cell on one line of its stdout: the exit code a
``python entrypoints/train.py`` process would have exited with (0, 1 or 2), then ``next`` (ready for
the next cell) or ``exit`` (the worker ends). Each training
sets its own seeds and threads (:func:`cxrstudy.train.device.reproducible`), so a model is the same
trained here, alone or in ``main`` with any number of workers.

Interrupted (SIGINT), the cell's run ends KILLED and the worker exits 130. An error that is not one
of ours (a bug) ends the cell's run FAILED, is answered 1, and ends the worker: the launcher starts a
fresh one for the next cell. End of input: the worker exits 0.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from contextlib import contextmanager

from cxrstudy.runs import cli
from cxrstudy.runs.train import train_from_params

#: what the worker answers for a cell whose error is not a CxrStudyError (and then exits)
CRASHED = 1
INTERRUPTED = 130
#: the second word of an answer: the worker waits for the next cell, or ends
NEXT, EXIT = "next", "exit"


@contextmanager
def output_to(path: str):
    """Send this process's stdout and stderr (file descriptors 1 and 2, so that C code and child
    processes follow) to the file ``path`` for the block, then back to the worker's own stderr."""
    sys.stdout.flush()
    sys.stderr.flush()
    with open(path, "w") as fh:
        saved = os.dup(2)
        os.dup2(fh.fileno(), 1)
        os.dup2(fh.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved, 1)
            os.dup2(saved, 2)
            os.close(saved)


def train_cell(params: dict, log: str) -> tuple[int, bool]:
    """Train one cell with its output in ``log``: ``(exit code, whether the worker may go on)``."""
    with output_to(log):
        try:
            cli.run(lambda: train_from_params(params))
            return 0, True
        except SystemExit as e:  # cli.run's exit: a CxrStudyError (1, 2) or an interrupt (130)
            code = e.code if isinstance(e.code, int) else 1
            return code, code != INTERRUPTED
        except Exception:  # a bug: its traceback in the log, the run FAILED, and a fresh worker next
            traceback.print_exc()
            cli.end_active_run("FAILED")
            return CRASHED, False


def main() -> int:
    answers = os.fdopen(os.dup(1), "w", buffering=1)  # the launcher reads the exit codes here
    os.dup2(2, 1)  # and nothing else: stray output between cells goes to the worker's stderr
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            cell = json.loads(line)
            code, go_on = train_cell(cell["params"], cell["log"])
            answers.write(f"{code} {NEXT if go_on else EXIT}\n")
            if not go_on:
                return code
    except KeyboardInterrupt:  # interrupted between cells
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
