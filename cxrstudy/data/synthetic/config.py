"""The parameters of the synthetic hospitals."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from cxrstudy.errors import UsageError


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


#: The shortcut strength of the synthetic default (one definition: the config's default and the
#: strength a dose-response study reads its headline at).
DEFAULT_SHORTCUT_STRENGTH = 1.0


def headline_strength(strengths) -> float | None:
    """The strength whose comparisons make a dose-response study's headline: the default when it was
    run, else the largest (None without strengths)."""
    strengths = sorted(float(v) for v in strengths)
    if not strengths:
        return None
    return DEFAULT_SHORTCUT_STRENGTH if DEFAULT_SHORTCUT_STRENGTH in strengths else strengths[-1]


@dataclass(frozen=True)
class SyntheticConfig:
    """What determines the synthetic hospitals' tables and pixels.

    n_patients: patients per hospital (each has 1-4 frontal images).
    shortcut_strength: how readable the hospital is from the image (>= 0). 0: all four
        hospitals share one acquisition distribution; 1 (default): each hospital has its own
        intensity curve, noise, sharpness, collimation border and burned-in marker, easier to
        read than the disease signs, as with real scanners; values in between interpolate each
        site's parameters toward the common mean; above 1 exaggerates them.
    seed: seeds the tables and every image.
    sign_strength: visibility of the disease signs (>= 0; 0 = labels leave no trace in the
        image, 1 = default difficulty, larger = easier).
    """

    n_patients: int = 5000  # every test group of the default grid then holds >= 100 images (README)
    shortcut_strength: float = DEFAULT_SHORTCUT_STRENGTH
    seed: int = 0
    sign_strength: float = 1.0

    def __post_init__(self):
        if not _is_int(self.n_patients) or not (1 <= self.n_patients <= 10_000_000):
            raise UsageError(
                f"synthetic n_patients {self.n_patients!r} is invalid; expected an integer 1..10000000"
            )
        if not _is_int(self.seed) or self.seed < 0:
            raise UsageError(f"synthetic seed {self.seed!r} is invalid; expected an integer >= 0")
        for name, hi in (("shortcut_strength", 10.0), ("sign_strength", 10.0)):
            v = getattr(self, name)
            if not _is_number(v) or not math.isfinite(v) or not (0.0 <= v <= hi):
                raise UsageError(f"synthetic {name} {v!r} is invalid; expected a number from 0 to {hi:g}")
            object.__setattr__(self, name, float(v))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SyntheticConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise UsageError(f"unknown synthetic setting(s) {unknown}; expected some of {sorted(known)}")
        return cls(**d)
