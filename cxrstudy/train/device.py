"""The compute device: pick one (a clear error before any work when it does not exist), move a
uint8 batch onto it as [0, 1] floats, the memory layout and mixed precision used there (channels-last
everywhere; bf16 on CUDA and on a CPU with native bf16 arithmetic, fp32 on other CPUs), and the
settings that make a training the same however many run beside it (:func:`reproducible`)."""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

from cxrstudy.errors import DataError


def pick_device(name: str = "auto") -> torch.device:
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DataError(f"device={name}: no CUDA device is available on this machine; use device=cpu or auto")
    return torch.device(name)


def prepare_input(x_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    return x_u8.to(device, non_blocking=True).float().div_(255.0).contiguous(memory_format=torch.channels_last)


def place_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` on ``device`` in the channels-last layout that :func:`prepare_input` gives (oneDNN's
    and cuDNN's fast convolutions; on one CPU thread the small CNN's step is about 1.4x faster)."""
    return model.to(device).to(memory_format=torch.channels_last)


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated, slowly."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def precision(device: torch.device) -> str:
    """The arithmetic of the forward pass on ``device``: ``bf16`` autocast on CUDA and on a CPU with
    native bf16 (:func:`cpu_has_bf16`), ``fp32`` otherwise. A property of the machine, never of the
    run: every training of a configuration on one machine uses the same (docs/PROTOCOL.md "Training")."""
    return "bf16" if device.type == "cuda" or cpu_has_bf16() else "fp32"


def autocast(device: torch.device):
    kind = "cuda" if device.type == "cuda" else "cpu"
    return torch.autocast(kind, dtype=torch.bfloat16, enabled=precision(device) == "bf16")


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
