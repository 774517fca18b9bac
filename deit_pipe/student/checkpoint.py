"""Atomic checkpoints (tmp + rename) loaded with `weights_only=True` (they are untrusted input),
carrying a checksum of what they hold that every loader checks."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch

from deit_pipe.errors import CheckpointError
from deit_pipe.weights import SAFETENSORS, file_kind, load_weights_file

log = logging.getLogger(__name__)

# The key holding the checksum. It covers the loaded values, not the file's bytes: the zip
# container torch.save writes is not byte-stable, and damage outside the values either fails
# to load (one line) or changes nothing read.
CHECKSUM = "checksum"


def state_checksum(state: object) -> str:
    """blake2b of every value in `state` (nested dicts, lists, tensors, scalars), walked in a
    fixed order with each value's type, shape and dtype, so a flipped bit anywhere changes it."""
    h = hashlib.blake2b(digest_size=16)

    def walk(value: object) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(value.shape)}".encode())
            h.update(t.view(torch.uint8).numpy())  # the raw bits, whatever the dtype
        elif isinstance(value, dict):
            h.update(f"D{len(value)}".encode())
            for key in sorted(value, key=repr):
                h.update(repr(key).encode())
                walk(value[key])
        elif isinstance(value, list | tuple):
            h.update(f"{type(value).__name__}{len(value)}".encode())
            for item in value:
                walk(item)
        else:  # str, int, float, bool, None: repr is exact and stable
            h.update(f"{type(value).__name__}:{value!r}\n".encode())

    walk(state)
    return h.hexdigest()


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({**state, CHECKSUM: state_checksum(state)}, tmp)
    os.replace(tmp, path)


def check_checksum(state: dict, path: Path | str) -> dict:
    """`state` without its checksum, refused in one line naming `path` if the values differ
    from those it was written with. A checkpoint from before checksums loads as it is."""
    recorded = state.pop(CHECKSUM, None)
    if recorded is None:
        log.debug("%s carries no checksum (written before deit-pipe checked them)", path)
        return state
    if state_checksum(state) != recorded:
        raise CheckpointError(
            f"checkpoint {path} is damaged: its contents differ from the checksum written "
            "with them; restore it from a copy (or start the run again)"
        )
    return state


def load_checkpoint(path: Path) -> dict:
    """A deit-pipe run checkpoint (RUN/checkpoint.pt), refusing files of any other kind and
    damaged ones."""
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
    return check_checksum(state, path)
