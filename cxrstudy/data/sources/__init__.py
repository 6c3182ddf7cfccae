"""Open any hospital's data through one interface (see :class:`base.Source`).

``open_source("cxp", "real", data_root="/data")`` reads ``/data/cxp`` as CheXpert is distributed;
``open_source("nih", "metadata")`` reads the label CSV shipped in torchxrayvision (no images);
``open_source("pad", "synthetic", synthetic=SyntheticConfig(...))`` renders images procedurally.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from cxrstudy.data.sources.base import Source
from cxrstudy.errors import DataError, UsageError
from cxrstudy.hospitals import canonical_hospital

SOURCE_KINDS = ("synthetic", "real", "metadata")

# hospital -> (module in this package, Source subclass) for real datasets on disk
_REAL_SOURCES = {
    "mimic": ("mimic", "MimicSource"),
    "cxp": ("chexpert", "CheXpertSource"),
    "nih": ("nih", "NihSource"),
    "pad": ("padchest", "PadChestSource"),
}


def parse_source_kind(value: str) -> str:
    v = str(value).strip().lower()
    if v not in SOURCE_KINDS:
        raise UsageError(f"unknown source {value!r}; expected one of: {', '.join(SOURCE_KINDS)}")
    return v


def open_source(env: str, kind: str = "synthetic", *, data_root=None, root=None, synthetic=None) -> Source:
    """The source of hospital ``env``.

    real: ``root`` (a per-hospital override) or ``data_root/<env>``, laid out as distributed.
    metadata: torchxrayvision's shipped label CSVs (cxp, nih, pad; mimic is not shipped).
    synthetic: procedurally rendered hospitals; ``synthetic`` is a ``SyntheticConfig`` or None.
    """
    env = canonical_hospital(env)
    kind = parse_source_kind(kind)
    if kind == "synthetic":
        from cxrstudy.data.synthetic import SyntheticConfig, SyntheticSource

        return SyntheticSource(env, synthetic or SyntheticConfig())
    if kind == "metadata":
        from cxrstudy.data.sources.metadata import MetadataSource

        return MetadataSource(env)
    if root is None:
        if data_root is None:
            raise UsageError("source=real needs data_root (a folder with mimic/, cxp/, nih/, pad/)")
        root = Path(data_root) / env
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: folder for hospital {env!r} not found (expected the dataset as distributed)")
    module_name, class_name = _REAL_SOURCES[env]
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, class_name)(root)
