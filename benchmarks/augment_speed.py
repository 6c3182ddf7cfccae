"""Augmenting one batch (128 x 224 px) on the CPU: cxrstudy's ``augment`` against one
``F.affine_grid`` + ``F.grid_sample`` over the whole batch (what it replaced). Same random maps,
side by side in one process, medians of 21.

    .venv/bin/python benchmarks/augment_speed.py
"""

import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrstudy.train.augment import augment, random_affine  # noqa: E402


def median_seconds(fn, n: int = 21) -> float:
    fn()
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    x = torch.rand(128, 1, 224, 224)
    g = torch.Generator().manual_seed(0)

    def whole_batch_affine_grid():
        theta = random_affine(128, g)
        return F.grid_sample(x, F.affine_grid(theta, list(x.shape), align_corners=False), mode="bilinear",
                             padding_mode="zeros", align_corners=False)

    t_old = median_seconds(whole_batch_affine_grid)
    t_new = median_seconds(lambda: augment(x, g))
    print(f"affine_grid + grid_sample: {128 / t_old:.0f} img/s; cxrstudy augment: {128 / t_new:.0f} img/s; "
          f"ratio {t_old / t_new:.2f} ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
