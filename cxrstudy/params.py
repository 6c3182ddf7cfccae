"""Parse and validate entry-point parameters (MLflow passes every ``-P`` value as a string).

Every parser raises :class:`~cxrstudy.errors.UsageError` with one line naming the parameter,
the value and what was expected; entry points turn that into exit code 2 before any work.
"""

from __future__ import annotations

import math

from cxrstudy.errors import UsageError

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f", ""}


def as_int(name: str, value, lo: int | None = None, hi: int | None = None) -> int:
    try:
        v = int(str(value).strip())
    except ValueError:
        raise UsageError(f"parameter {name}={value!r} is not an integer") from None
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        rng = f"{lo if lo is not None else '-inf'}..{hi if hi is not None else 'inf'}"
        raise UsageError(f"parameter {name}={v} is out of range; expected {rng}")
    return v


def as_float(name: str, value, lo: float | None = None, hi: float | None = None, *, gt: float | None = None) -> float:
    """A finite number in ``lo..hi`` (inclusive); ``gt`` is an exclusive lower bound (``lr > 0``).
    ``nan`` and ``inf`` are refused as not finite, whatever the bounds."""
    try:
        v = float(str(value).strip())
    except ValueError:
        raise UsageError(f"parameter {name}={value!r} is not a number") from None
    if not math.isfinite(v):
        raise UsageError(f"parameter {name}={value!r} is not a finite number; expected {_span(lo, hi, gt)}")
    if (lo is not None and v < lo) or (hi is not None and v > hi) or (gt is not None and not v > gt):
        raise UsageError(f"parameter {name}={value!r} is out of range; expected {_span(lo, hi, gt)}")
    return v


def _span(lo, hi, gt) -> str:
    """``0.0..10.0``, ``> 0.0 and <= 10.0``, ``>= 0.0``, ``<= 10.0`` or ``a finite number``."""
    low = f"> {gt}" if gt is not None else (f">= {lo}" if lo is not None else None)
    if low is not None and hi is not None:
        return f"{lo}..{hi}" if gt is None else f"{low} and <= {hi}"
    return low or (f"<= {hi}" if hi is not None else "a finite number")


def as_bool(name: str, value) -> bool:
    v = str(value).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise UsageError(f"parameter {name}={value!r} is not a boolean; expected true or false")


def as_choice(name: str, value, choices) -> str:
    v = str(value).strip().lower()
    if v not in choices:
        raise UsageError(f"parameter {name}={value!r} is not allowed; expected one of: {', '.join(choices)}")
    return v


def as_int_list(name: str, value, lo: int | None = None) -> list[int]:
    parts = [p for p in str(value).split(",") if p.strip()]
    if not parts:
        raise UsageError(f"parameter {name} is empty; expected a comma list of integers")
    out = []
    for p in parts:
        v = as_int(name, p, lo=lo)
        if v not in out:
            out.append(v)
    return out


def as_float_list(name: str, value, lo: float | None = None, hi: float | None = None) -> list[float]:
    """``"0,0.5,1"`` -> ``[0.0, 0.5, 1.0]``: each value checked as by :func:`as_float`, duplicates dropped."""
    parts = [p for p in str(value).split(",") if p.strip()]
    if not parts:
        raise UsageError(f"parameter {name} is empty; expected a comma list of numbers")
    out = []
    for p in parts:
        v = as_float(name, p, lo=lo, hi=hi)
        if v not in out:
            out.append(v)
    return out


def given(value) -> str | None:
    """A parameter a preset fills when blank: only ``""`` (or a missing value) means 'not given'.
    An explicit ``none`` is a value and wins over the preset (``pretrained=none`` on ``preset=paper``)."""
    v = str(value).strip() if value is not None else ""
    return v or None


def optional(value) -> str | None:
    """``""``, ``none`` or ``null`` mean 'not given' (for parameters where none is no value, e.g.
    ``data_root``; use :func:`given` where ``none`` is a legal value that must override a default)."""
    v = str(value).strip() if value is not None else ""
    return None if v.lower() in ("", "none", "null") else v
