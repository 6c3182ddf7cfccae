"""The registry of training methods: each is a class registered under its lower-case name.

In the spirit of timm's ``register_model``: ``@register`` on a :class:`~cxrstudy.train.methods.Method`
subclass makes it known to every parameter, the study grid, the search space and the docs' table.
The built-in methods register when :mod:`cxrstudy.train.methods` is imported, which is why callers
import these functions from there (it re-exports them); this module holds only the table itself.
"""

from __future__ import annotations

from cxrstudy.errors import UsageError

__all__ = ["METHODS", "DEFAULT_METHOD", "register", "method_names", "get_method", "method_suffix"]

#: name -> Method subclass, in registration order
METHODS: dict[str, type] = {}

#: the paper's method, plain cross-entropy: the default, and the one whose names carry no method part
DEFAULT_METHOD = "erm"


def register(cls):
    """Class decorator: add a method class to ``METHODS`` under ``cls.name``; every key of its
    ``HPARAMS`` must start with ``<name>_``."""
    name = cls.name
    if not name or name != name.lower() or not name.isidentifier():
        raise ValueError(f"method name {name!r} must be a lower-case identifier")
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(f"method {name!r} is already registered")
    for key in cls.HPARAMS:
        if not key.startswith(name + "_"):
            raise ValueError(f"hyperparameter {key!r} of method {name!r} must start with {name + '_'!r}")
    METHODS[name] = cls
    return cls


def method_names() -> list[str]:
    return list(METHODS)


def get_method(name: str) -> type:
    """The class registered as ``name`` (case and surrounding spaces ignored)."""
    key = str(name).strip().lower()
    if key not in METHODS:
        raise UsageError(f"unknown method {name!r}; expected one of: {', '.join(METHODS)}")
    return METHODS[key]


def method_suffix(method: str, sep: str = "-") -> str:
    """The part a method adds to a name: ``""`` for ERM, which keeps the names it had before
    methods existed (registered models, run names, comparison keys, analysis metrics), else
    ``sep + method`` (``method_suffix("groupdro") == "-groupdro"``, ``method_suffix("jtt", "/") == "/jtt"``)."""
    return "" if method == DEFAULT_METHOD else f"{sep}{method}"
