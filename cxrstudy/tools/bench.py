"""Benchmarks: our data path and training throughput against the naive way, side by side.

Every figure is a ratio or a time measured in this one process, as a median over repeats, so
that a noisy machine affects both sides alike. Each prints with its target and PASS/FAIL; the
benchmark measures, it does not gate.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxrstudy.data.cache import build_entry
from cxrstudy.data.sources.base import Source


@dataclass
class Figure:
    name: str
    value: float
    target: str
    passed: bool | None
    detail: str = ""

    def line(self) -> str:
        verdict = "n/a " if self.passed is None else ("PASS" if self.passed else "FAIL")
        return f"{verdict}  {self.name} = {self.value:.3f}   (target {self.target}) {self.detail}"


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class FilesSource(Source):
    """A plain list of image files (the benchmark's JPEGs) behind the Source interface."""

    env, kind = "nih", "real"

    def __init__(self, paths):
        super().__init__()
        self.paths = [str(p) for p in paths]

    def table(self):
        raise NotImplementedError

    def read_image(self, path, size):
        from cxrstudy.data.images import decode_image

        return decode_image(path, size)

    def fingerprint(self):
        return "bench"


def write_jpegs(folder: Path, n: int, sizes=(1024, 2048), seed: int = 0) -> list[Path]:
    """Chest-radiograph-like JPEGs at real sizes (rendered small by the synthetic renderer, upscaled)."""
    from cxrstudy.data.synthetic import SyntheticConfig, SyntheticSource

    folder.mkdir(parents=True, exist_ok=True)
    src = SyntheticSource("nih", SyntheticConfig(n_patients=max(10, n), seed=seed))
    rows = src.table()["path"].tolist()
    paths = []
    for i in range(n):
        size = sizes[i % len(sizes)]
        small = src.read_image(rows[i % len(rows)], 256)
        img = Image.fromarray(small).resize((size, int(size * 1.2)), Image.BICUBIC)
        p = folder / f"img{i:05d}.jpg"
        img.save(p, quality=90)
        paths.append(p)
    return paths


def naive_resize_loop(paths, size=224) -> np.ndarray:
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        out[i] = np.asarray(Image.open(p).convert("RGB").resize((size, size)))
    return out


def bench_cache_build(tmp: Path, n: int, repeats: int) -> Figure:
    paths = write_jpegs(tmp / "jpegs", n)
    rows = pd.DataFrame({"path": [str(p) for p in paths], "subject_id": [str(i) for i in range(n)]})
    src = FilesSource(paths)
    counter = iter(range(10**6))

    def ours():
        build_entry(src, rows, f"bench{next(counter)}", 224, tmp / "cache", progress=False)

    t_naive = median_time(lambda: naive_resize_loop(paths), repeats)
    t_ours = median_time(ours, repeats)
    speedup = t_naive / t_ours
    return Figure("bench/cache_build_speedup", speedup, ">= 5x", speedup >= 5,
                  f"[{n} JPEGs at 1024/2048 px: naive {n / t_naive:.0f} img/s, cache build {n / t_ours:.0f} img/s, "
                  f"{os.cpu_count()} cores]")


def bench_metadata(repeats: int = 1) -> Figure:
    from cxrstudy.data.sources import open_source

    def run():
        for env in ("cxp", "nih", "pad"):
            open_source(env, "metadata").table()

    t = median_time(run, repeats)
    return Figure("bench/metadata_seconds", t, "< 30 s", t < 30, "[cxp, nih, pad shipped tables, ~400k rows]")


def _cache_of_jpegs(tmp: Path, n: int, size: int, jpeg_sizes=(512,)):
    paths = write_jpegs(tmp / f"jpegs{size}", n, sizes=jpeg_sizes)
    rows = pd.DataFrame({"path": [str(p) for p in paths], "subject_id": [str(i) for i in range(n)]})
    entry = build_entry(FilesSource(paths), rows, "loader", size, tmp / "cache", progress=False)
    return paths, entry


def bench_loader(tmp: Path, n_images: int, batches: int, workers: int) -> Figure:
    """Images/s delivered (augmented, batch 128, 224 px) by our loader vs a per-item DataFrame loader."""
    import torchvision.transforms as T
    from torch.utils.data import DataLoader, Dataset

    from cxrstudy.data.loader import EqualShareBatches, HospitalPool, Prefetcher
    from cxrstudy.train.augment import augment

    paths, entry = _cache_of_jpegs(tmp, n_images, 224, jpeg_sizes=(1024, 2048))  # real radiograph sizes
    labels = np.random.default_rng(0).integers(0, 2, n_images)
    df = pd.DataFrame({"path": [str(p) for p in paths], "y": labels})

    class NaiveDataset(Dataset):
        tf = T.Compose([T.Resize((224, 224)), T.RandomHorizontalFlip(), T.RandomRotation(10),
                        T.RandomResizedCrop(224, scale=(0.75, 1.0)), T.ToTensor()])

        def __len__(self):
            return len(df)

        def __getitem__(self, i):
            row = df.iloc[i]
            return self.tf(Image.open(row["path"]).convert("RGB")), int(row["y"])

    def naive():
        dl = DataLoader(NaiveDataset(), batch_size=128, shuffle=True, num_workers=workers, drop_last=True)
        done = 0
        while done < batches:
            for _ in dl:
                done += 1
                if done == batches:
                    break

    pool = HospitalPool("x", entry.images(), entry.index["slot"].to_numpy(), labels)
    gen = torch.Generator().manual_seed(0)

    def ours():
        pf = Prefetcher(EqualShareBatches([pool], 128, seed=0), 0)
        try:
            for _ in range(batches):
                _, x, _, _ = pf.next()
                augment(x.float().div_(255), gen)
        finally:
            pf.close()

    t_naive = median_time(naive, 3)
    t_ours = median_time(ours, 3)
    r = t_naive / t_ours
    ips = batches * 128 / t_ours
    return Figure("bench/loader_speedup", r, ">= 20x", r >= 20,
                  f"[ours {ips:.0f} img/s vs naive {batches * 128 / t_naive:.0f} img/s, {workers} workers]")


def bench_loader_vs_memory(tmp: Path, steps: int, image_size: int = 64, backbone: str = "smallcnn") -> Figure:
    """Training-step throughput fed by the cache loader vs from tensors already in memory."""
    import torch.nn.functional as F

    from cxrstudy.data.loader import EqualShareBatches, HospitalPool, Prefetcher
    from cxrstudy.train.augment import augment
    from cxrstudy.train.models import build_model

    n = 2048
    _, entry = _cache_of_jpegs(tmp, n, image_size)
    labels = np.random.default_rng(0).integers(0, 2, n)
    pool = HospitalPool("x", entry.images(), entry.index["slot"].to_numpy(), labels)
    batches = EqualShareBatches([pool], 64, seed=0)
    in_memory = [(torch.from_numpy(np.ascontiguousarray(batches.batch(s)[0])).unsqueeze(1),
                  torch.from_numpy(batches.batch(s)[1])) for s in range(steps)]
    torch.manual_seed(0)
    model = build_model(backbone)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(0)

    def step(x, y):
        x = augment(x.float().div_(255), gen)
        loss = F.cross_entropy(model(x), y.long())
        opt.zero_grad()
        loss.backward()
        opt.step()

    def from_memory():
        for x, y in in_memory:
            step(x, y)

    def from_loader():
        pf = Prefetcher(batches, 0)
        try:
            for _ in range(steps):
                _, x, y, _ = pf.next()
                step(x, y)
        finally:
            pf.close()

    from_memory()  # warm-up
    ratios = []
    for _ in range(3):  # interleaved, so drifts in machine load hit both sides
        tm = median_time(from_memory, 1)
        tl = median_time(from_loader, 1)
        ratios.append(tm / tl)
    r = statistics.median(ratios)
    return Figure("bench/loader_vs_memory", r, ">= 0.9", r >= 0.9,
                  f"[{backbone} {image_size}px batch 64, {steps} steps, {steps * 64 / tl:.0f} img/s with the loader]")


def bench_analyze(n_runs: int) -> Figure:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "make_fake_comparisons.py"
    spec = importlib.util.spec_from_file_location("make_fake_comparisons", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    seconds = mod.time_analysis(n_runs)
    return Figure(f"bench/analyze_seconds_{n_runs}", seconds, "< 10 s", seconds < 10,
                  f"[{n_runs} logged comparison runs, SQLite store]")


def bench_gpu(tmp: Path, steps: int) -> list[Figure]:
    """DenseNet-121, 224 px, batch 128, bf16, channels_last: training fed by the loader vs in-memory tensors."""
    if not torch.cuda.is_available():
        return []
    import torch.nn.functional as F

    from cxrstudy.data.loader import EqualShareBatches, HospitalPool, Prefetcher
    from cxrstudy.train.augment import augment
    from cxrstudy.train.models import build_model

    dev = torch.device("cuda")
    n = 4096
    _, entry = _cache_of_jpegs(tmp, n, 224)
    pool = HospitalPool("x", entry.images(), entry.index["slot"].to_numpy(),
                        np.random.default_rng(0).integers(0, 2, n))
    batches = EqualShareBatches([pool], 128, seed=0)
    model = build_model("densenet121").to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-5)
    gen = torch.Generator().manual_seed(0)
    resident = torch.from_numpy(batches.batch(0)[0]).unsqueeze(1).to(dev)
    y = torch.randint(0, 2, (128,), device=dev)

    def step(x_u8):
        x = x_u8.to(dev, non_blocking=True).float().div_(255).contiguous(memory_format=torch.channels_last)
        x = augment(x, gen)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def model_only():
        for _ in range(steps):
            step(resident)
        torch.cuda.synchronize()

    def with_loader():
        pf = Prefetcher(batches, 0, pin=True)
        try:
            for _ in range(steps):
                step(pf.next()[1])
            torch.cuda.synchronize()
        finally:
            pf.close()

    model_only()
    torch.cuda.reset_peak_memory_stats()
    t_model = median_time(model_only, 3)
    t_loader = median_time(with_loader, 3)
    name = torch.cuda.get_device_name(0)
    ips_model, ips_loader = steps * 128 / t_model, steps * 128 / t_loader
    peak = torch.cuda.max_memory_allocated() / 2**30
    return [
        Figure("bench/gpu_model_only_images_per_s", ips_model, "(reference)", None, f"[{name}]"),
        Figure("bench/gpu_train_images_per_s", ips_loader, ">= 90% of model-only", ips_loader >= 0.9 * ips_model,
               f"[{name}, {ips_loader / ips_model:.1%} of model-only, peak memory {peak:.1f} GiB]"),
    ]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}, {platform.python_version()}"


def run_all(size: str = "full", workdir: Path | None = None) -> list[Figure]:
    """``size``: ``full`` (the figures we report) or ``tiny`` (seconds; for tests)."""
    tiny = size == "tiny"
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        tmp = Path(tmp)
        figs = [
            bench_cache_build(tmp / "a", n=8 if tiny else 120, repeats=1 if tiny else 3),
            bench_metadata(),
            bench_loader(tmp / "b", n_images=128 if tiny else 640, batches=1 if tiny else 5,
                         workers=min(2, os.cpu_count() or 1)),
            bench_loader_vs_memory(tmp / "c", steps=3 if tiny else 40),
            bench_analyze(50 if tiny else 5000),
        ]
        figs += bench_gpu(tmp / "d", steps=3 if tiny else 30)
    return figs
