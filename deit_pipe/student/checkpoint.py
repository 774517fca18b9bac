"""Atomic checkpoints (tmp + rename) loaded with `weights_only=True` (they are untrusted input)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from deit_pipe.errors import CheckpointError
from deit_pipe.weights import SAFETENSORS, file_kind, load_weights_file


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict:
    """A deit-pipe run checkpoint (RUN/checkpoint.pt), refusing files of any other kind."""
    path = Path(path)
    if path.is_file() and file_kind(path) == SAFETENSORS:
        raise CheckpointError(
            f"{path} is a safetensors model file, not a deit-pipe run checkpoint "
            "(RUN/checkpoint.pt); start a run from it with `train --init-from`"
        )
    state = load_weights_file(path, "checkpoint")
    if not isinstance(state, dict) or not {"model", "config", "step"} <= set(state):
        raise CheckpointError(
            f"{path} is a PyTorch file but not a deit-pipe run checkpoint (RUN/checkpoint.pt "
            "holds model, config and step); start a run from it with `train --init-from`"
        )
    return state
