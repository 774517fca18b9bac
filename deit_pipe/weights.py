"""Weights files from outside (teacher checkpoints, run checkpoints, `--init-from` sources).

They are untrusted input: `torch.load(weights_only=True)` or safetensors, never pickled code.
A file is recognised by its first bytes, not its name, so a file of the wrong kind is named as
such instead of surfacing a deserialiser's internals ("list index out of range").
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import torch

from deit_pipe.errors import WeightsFileError

TORCH_ZIP, TORCH_LEGACY, SAFETENSORS = "torch zip", "torch legacy", "safetensors"
EXPECTED = "a PyTorch checkpoint (.pth/.pt from torch.save) or a .safetensors file"


def file_kind(path: Path) -> str | None:
    """TORCH_ZIP, TORCH_LEGACY or SAFETENSORS by the file's magic bytes; None otherwise."""
    with open(path, "rb") as f:
        head = f.read(16)
        size = f.seek(0, 2)
    if head.startswith(b"PK\x03\x04"):  # torch.save's default zip container
        return TORCH_ZIP
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return TORCH_LEGACY  # a pickle protocol header: torch.save(_use_new_zipfile=False)
    if len(head) >= 9 and head[8:9] == b"{":
        (header_len,) = struct.unpack("<Q", head[:8])
        if 8 + header_len <= size:
            return SAFETENSORS
    return None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_weights_file(path: Path | str, what: str = "checkpoint") -> object:
    """The object in a weights file: a state dict (safetensors) or what torch.save stored."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"{what} not found: {path}")
    kind = file_kind(path)
    if kind is None:
        raise WeightsFileError(f"{what} {path} is not {EXPECTED}")
    try:
        if kind == SAFETENSORS:
            from safetensors.torch import load_file

            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise WeightsFileError(f"{what} {path} has a corrupt safetensors header: {exc}") from None
    except Exception as exc:  # truncated archives, pickles that hold code
        raise WeightsFileError(
            f"cannot load {what} {path} ({kind} file): {refusal_reason(exc)}"
        ) from None


def refusal_reason(exc: Exception) -> str:
    """The line of a loader's error that says why: torch's weights-only refusal buries it
    ("Trying to load unsupported GLOBAL posix.system") under advice."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        why = next(
            (ln for ln in lines[1:] if not ln.startswith(("Check the documentation", "Please"))),
            "it holds objects other than tensors",
        )
        return f"torch.load(weights_only=True) refused it: {why.split('error: ', 1)[-1]}"
    return lines[0][:200] if lines else type(exc).__name__


def state_dict_of(obj: object, path: Path | str, what: str = "checkpoint") -> dict:
    """The model state dict in a loaded file: itself, or under `model`/`state_dict`/`model_ema`."""
    for key in ("model", "state_dict", "model_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(f"{what} {path} holds no model state dict")
    return {k.removeprefix("module."): v for k, v in obj.items()}
