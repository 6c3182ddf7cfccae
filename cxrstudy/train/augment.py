"""The paper's train-time augmentation, applied to a whole batch in one ``grid_sample`` call.

Per image: random horizontal flip (p=0.5), random rotation in [-10, 10] degrees, and a random
resized crop with area scale in [0.75, 1.0] and aspect ratio in [3/4, 4/3] (log-uniform), as in
torchvision's RandomResizedCrop; a crop wider or taller than the image is clipped to it rather
than retried. All three are composed into one affine map per image, so the batch is resampled
once, on whatever device it lives on (the GPU on CUDA).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(n: int, generator: torch.Generator, *, max_rotation: float = 10.0,
                  scale: tuple[float, float] = (0.75, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3),
                  flip_p: float = 0.5) -> torch.Tensor:
    """``(n, 2, 3)`` affine matrices (normalised coordinates) drawn on the CPU from ``generator``."""
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    flip = torch.where(u[:, 0] < flip_p, -1.0, 1.0)
    angle = (u[:, 1] * 2 - 1) * math.radians(max_rotation)
    area = scale[0] + u[:, 2] * (scale[1] - scale[0])
    log_r = math.log(ratio[0]) + u[:, 3] * (math.log(ratio[1]) - math.log(ratio[0]))
    r = torch.exp(log_r)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (u[:, 4] * 2 - 1) * (1 - w)
    cy = (u[:, 5] * 2 - 1) * (1 - h)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([w * cos * flip, -h * sin, cx], dim=1),
        torch.stack([w * sin * flip, h * cos, cy], dim=1),
    ], dim=1)
    return theta.float()


def sampling_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The ``(N, H, W, 2)`` grid of ``F.affine_grid(theta, (N, C, H, W), align_corners=False)``.

    An affine map of a regular grid is separable: ``theta @ (x, y, 1)`` is a column term plus a
    row term, so the grid is one broadcast add of an ``(N, 1, W, 2)`` and an ``(N, H, 1, 2)``
    tensor. On the CPU this is about 3x faster than ``affine_grid``'s batched matrix product,
    which was the most expensive part of augmenting a batch there.
    """
    n = theta.shape[0]
    kw = {"dtype": theta.dtype, "device": theta.device}
    xs = (torch.arange(width, **kw) * 2 + 1) / width - 1  # pixel centres, align_corners=False
    ys = (torch.arange(height, **kw) * 2 + 1) / height - 1
    cols = xs.view(1, 1, width, 1) * theta[:, :, 0].view(n, 1, 1, 2)
    rows = torch.addcmul(theta[:, :, 2].view(n, 1, 1, 2), ys.view(1, height, 1, 1), theta[:, :, 1].view(n, 1, 1, 2))
    return cols + rows


#: on the CPU, images are resampled in chunks of about this many pixels (16 images at 224 px):
#: a chunk's grid and output stay in cache, where one (128, 224, 224, 2) grid is 51 MB of fresh
#: memory per batch (with the separable grid, 2.5-2.8x faster than affine_grid + one grid_sample
#: for batch 128 at 224 px on a 2-core machine: benchmarks/augment_speed.py).
CPU_CHUNK_PIXELS = 16 * 224 * 224


def _resample(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = sampling_grid(theta.to(x.dtype), x.shape[2], x.shape[3])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(x: torch.Tensor, generator: torch.Generator, **kw) -> torch.Tensor:
    """Augment a float batch ``(N, C, S, S)``; the output has the same shape and device.

    Each image is resampled independently, so the CPU's chunked path gives exactly the result of
    one whole-batch ``grid_sample`` (the GPU path)."""
    theta = random_affine(x.shape[0], generator, **kw).to(x.device, non_blocking=True)
    if x.device.type != "cpu":
        return _resample(x, theta)
    step = max(1, CPU_CHUNK_PIXELS // (x.shape[1] * x.shape[2] * x.shape[3]))
    if step >= x.shape[0]:
        return _resample(x, theta)
    out = torch.empty_like(x)
    for i in range(0, x.shape[0], step):
        out[i:i + step] = _resample(x[i:i + step], theta[i:i + step])
    return out
