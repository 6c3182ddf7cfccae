"""What a registered model's ``predict`` accepts (cxrstudy/tracking/pyfunc_model.py), on a tiny
untrained network: encoded images and pixel arrays give the same answers; colour, float and
16-bit pixels follow one documented conversion; paths, NaN, empty, [0, 1]-scaled and oversized
images are refused in one line. (Over HTTP: tests/test_registry_models.py.)"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrstudy.errors import DataError
from cxrstudy.tracking.pyfunc_model import MAX_PIXELS, predict_frame, read_image_files
from cxrstudy.train.models import BinaryClassifier

SIZE = 32


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BinaryClassifier("smallcnn").eval()


def probs(model, x) -> np.ndarray:
    return predict_frame(model, x, SIZE, 0.5)["probability"].to_numpy()


def encoded(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_claiming(width: int, height: int) -> bytes:
    """A valid tiny PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's shape)."""
    data = encoded(np.zeros((1, 1), np.uint8))
    ihdr = data.index(b"IHDR")
    fields = struct.pack(">II", width, height) + data[ihdr + 12:ihdr + 17]
    chunk = b"IHDR" + fields
    return data[:ihdr] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[ihdr + 21:]


def one_line_error(model, x) -> str:
    with pytest.raises(DataError) as e:
        predict_frame(model, x, SIZE, 0.5)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("input ")
    return msg


def test_encoded_images_and_pixels_give_the_same_probabilities(model, tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (3, 50, 70), dtype=np.uint8)
    ref = probs(model, x)
    assert len(ref) == 3
    pngs = [encoded(a) for a in x]
    np.testing.assert_array_equal(probs(model, [b64(p) for p in pngs]), ref)  # what HTTP clients send
    np.testing.assert_array_equal(probs(model, np.array([b64(p) for p in pngs])), ref)  # as MLflow parses JSON
    np.testing.assert_array_equal(probs(model, [f"data:image/png;base64,{b64(p)}" for p in pngs]), ref)
    np.testing.assert_array_equal(probs(model, pngs), ref)  # bytes, in Python
    np.testing.assert_array_equal(probs(model, pd.DataFrame({"image": [b64(p) for p in pngs]})), ref)
    # files are read by the caller, in process
    paths = []
    for i, p in enumerate(pngs):
        paths.append(tmp_path / f"x{i}.png")
        paths[-1].write_bytes(p)
    np.testing.assert_array_equal(probs(model, read_image_files(paths)), ref)
    # a JPEG decodes as training decodes JPEG files
    jpeg = encoded(x[0], "JPEG")
    (tmp_path / "x.jpg").write_bytes(jpeg)
    from cxrstudy.data.images import decode_image

    expected = probs(model, [decode_image(str(tmp_path / "x.jpg"), SIZE)])
    np.testing.assert_allclose(probs(model, [b64(jpeg)]), expected, rtol=1e-6)


def test_a_string_is_never_read_as_a_path_and_the_error_does_not_tell_what_exists(model, tmp_path):
    real = tmp_path / "real.png"
    real.write_bytes(encoded(np.full((40, 40), 200, np.uint8)))
    messages = {one_line_error(model, [p]) for p in
                (str(real), "/etc/passwd", "/etc/shadow1", str(tmp_path), "/no/such/file.png", "../../etc/hosts")}
    assert len(messages) == 1, messages  # the same words for an image file, a secret, a folder, nothing
    assert "not a base64-encoded PNG or JPEG image" in messages.pop()
    assert "reads no files" in one_line_error(model, [real])  # a Path object: refused too


def test_one_rgb_image_is_one_grayscale_image(model):
    """(H, W, 3) is one colour image (not H images 3 pixels wide), converted as colour files are."""
    rgb = np.random.default_rng(1).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    p = probs(model, rgb)
    assert len(p) == 1
    gray = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    np.testing.assert_array_equal(p, probs(model, gray))
    np.testing.assert_array_equal(p, probs(model, [b64(encoded(rgb))]))  # the same as an RGB PNG file
    rgba = np.concatenate([rgb, np.full((40, 48, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(probs(model, rgba), p)  # alpha ignored
    np.testing.assert_array_equal(probs(model, gray[..., None]), p)  # (H, W, 1)
    batch = np.stack([rgb, rgb[::-1]])
    assert len(probs(model, batch)) == 2  # (N, H, W, 3)
    assert len(probs(model, np.zeros((4, 40, 48), np.uint8))) == 4  # (N, H, W): a batch of gray images


def test_float_pixels_with_uint8_values_give_the_uint8_probabilities(model):
    x = np.random.default_rng(2).integers(0, 256, (3, 40, 40), dtype=np.uint8)
    ref = probs(model, x)
    np.testing.assert_array_equal(probs(model, x.astype(np.float64)), ref)
    np.testing.assert_array_equal(probs(model, x.astype(np.float32)), ref)
    np.testing.assert_array_equal(probs(model, x.astype(np.int64)), ref)  # JSON integers
    dark = np.full((1, 40, 40), 3.0)  # a dark image is not stretched to full contrast
    np.testing.assert_array_equal(probs(model, dark), probs(model, dark.astype(np.uint8)))
    # 16-bit integers: scaled by their own range, as 16-bit PNG files are
    wide = x[0].astype(np.int64) * 257
    np.testing.assert_array_equal(probs(model, wide), probs(model, x[0]))
    scaled = one_line_error(model, x[0] / 255.0)
    assert "within [0, 1]" in scaled and "multiply" in scaled and "255" in scaled
    assert "outside 0..255" in one_line_error(model, x[0] * 2.0)
    assert "outside 0..255" in one_line_error(model, x[0].astype(np.int64) - 1)


@pytest.mark.parametrize("bad, words", [
    (np.full((10, 10), np.nan), "NaN or infinite"),
    (np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or infinite"),
    (np.zeros((0, 0), np.uint8), "no pixels"),
    (np.zeros((1, 0, 5), np.uint8), "no pixels"),
    ([np.zeros((3, 0), np.uint8)], "no pixels"),
    (np.zeros((10, 10), bool), "expected pixel values"),
    (np.zeros((2, 3, 4, 5), np.uint8), "expected one image"),
    ([np.zeros(7, np.uint8)], "expected one image"),
])
def test_images_without_meaningful_pixels_are_refused(model, bad, words):
    assert words in one_line_error(model, bad)


def test_oversized_images_and_decompression_bombs_are_refused_before_decoding(model):
    side = int(MAX_PIXELS ** 0.5)
    bomb = png_claiming(100_000, 100_000)  # 10^10 pixels in a few bytes: PIL's own bomb error
    assert len(bomb) < 100
    msg = one_line_error(model, [b64(bomb)])
    assert f"{MAX_PIXELS:,} pixels" in msg and f"{side} x {side}" in msg
    msg = one_line_error(model, [b64(png_claiming(side + 1, side))])  # above our limit, below PIL's
    assert f"{side + 1} x {side} pixels is above the limit" in msg
    assert "above the limit" in one_line_error(model, np.broadcast_to(np.uint8(0), (side + 1, side)))
    assert "cannot be decoded" in one_line_error(model, [b64(png_claiming(64, 64))])  # header fine, data not
