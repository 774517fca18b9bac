"""Atomic checkpoints (tmp + rename) loaded with `weights_only=True` (they are untrusted input)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from deit_pipe.errors import DeitPipeError


class CheckpointError(DeitPipeError):
    """A checkpoint is missing, unreadable or does not belong to this run."""


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    if not Path(path).is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated files, pickles with code
        raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from None
