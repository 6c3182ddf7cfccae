"""Shared plumbing for the thin scripts in ``entrypoints/``.

Each script declares its parameters once (name -> default, as strings, like MLproject); this
module turns them into ``--name value`` options and runs the script's body so that a
:class:`CxrStudyError` prints one clear line and exits with its code (2 for bad parameters,
1 for bad data or an unreachable service) instead of a traceback.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from cxrstudy.errors import CxrStudyError


def parse(params: dict[str, str], argv=None, prog: str | None = None, doc: str | None = None) -> dict[str, str]:
    ap = argparse.ArgumentParser(prog=prog, description=doc)
    for name, default in params.items():
        ap.add_argument(f"--{name}", default=default, help=f"(default: {default!r})")
    ns, unknown = ap.parse_known_args(_attach_values(params, sys.argv[1:] if argv is None else list(argv)))
    if unknown:
        ap.exit(2, f"error: unknown parameter(s) {' '.join(unknown)}; expected: {', '.join(params)}\n")
    return vars(ns)


def _attach_values(params: dict[str, str], argv: list[str]) -> list[str]:
    """``--lr -1e-3`` -> ``--lr=-1e-3`` for every declared parameter: the token after ``--name`` is its
    value, whatever it looks like. argparse would read a value that starts with ``-`` (``-1e-3``,
    ``-inf``, which ``mlflow run -P lr=-1e-3`` passes as two tokens) as an option and stop with
    "expected one argument"; attached, it reaches the parameter's own check and its one-line message."""
    out, i = [], 0
    while i < len(argv):
        tok = argv[i]
        if tok.startswith("--") and tok[2:] in params and i + 1 < len(argv):
            out.append(f"{tok}={argv[i + 1]}")
            i += 2
        else:
            out.append(tok)
            i += 1
    return out


def run(body: Callable[[], object]) -> None:
    """Run ``body``; map cxrstudy errors to one line on stderr and an exit code."""
    try:
        body()
    except CxrStudyError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        end_active_run()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("interrupted: the run is marked KILLED; run the same command again to resume", file=sys.stderr)
        end_active_run("KILLED")
        sys.exit(130)


def end_active_run(status: str = "FAILED") -> None:
    """Never leave a run that did not finish marked as running or FINISHED."""
    try:
        import mlflow

        while mlflow.active_run() is not None:
            mlflow.end_run(status=status)
    except Exception:
        pass
