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


def forward_macs(model: torch.nn.Module, image_size: int) -> int:
    """Multiply-adds of one image's forward pass through the convolutions and linear layers (the
    work that counts; normalisation, pooling and activations are a few operations per value)."""
    macs = []

    def conv(m, _, out):
        macs.append(out[0].numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1])

    def linear(m, _, out):
        macs.append(out[0].numel() * m.in_features)

    hooks = [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks += [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, torch.nn.Linear)]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 1, image_size, image_size))
    finally:
        for h in hooks:
            h.remove()
    return int(sum(macs))


def thread_median(fn, repeats: int, inner: int = 1) -> float:
    """Median CPU seconds of this thread per call of ``fn`` (``inner`` calls per sample): the work of
    a one-thread computation, unaffected by how long other processes hold the core."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.thread_time()
        for _ in range(inner):
            fn()
        times.append((time.thread_time() - t) / inner)
    return statistics.median(times)


def matmul_gflops(dtype: torch.dtype, n: int, repeats: int) -> float:
    """A dense ``n x n`` by ``n x n`` matrix product's rate on the training's threads (GFLOP/s)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / thread_median(lambda: torch.mm(a, b), repeats) / 1e9


def _before_issue21():
    """The ``cpu`` preset's network as trained before issue 21: smallcnn, ReLU before pooling."""
    from cxrstudy.train.models import build_model

    model = build_model("smallcnn")
    f = model.trunk.features
    for block in range(0, len(f), 4):
        f[block + 2], f[block + 3] = f[block + 3], f[block + 2]
    return model


def step_rate(preset: str, *, before: bool, steps: int, repeats: int) -> float:
    """Seconds of one training step of ``preset`` (batch, image size, backbone, Adam, augmentation)
    on one CPU thread: as the loop does it now (channels-last, the machine's precision), or as it
    did before issue 21 (smallcnn with ReLU before pooling, fp32, contiguous layout, Adam's
    per-tensor loop)."""
    import torch.nn.functional as F

    from cxrstudy.train.augment import augment
    from cxrstudy.train.device import autocast, place_model, prepare_input
    from cxrstudy.train.loop import adam, augment_kwargs
    from cxrstudy.train.models import build_model
    from cxrstudy.train.presets import PRESETS

    p = PRESETS[preset]
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = _before_issue21() if before else place_model(build_model(p["backbone"]), cpu)
    opt = (torch.optim.Adam(model.parameters(), lr=p["lr"]) if before
           else adam(model.parameters(), lr=p["lr"], weight_decay=p["weight_decay"]))
    gen = torch.Generator().manual_seed(0)
    xs = torch.randint(0, 256, (steps, p["batch_size"], 1, p["image_size"], p["image_size"]), dtype=torch.uint8)
    ys = torch.randint(0, 2, (steps, p["batch_size"]))
    aug = augment_kwargs(p["augment_strength"])
    k = iter(range(10**9))

    def step():
        i = next(k) % steps
        x = xs[i].float().div_(255) if before else prepare_input(xs[i], cpu)
        x = augment(x, gen, **aug)
        with torch.autocast("cpu", enabled=False) if before else autocast(cpu):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), ys[i])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    model.train()
    return thread_median(step, repeats, inner=steps)


def short_training(tmp: Path, preset: str, steps: int, eval_every: int, n_patients: int):
    """A real training of ``preset`` (the loop itself, on the synthetic nih hospital, Effusion) cut at
    ``steps`` steps, a multiple of ``eval_every`` (the preset's, for figures, so that steps and
    validations come in its proportion); returns the outcome (its ``seconds`` by phase) and the
    validation size."""
    from cxrstudy.train.config import TRAIN_PARAMS, config_from_params
    from cxrstudy.train.device import pick_device
    from cxrstudy.train.loop import prepare_data, train_model

    raw = {**TRAIN_PARAMS, "envs": "nih", "label": "Effusion", "preset": preset, "max_steps": str(steps),
           "eval_every": str(eval_every), "patience": str(10**6), "cache_dir": str(tmp / "cache"), "synthetic_patients": str(n_patients)}
    cfg = config_from_params(raw)
    data = prepare_data(cfg, progress=False)
    out = train_model(cfg, data, device=pick_device("cpu"), checkpoint_dir=tmp / "ck", progress=False)
    return cfg, out, len(data.val.frame)


def bench_training(tmp: Path, tiny: bool, preset: str = "cpu") -> list[Figure]:
    """The ``cpu`` preset's training as the machine sees it (issue 21): images/s per core of the
    step, its achieved GFLOP/s against this process's dense matrix-product rate, before and after,
    and the shares of a model's time by phase of the real loop."""
    from cxrstudy.train.device import TRAIN_THREADS, cpu_has_bf16, precision, reproducible
    from cxrstudy.train.models import build_model
    from cxrstudy.train.presets import PRESETS

    p = PRESETS[preset]
    cpu = torch.device("cpu")
    figs = []
    with reproducible(cpu):  # the training's threads (one on the CPU)
        n = 256 if tiny else 1024
        reps = 3 if tiny else 15
        mm = {"fp32": matmul_gflops(torch.float32, n, reps)}
        if cpu_has_bf16():
            mm["bf16"] = matmul_gflops(torch.bfloat16, n, reps)
        macs = forward_macs(build_model(p["backbone"]), p["image_size"])
        flop_per_step = 3 * 2 * macs * p["batch_size"]  # forward + backward (about twice the forward)
        flop_before = 3 * 2 * forward_macs(_before_issue21(), p["image_size"]) * p["batch_size"]
        steps, reps = (2, 2) if tiny else (10, 9)
        t_before, t_now = [], []
        for _ in range(reps):  # interleaved, so that a drift in the machine's load hits both
            t_before.append(step_rate(preset, before=True, steps=steps, repeats=1))
            t_now.append(step_rate(preset, before=False, steps=steps, repeats=1))
        t_before, t_now = statistics.median(t_before), statistics.median(t_now)
    prec = precision(cpu)
    b = p["batch_size"]
    detail = (f"[{p['backbone']} {p['image_size']} px batch {b}: {macs / 1e6:.2f} M multiply-adds per image forward, "
              f"{flop_per_step / 1e9:.2f} GFLOP per step; {TRAIN_THREADS} thread]")
    gf_now, gf_before = flop_per_step / t_now / 1e9, flop_before / t_before / 1e9
    half = gf_now >= 0.5 * mm[prec]
    figs += [
        Figure("bench/matmul_fp32_gflops", mm["fp32"], "(reference)", None, f"[{n}x{n} fp32, {TRAIN_THREADS} thread]"),
        *([Figure("bench/matmul_bf16_gflops", mm["bf16"], "(reference)", None, f"[{n}x{n} bf16, {TRAIN_THREADS} thread]")]
          if "bf16" in mm else []),
        Figure("bench/train_step_images_per_s_per_core", b / t_now, "(reference)", None,
               f"[{preset} preset, {prec}, channels-last, CPU time of the training thread; "
               f"before issue 21 (smallcnn, fp32, contiguous): {b / t_before:.0f}]"),
        Figure("bench/train_step_speedup", t_before / t_now, "(reference)", None, "[step CPU time before / now]"),
        Figure("bench/train_step_gflops", gf_now, f">= half the {prec} matmul rate", half,
               f"{detail} before: {gf_before:.1f}"),
        Figure(f"bench/train_step_fraction_of_{prec}_matmul", gf_now / mm[prec], ">= 0.5", half,
               f"[fp32 rate fraction {gf_now / mm['fp32']:.2f}; before {gf_before / mm['fp32']:.2f} of fp32]"),
    ]
    every = 2 if tiny else p["eval_every"]
    steps = 4 * every
    cfg, out, n_val = short_training(tmp, preset, steps, every, n_patients=150 if tiny else 5000)
    total = sum(out.seconds.values())
    n_evals = len(out.history)
    shares = " ".join(f"{k} {v / total:.1%}" for k, v in out.seconds.items())
    figs += [
        Figure("bench/train_validation_share", out.seconds["validation"] / total, "(reference)", None,
               f"[{n_evals} validations of {n_val} images in {steps} steps: "
               f"{n_val * n_evals / out.seconds['validation']:.0f} img/s]"),
        Figure("bench/train_overhead_share", 1 - (out.seconds["forward_backward"] + out.seconds["validation"]) / total,
               "(reference)", None, f"[all but forward/backward and validation; by phase: {shares}]"),
        Figure("bench/train_seconds_per_1000_steps", 1000 * total / steps, "(reference)", None,
               f"[the loop's wall time, validations included at eval_every={every}]"),
    ]
    return figs


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{platform.node()}: {os.cpu_count()} cores ({cpu}), {gpu}, torch {torch.__version__}, {platform.python_version()}"


#: the benchmark's parts, in the order they run (``only`` picks some)
PARTS = ("cache", "metadata", "loader", "loader_vs_memory", "analyze", "training", "gpu")


def run_all(size: str = "full", workdir: Path | None = None, only: tuple = PARTS) -> list[Figure]:
    """``size``: ``full`` (the figures we report) or ``tiny`` (seconds; for tests). ``only``: the
    parts to run (:data:`PARTS`)."""
    tiny = size == "tiny"
    parts = {
        "cache": lambda t: [bench_cache_build(t / "a", n=8 if tiny else 120, repeats=1 if tiny else 3)],
        "metadata": lambda t: [bench_metadata()],
        "loader": lambda t: [bench_loader(t / "b", n_images=128 if tiny else 640, batches=1 if tiny else 5,
                                          workers=min(2, os.cpu_count() or 1))],
        "loader_vs_memory": lambda t: [bench_loader_vs_memory(t / "c", steps=3 if tiny else 40)],
        "analyze": lambda t: [bench_analyze(50 if tiny else 5000)],
        "training": lambda t: bench_training(t / "e", tiny),
        "gpu": lambda t: bench_gpu(t / "d", steps=3 if tiny else 30),
    }
    figs = []
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for name in PARTS:
            if name in only:
                figs += parts[name](Path(tmp))
    return figs
