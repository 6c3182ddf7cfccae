"""The compute device: pick one (a clear error before any work when it does not exist), check that
a training batch fits in its memory (:func:`check_batch_fits`), move a
uint8 batch onto it as [0, 1] floats, the mixed precision used there (bf16 on CUDA, none on CPU),
and the settings that make a training the same however many run beside it (:func:`reproducible`)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from cxrstudy.data.cache import human_bytes
from cxrstudy.errors import UsageError

#: What ``device`` accepts; ``cuda:<n>`` names one GPU of those visible, ``mps`` Apple silicon's GPU.
DEVICE_CHOICES = "auto, cpu, cuda, cuda:<n> or mps"


def pick_device(name: str = "auto") -> torch.device:
    """The device ``name`` stands for, checked before any work: a name that is no device, or a device
    this machine does not have (no CUDA, no GPU ``<n>``, no MPS), is one :class:`UsageError` line."""
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    kind, _, index = text.partition(":")
    if kind == "cuda" and (not index or index.isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(f"parameter device={name!r}: no CUDA device is available on this machine; "
                             "use device=cpu or auto")
        if index and int(index) >= torch.cuda.device_count():
            raise UsageError(f"parameter device={name!r}: this machine has {torch.cuda.device_count()} visible "
                             f"CUDA device(s), cuda:0..cuda:{torch.cuda.device_count() - 1}")
        return torch.device(text)
    if text == "mps":  # Apple silicon: accepted where PyTorch has it, as before; elsewhere one line
        if not torch.backends.mps.is_available():
            raise UsageError(f"parameter device={name!r}: no MPS device (Apple silicon) is available on this "
                             "machine; use device=cpu or auto")
        return torch.device("mps")
    raise UsageError(f"parameter device={name!r} is not a device; expected one of: {DEVICE_CHOICES}")


#: Bytes one pixel of a training batch's input takes, at the least: the uint8 batch, its float32
#: copy and the float32 3-channel copy the network normalises (:mod:`cxrstudy.train.models`);
#: doubled for augmentation's copies. Activations come on top: a batch that
#: :func:`check_batch_fits` refuses cannot fit, and one it accepts still may not.
BATCH_BYTES_PER_PIXEL = 2 * (1 + 4 + 4 * 3)


def available_memory() -> int | None:
    """Bytes of RAM available to new work (``MemAvailable`` in /proc/meminfo; psutil where installed
    and there is no /proc), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_batch_fits(batch_size: int, image_size: int, device: torch.device, *, ram: int | None = None,
                     gpu: int | None = None) -> None:
    """Refuse, before any work, a training batch whose input tensors alone (:data:`BATCH_BYTES_PER_PIXEL`)
    exceed the memory available: the RAM (``ram``, default :func:`available_memory`) on the CPU, the
    GPU's free memory (``gpu``, default ``torch.cuda.mem_get_info``) on CUDA, where the host still
    holds the uint8 batch. One :class:`UsageError` line naming the figures."""
    pixels = int(batch_size) * int(image_size) ** 2
    what = f"batch_size={batch_size} at image_size={image_size}"
    ram = available_memory() if ram is None else ram
    if device.type == "cuda":
        if gpu is None:
            gpu = torch.cuda.mem_get_info(device)[0]
        need = pixels * BATCH_BYTES_PER_PIXEL
        if need > gpu:
            raise UsageError(f"{what} needs ~{human_bytes(need)} of GPU memory for one batch's input tensors alone, "
                             f"{human_bytes(gpu)} free on {device}; lower batch_size or image_size")
        host = pixels * 2  # the uint8 batch and its pinned copy
    else:
        host = pixels * BATCH_BYTES_PER_PIXEL
    if ram is not None and host > ram:
        raise UsageError(f"{what} needs ~{human_bytes(host)} of memory for one batch's input tensors alone, "
                         f"{human_bytes(ram)} available on this machine; lower batch_size or image_size")


def prepare_input(x_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = x_u8.to(device, non_blocking=True).float().div_(255.0)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


#: Intra-op threads of one training on the CPU. Floating-point sums are reduced in an order that
#: depends on the thread count, so a fixed count is what makes a configuration's weights the same
#: whether it trains alone, in ``main`` with one worker or with many (docs/PROTOCOL.md "Determinism").
#: Parallelism comes from training several models at once (``workers``), never from threads.
TRAIN_THREADS = 1


@contextmanager
def reproducible(device: torch.device):
    """Inside: the same weights for the same configuration and seed on this machine, however many
    trainings run beside it. CPU: :data:`TRAIN_THREADS` intra-op threads (restored afterwards). CUDA:
    the deterministic settings PyTorch documents (deterministic cuDNN, no autotuning, deterministic
    algorithms where they exist)."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
                  torch.are_deterministic_algorithms_enabled())
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        torch.use_deterministic_algorithms(True, warn_only=True)
        try:
            yield
        finally:
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before[:2]
            torch.use_deterministic_algorithms(before[2])
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
