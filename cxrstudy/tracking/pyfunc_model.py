"""What a registered cxrstudy model is, on disk and as an MLflow pyfunc model.

A logged model holds no code and no pickle: ``artifacts/weights.pt`` is the classifier's state
dict (read with ``torch.load(weights_only=True)``, which refuses anything but tensors and plain
containers) and ``artifacts/config.json`` says how to rebuild and use it (backbone, image size,
threshold, label). The code that turns them into a model is this module, from the installed
package: the models-from-code file ``cxrstudy/tracking/model_code.py`` only imports
:class:`ClassifierModel` from here and hands it to ``mlflow.models.set_model``.

``predict`` takes raw grayscale images, as a uint8 array ``(N, H, W)`` of any size (or a list
of 2-D arrays of different sizes), or as image file paths, applies the model's own
preprocessing (resize to its image size, scale by 1/255) and returns a DataFrame with
``probability`` (P(label)) and ``prediction`` (``probability >= threshold``).
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxrstudy.data.images import decode_image, to_uint8_by_range
from cxrstudy.errors import DataError
from cxrstudy.train.models import BACKBONES, BinaryClassifier

MODEL_FORMAT = 1  # bump when weights.pt / config.json change meaning
WEIGHTS_KEY, CONFIG_KEY = "weights", "config"
WEIGHTS_FILE, CONFIG_FILE = "weights.pt", "config.json"
OUTPUT_COLUMNS = ("probability", "prediction")
BATCH = 64


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


def _one_image(img, size: int) -> np.ndarray:
    if isinstance(img, (str, Path)):
        try:
            return decode_image(str(img), size)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot read image {img}: {e}") from None
    a = np.asarray(img)
    if a.ndim != 2:
        raise DataError(f"expected a 2-D grayscale image, got an array of shape {a.shape}")
    if a.dtype != np.uint8:
        if np.issubdtype(a.dtype, np.integer) and a.size and 0 <= a.min() and a.max() <= 255:
            a = a.astype(np.uint8)  # JSON (serving) delivers integers, not uint8
        elif np.issubdtype(a.dtype, np.number) and a.size:
            a = to_uint8_by_range(a)
        else:
            raise DataError(f"expected uint8 pixels, got dtype {a.dtype}")
    if a.shape != (size, size):
        a = np.asarray(Image.fromarray(a, mode="L").resize((size, size), Image.BILINEAR, reducing_gap=None))
    return a


def as_images(model_input) -> list:
    """The images in whatever form ``predict`` accepts, as a list of paths or 2-D arrays."""
    if isinstance(model_input, pd.DataFrame):
        if model_input.shape[1] != 1:
            raise DataError("a DataFrame input must have one column of image paths")
        model_input = model_input.iloc[:, 0].tolist()
    if isinstance(model_input, (str, Path)):
        return [model_input]
    if isinstance(model_input, np.ndarray):
        if model_input.dtype.kind in "US":
            return [str(p) for p in model_input.ravel()]
        if model_input.dtype == object:
            return list(model_input)
        if model_input.ndim == 2:
            return [model_input]
        if model_input.ndim != 3:
            raise DataError(f"expected images as an (N, H, W) array, got shape {model_input.shape}")
        return list(model_input)
    if isinstance(model_input, (list, tuple)):
        return list(model_input)
    raise DataError(f"expected an (N, H, W) uint8 array or a list of image paths, got {type(model_input).__name__}")


def preprocess(model_input, size: int) -> torch.Tensor:
    """``(N, 1, size, size)`` floats in [0, 1], exactly as the model was trained on them."""
    images = [_one_image(i, size) for i in as_images(model_input)]
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
    # "add type hints" warning: lists of paths and DataFrames are accepted too (see as_images)
    def predict(self, context, model_input: np.ndarray, params=None):
        return predict_frame(self.model, model_input, self.config["image_size"], self.config["threshold"])
