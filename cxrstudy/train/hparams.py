"""Hyperparameters of the training methods: their declaration, parsing and search space.

Each method declares its hyperparameters beside its class (``HPARAMS``: name -> :class:`HParam`,
a default and a search range), as in DomainBed's ``hparams_registry.py``; this module reads them
through the registry: what a method takes, raw parameters checked against it (one clear
:class:`~cxrstudy.errors.UsageError` line for a bad one), and the space a tuner searches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from cxrstudy.errors import UsageError
from cxrstudy.train.registry import get_method, method_names

__all__ = ["HParam", "all_hparam_names", "default_hparams", "parse_hparams", "parse_for", "parse_method_list",
           "search_space", "suggest"]


@dataclass(frozen=True)
class HParam:
    """One hyperparameter: its default and its search range ``[low, high]`` (inclusive)."""

    default: float | int
    low: float | int
    high: float | int
    log: bool = False
    kind: str = "float"  # "float" or "int"
    help: str = ""

    def __post_init__(self):
        if self.kind not in ("float", "int"):
            raise ValueError(f"HParam kind {self.kind!r}; expected 'float' or 'int'")
        if not self.low <= self.default <= self.high:
            raise ValueError(f"HParam default {self.default} outside {self.low}..{self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"HParam on a log scale needs low > 0, got {self.low}")
        if self.kind == "int" and not all(float(v).is_integer() for v in (self.default, self.low, self.high)):
            raise ValueError("an int HParam needs integer default, low and high")

    def expected(self) -> str:
        scale = ", log scale" if self.log else ""
        return f"{'an integer' if self.kind == 'int' else 'a number'} in {self.low:g}..{self.high:g}{scale}"

    def parse(self, name: str, value) -> float | int:
        """``value`` (a string, or already a number) checked against kind and range."""
        if isinstance(value, bool):
            raise UsageError(f"parameter {name}={value!r} is not a number; expected {self.expected()}")
        text = str(value).strip()
        try:
            v = float(text)
        except ValueError:
            raise UsageError(f"parameter {name}={value!r} is not a number; expected {self.expected()}") from None
        if not math.isfinite(v):
            raise UsageError(f"parameter {name}={value!r} is not a finite number; expected {self.expected()}")
        if self.kind == "int":
            if not v.is_integer():
                raise UsageError(f"parameter {name}={value!r} is not an integer; expected {self.expected()}")
            v = int(v)
        if not self.low <= v <= self.high:
            raise UsageError(f"parameter {name}={value!r} is out of range; expected {self.expected()}")
        return v


def all_hparam_names() -> dict[str, str]:
    """Every registered hyperparameter name -> the method it belongs to."""
    return {k: m for m in method_names() for k in get_method(m).HPARAMS}


def default_hparams(name: str) -> dict[str, float | int]:
    return {k: hp.default for k, hp in get_method(name).HPARAMS.items()}


def parse_hparams(method_name: str, raw: dict[str, Any] | None) -> dict[str, float | int]:
    """All hyperparameters of ``method_name``: given ones parsed and range-checked, others default.

    ``raw`` maps names to strings (as MLflow passes them) or numbers; a value of ``None`` or
    ``""`` means "not given". A given hyperparameter of another method, or one no method has,
    is a :class:`UsageError`.
    """
    return parse_for(get_method(method_name), raw)


def parse_for(cls: type, raw: dict[str, Any] | None) -> dict[str, float | int]:
    """:func:`parse_hparams` for a method class (registered or not)."""
    out = {k: hp.default for k, hp in cls.HPARAMS.items()}
    owners = all_hparam_names()
    for key, value in (raw or {}).items():
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        if key in cls.HPARAMS:
            out[key] = cls.HPARAMS[key].parse(key, value)
            continue
        takes = ", ".join(cls.HPARAMS) or "no hyperparameters"
        if key in owners:
            raise UsageError(f"parameter {key}={value!r} belongs to method {owners[key]}, not {cls.name}; "
                             f"method {cls.name} takes: {takes}")
        raise UsageError(f"unknown hyperparameter {key}={value!r}; method {cls.name} takes: {takes}")
    return out


def parse_method_list(value: str, given: dict[str, Any] | None = None) -> list[str]:
    """``"erm,groupdro"`` -> ``["erm", "groupdro"]`` (checked, duplicates dropped). A hyperparameter
    in ``given`` (non-empty values) that belongs to none of the listed methods is a UsageError."""
    methods = []
    for part in str(value).split(","):
        if part.strip() and get_method(part).name not in methods:
            methods.append(get_method(part).name)
    if not methods:
        raise UsageError(f"parameter methods={value!r} is empty; expected some of: {', '.join(method_names())}")
    owners = all_hparam_names()
    for key, v in (given or {}).items():
        if key in owners and owners[key] not in methods and v not in (None, ""):
            raise UsageError(f"parameter {key}={v!r} belongs to method {owners[key]}, which is not in "
                             f"methods={','.join(methods)}")
    return methods


def search_space(method_name: str, only=None) -> dict[str, HParam]:
    """The hyperparameters of ``method_name`` a tuner searches, in their declared order: all of
    them, or those named in ``only`` (each must be one of the method's)."""
    cls = get_method(method_name)
    if only is None:
        return dict(cls.HPARAMS)
    only = set(only)
    unknown = sorted(only - set(cls.HPARAMS))
    if unknown:
        raise UsageError(f"hyperparameters {', '.join(unknown)} are not method {cls.name}'s; "
                         f"it takes: {', '.join(cls.HPARAMS) or 'no hyperparameters'}")
    return {k: hp for k, hp in cls.HPARAMS.items() if k in only}


def suggest(space: dict[str, HParam], trial) -> dict[str, float | int]:
    """Ask an Optuna-like ``trial`` for every hyperparameter of ``space`` (a fixed range is not asked)."""
    out = {}
    for key, hp in space.items():
        if hp.low == hp.high:
            out[key] = hp.default
        elif hp.kind == "int":
            out[key] = int(trial.suggest_int(key, int(hp.low), int(hp.high), log=hp.log))
        else:
            out[key] = float(trial.suggest_float(key, float(hp.low), float(hp.high), log=hp.log))
    return out
