"""The four hospitals (environments) and their parsing."""

from __future__ import annotations

from cxrstudy.errors import UsageError

#: Short names, in the protocol's order.
HOSPITALS = ("mimic", "cxp", "nih", "pad")

DATASET_NAMES = {
    "mimic": "MIMIC-CXR-JPG 2.0.0",
    "cxp": "CheXpert v1.0",
    "nih": "NIH ChestX-ray14",
    "pad": "PadChest",
}


def canonical_hospital(name: str) -> str:
    key = str(name).strip().lower()
    if key not in HOSPITALS:
        raise UsageError(
            f"unknown hospital {name!r}; expected one of: {', '.join(HOSPITALS)}"
        )
    return key


def parse_envs(value: str, *, allow_empty: bool = False) -> list[str]:
    """``"CXP, nih"`` -> ``["cxp", "nih"]`` (order kept, duplicates dropped); ``all`` = the four."""
    parts = [p for p in str(value).split(",") if p.strip()]
    if len(parts) == 1 and parts[0].strip().lower() == "all":
        return list(HOSPITALS)
    if not parts and not allow_empty:
        raise UsageError(f"no hospital given; expected one or more of: {', '.join(HOSPITALS)}")
    out: list[str] = []
    for p in parts:
        h = canonical_hospital(p)
        if h not in out:
            out.append(h)
    return out


def parse_env_pairs(value: str, who: str) -> list[str]:
    """:func:`parse_envs` for what compares hospitals (``who``: "the study", "the probe"...):
    one line naming the parameter when it names fewer than two."""
    envs = parse_envs(value)
    if len(envs) < 2:
        raise UsageError(f"parameter envs={value!r} names one hospital; {who} needs at least two")
    return envs
