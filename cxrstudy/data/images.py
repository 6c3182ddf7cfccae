"""Decode one radiograph file to a square uint8 grayscale array, fast.

JPEGs are decoded with PIL's draft mode (the decoder itself downscales by 1/2, 1/4 or 1/8),
so a 2048-px JPEG destined for 224 px never decodes at full size. 16-bit PNGs are scaled to
8 bits by the image's own range (min..max), never by truncation (docs/PROTOCOL.md).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def to_uint8_by_range(arr: np.ndarray) -> np.ndarray:
    """Scale an integer or float image to 0..255 using its own min and max."""
    a = arr.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.clip((a - lo) * (255.0 / (hi - lo)) + 0.5, 0, 255).astype(np.uint8)


def decode_image(path, size: int, formats: tuple | None = None) -> np.ndarray:
    """Read ``path`` (or a binary file object) and return a ``(size, size)`` uint8 array (aspect
    ratio not kept, as in the paper); ``formats`` limits the image formats PIL may try.

    Raises ``OSError``/``ValueError`` (from PIL) on missing, truncated or corrupt files.
    """
    with Image.open(path, formats=formats) as im:
        if im.format == "JPEG":
            im.draft("L", (size, size))
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = to_uint8_by_range(np.asarray(im))
            im8 = Image.fromarray(arr, mode="L")
        else:
            im8 = im.convert("L")
        im8.load()
        if im8.size != (size, size):
            im8 = im8.resize((size, size), Image.BILINEAR, reducing_gap=None)
        out = np.asarray(im8, dtype=np.uint8)
    if out.shape != (size, size):
        raise ValueError(f"{path}: decoded to shape {out.shape}, expected {(size, size)}")
    return out
