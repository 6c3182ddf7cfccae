"""What a registered cxrstudy model is, on disk and as an MLflow pyfunc model.

A logged model holds no code and no pickle: ``artifacts/weights.pt`` is the classifier's state
dict (read with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers) and ``artifacts/config.json`` says how to rebuild and use it (backbone, image size,
threshold, label). The code that turns them into a model is this module, from the installed
package: the models-from-code file ``cxrstudy/tracking/model_code.py`` only imports
:class:`ClassifierModel` from here and hands it to ``mlflow.models.set_model``.

``predict`` takes chest X-rays in the forms an HTTP client can send, and never opens a file:

- **encoded images**: PNG or JPEG files' bytes, base64-encoded as strings (a ``data:image/...;base64,``
  prefix is allowed; in Python, ``bytes`` too). They are decoded exactly as training decoded image
  files (16-bit PNGs scaled by their own range, colour converted to grayscale). A string is never
  read as a file path: a served model reads no file a client names. In Python, where the caller
  has the files, :func:`read_image_files` turns paths into the bytes ``predict`` takes;
- **pixel arrays**: one image ``(H, W)`` or ``(H, W, C)`` with C = 1, 3 or 4 (grayscale, RGB, RGBA;
  colour is converted to grayscale with PIL's ITU-R 601-2 luma, as for colour image files, alpha
  ignored), or a batch ``(N, H, W)`` / ``(N, H, W, C)``, or a list of images of different sizes. A
  3-D array whose last axis is 1, 3 or 4 is *one* image, not a batch of 1-, 3- or 4-pixel-wide
  images. Pixels are on the uint8 scale: uint8, integers 0..255, or floats in 0..255 (rounded to
  the nearest integer, so they give exactly what uint8 pixels of those values give); integer
  images with values up to 65535 are scaled by their own range, as 16-bit PNG files are. Refused,
  each in one line naming the input: negative or larger values, NaN or infinite pixels, a float
  image whose values all lie within [0, 1] with fractions (scaled to [0, 1]: multiply by 255),
  an image without pixels, and one of more than ``MAX_PIXELS`` pixels (8192 x 8192; also what
  stops a decompression bomb before it is decoded);
- a one-column DataFrame of either (MLflow's ``dataframe_split``/``dataframe_records``).

Every image is resized to the model's image size and scaled by 1/255, and ``predict`` returns a
DataFrame with ``probability`` (P(label)) and ``prediction`` (``probability >= threshold``).
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
import warnings
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from PIL import Image

from cxrstudy.data.images import decode_image, to_uint8_by_range
from cxrstudy.errors import DataError
from cxrstudy.train.models import BACKBONES, BinaryClassifier

MODEL_FORMAT = 1  # bump when weights.pt / config.json change meaning
WEIGHTS_KEY, CONFIG_KEY = "weights", "config"
WEIGHTS_FILE, CONFIG_FILE = "weights.pt", "config.json"
OUTPUT_COLUMNS = ("probability", "prediction")
BATCH = 64
#: the most pixels one input image may have (8192 x 8192), encoded or as an array
MAX_PIXELS = 8192 * 8192
#: the encoded image formats ``predict`` decodes (PIL tries no other)
IMAGE_FORMATS = ("PNG", "JPEG")
CHANNELS = (1, 3, 4)  # grayscale, RGB, RGBA: the sizes a last axis may have to be read as channels
_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)


def model_config(*, backbone: str, image_size: int, threshold: float, label: str) -> dict:
    return {"format": MODEL_FORMAT, "backbone": backbone, "image_size": int(image_size),
            "threshold": float(threshold), "label": label}


def read_config(path: Path, what: str) -> dict:
    """``config.json`` of a logged model, checked; one clear error naming ``what`` otherwise."""
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{what}: cannot read its {CONFIG_FILE} ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict) or cfg.get("format") != MODEL_FORMAT or cfg.get("backbone") not in BACKBONES:
        raise DataError(f"{what}: {CONFIG_FILE} is not a cxrstudy model config (format {MODEL_FORMAT})")
    try:
        cfg["image_size"], cfg["threshold"] = int(cfg["image_size"]), float(cfg["threshold"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"{what}: {CONFIG_FILE} lacks a valid image_size or threshold") from None
    return cfg


def load_classifier(weights: Path, config: dict, what: str) -> BinaryClassifier:
    """The classifier from a state dict file, never unpickling code (``weights_only=True``)."""
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with code in it fails here, before anything runs
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"{what}: refusing to load {Path(weights).name}: it is not a plain state dict "
                        f"({type(e).__name__}: {first[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"{what}: {Path(weights).name} is not a state dict (name -> tensor)")
    model = BinaryClassifier(config["backbone"])
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise DataError(f"{what}: {Path(weights).name} does not fit a {config['backbone']} classifier "
                        f"({str(e).splitlines()[0]})") from None
    return model.eval()


def read_image_files(paths) -> list[bytes]:
    """The bytes of image files, for ``predict`` in Python (a served model reads no files)."""
    out = []
    for p in [paths] if isinstance(paths, (str, Path)) else paths:
        try:
            out.append(Path(p).read_bytes())
        except OSError as e:
            raise DataError(f"cannot read image file {p}: {e.strerror or e}") from None
    return out


def _too_big(i: int, h: int, w: int) -> DataError:
    return DataError(f"input {i}: an image of {w} x {h} pixels is above the limit of {MAX_PIXELS:,} pixels "
                     f"({int(MAX_PIXELS ** 0.5)} x {int(MAX_PIXELS ** 0.5)}); downscale it first")


def _encoded(i: int, item) -> bytes:
    """The bytes of an encoded image given as base64 text (or bytes, in Python)."""
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    text = re.sub(r"\s+", "", _DATA_URL.sub("", str(item).strip()))
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _not_an_image(i) from None


def _not_an_image(i: int) -> DataError:
    # the same words whatever the string was: nothing is ever looked up on the server's disk
    return DataError(f"input {i} is not a base64-encoded PNG or JPEG image; a string input must be one "
                     "(a served model reads no files: send an image's bytes, base64-encoded, or its pixels)")


def _decode(i: int, data: bytes, size: int) -> np.ndarray:
    """An encoded PNG/JPEG as training decodes image files; refused above ``MAX_PIXELS``."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as im:
                w, h = im.size
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DataError(f"input {i}: an image of more than {MAX_PIXELS:,} pixels "
                            f"({int(MAX_PIXELS ** 0.5)} x {int(MAX_PIXELS ** 0.5)}); downscale it first") from None
        except Exception:  # not an image PIL reads as PNG or JPEG
            raise _not_an_image(i) from None
        if w * h > MAX_PIXELS:
            raise _too_big(i, h, w)
        if w * h == 0:
            raise DataError(f"input {i}: the image has no pixels ({w} x {h})")
        try:
            return decode_image(io.BytesIO(data), size, formats=IMAGE_FORMATS)
        except Exception as e:  # truncated or corrupt image data
            raise DataError(f"input {i}: the {im.format} image cannot be decoded ({type(e).__name__})") from None


def _to_uint8(i: int, a: np.ndarray) -> np.ndarray:
    """Pixels on the uint8 scale as uint8 (see the module docstring for what is refused)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind not in "iuf":
        raise DataError(f"input {i}: expected pixel values (numbers), got {a.dtype}")
    if a.dtype.kind == "f":
        if not np.isfinite(a).all():
            raise DataError(f"input {i}: the image has NaN or infinite pixels")
        lo, hi = float(a.min()), float(a.max())
        if lo < 0 or hi > 255:
            raise DataError(f"input {i}: pixel values {lo:g}..{hi:g} are outside 0..255 (pixels are on the uint8 "
                            "scale)")
        if hi <= 1 and not np.array_equal(a, np.round(a)):
            raise DataError(f"input {i}: pixel values lie within [0, 1]; pixels are on the uint8 scale (0..255): "
                            "multiply an image scaled to [0, 1] by 255")
        return np.rint(a).astype(np.uint8)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0 or hi > 65535:
        raise DataError(f"input {i}: pixel values {lo}..{hi} are outside 0..255 (or 0..65535 for a 16-bit image)")
    if hi <= 255:
        return a.astype(np.uint8)
    return to_uint8_by_range(a)  # a 16-bit image: by its own range, as 16-bit PNG files are read


def _pixels(i: int, img, size: int) -> np.ndarray:
    """One pixel array as a ``(size, size)`` uint8 grayscale image."""
    try:
        a = np.asarray(img)
    except ValueError:  # ragged nested lists
        raise DataError(f"input {i}: the pixel rows have different lengths") from None
    colour = a.ndim == 3 and a.shape[-1] in CHANNELS
    if a.ndim != 2 and not colour:
        raise DataError(f"input {i}: expected one image as (H, W) or (H, W, C) with C = 1, 3 or 4, "
                        f"got an array of shape {a.shape}")
    h, w = a.shape[:2]
    if h * w == 0:
        raise DataError(f"input {i}: the image has no pixels (shape {a.shape})")
    if h * w > MAX_PIXELS:
        raise _too_big(i, h, w)
    a = _to_uint8(i, a)
    if colour:  # as PIL converts colour image files: ITU-R 601-2 luma, alpha ignored
        c = a.shape[-1]
        a = a[..., 0] if c == 1 else np.asarray(Image.fromarray(np.ascontiguousarray(a), mode="RGB" if c == 3 else "RGBA")
                                                .convert("L"))
    if a.shape != (size, size):
        a = np.asarray(Image.fromarray(np.ascontiguousarray(a), mode="L").resize((size, size), Image.BILINEAR,
                                                                             reducing_gap=None))
    return a


def _one_image(i: int, img, size: int) -> np.ndarray:
    if isinstance(img, Path):
        raise DataError(f"input {i} is a file path; predict reads no files: pass the files' bytes "
                        "(cxrstudy.tracking.pyfunc_model.read_image_files) or their pixels")
    if isinstance(img, (str, bytes, bytearray, np.str_, np.bytes_)):
        return _decode(i, _encoded(i, img), size)
    return _pixels(i, img, size)


def as_images(model_input) -> list:
    """The images of a ``predict`` input, each encoded (str/bytes) or a pixel array."""
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] != 1:
            raise DataError("a DataFrame input must have one column of images (base64-encoded PNG/JPEG or pixels)")
        return model_input.iloc[:, 0].tolist()
    if isinstance(model_input, (str, bytes, bytearray, Path)):
        return [model_input]
    if isinstance(model_input, np.ndarray):
        if model_input.dtype.kind in "US":  # strings, as a JSON request delivers them
            return [x.decode("ascii", "replace") if isinstance(x, bytes) else str(x) for x in model_input.ravel()]
        if model_input.dtype == object:
            return list(model_input.ravel())
        if model_input.ndim == 2 or (model_input.ndim == 3 and model_input.shape[-1] in CHANNELS):
            return [model_input]  # one image
        if model_input.ndim in (3, 4):
            return list(model_input)  # a batch
        raise DataError(f"expected images as (N, H, W) or (N, H, W, C) pixels, got an array of shape "
                        f"{model_input.shape}")
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    raise DataError(f"expected images as base64-encoded PNG/JPEG strings or pixel arrays, "
                    f"got {type(model_input).__name__}")


def preprocess(model_input, size: int) -> torch.Tensor:
    """``(N, 1, size, size)`` floats in [0, 1], exactly as the model was trained on them."""
    images = [_one_image(i, img, size) for i, img in enumerate(as_images(model_input))]
    if not images:
        return torch.zeros((0, 1, size, size))
    return torch.from_numpy(np.stack(images)).unsqueeze(1).float().div_(255.0)


@torch.no_grad()
def predict_frame(model: torch.nn.Module, model_input, image_size: int, threshold: float) -> pd.DataFrame:
    x = preprocess(model_input, image_size)
    probs = [torch.softmax(model(x[i:i + BATCH]).float(), 1)[:, 1] for i in range(0, len(x), BATCH)]
    p = torch.cat(probs).numpy().astype(np.float64) if probs else np.zeros(0)
    return pd.DataFrame({"probability": p, "prediction": (p >= threshold).astype(np.int64)})


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """The pyfunc face of a registered cxrstudy model (see the module docstring)."""

    def load_context(self, context):
        what = "cxrstudy model"
        self.config = read_config(Path(context.artifacts[CONFIG_KEY]), what)
        self.model = load_classifier(Path(context.artifacts[WEIGHTS_KEY]), self.config, what)

    # the hint (np.ndarray, one of the hints MLflow draws no schema from) only quiets MLflow's
    # "add type hints" warning: strings, lists and DataFrames are accepted too (see as_images)
    def predict(self, context, model_input: np.ndarray, params=None):
        try:
            return predict_frame(self.model, model_input, self.config["image_size"], self.config["threshold"])
        except DataError as e:  # MLflow's scoring server answers an MlflowException with its message (400)
            raise MlflowException(str(e), error_code=INVALID_PARAMETER_VALUE) from None
