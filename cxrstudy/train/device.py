"""The compute device: pick one (a clear error before any work when it does not exist), move a
uint8 batch onto it as [0, 1] floats, and the mixed precision used there (bf16 on CUDA, none on CPU)."""

from __future__ import annotations

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
    x = x_u8.to(device, non_blocking=True).float().div_(255.0)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x


def autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)
