"""`--device auto|cpu|cuda` as a torch device: one behaviour for every command."""

from __future__ import annotations

import torch

from deit_pipe.choices import DEVICES
from deit_pipe.errors import ConfigError, check


def resolve_device(device: str) -> torch.device:
    """auto: CUDA when visible, else the CPU. cuda asked for where none is visible is
    refused in one line, never silently run on the CPU."""
    check(device in DEVICES, f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible here (use auto or cpu)")
    return torch.device("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
