"""The devices tests run on, and watching what the device stage dispatches (read-backs,
blocking copies)."""

import traceback
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


# Ops that read device data back to the host: on CUDA each waits for the device's queue.
_READ_BACKS = {"_local_scalar_dense", "nonzero", "bincount", "is_nonzero", "equal", "item"}


class _Dispatched(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _watch_blocking_copies(monkeypatch) -> list[str]:
    """Where host data goes to a device in a way that waits on CUDA: `Tensor.to(device)`
    of a host tensor without non_blocking, `torch.tensor`/`as_tensor` of Python data with
    a device. Returns the list the calls are recorded in (their callers)."""
    seen: list[str] = []
    real_to, real_tensor, real_as_tensor = torch.Tensor.to, torch.tensor, torch.as_tensor

    def where() -> str:
        frame = traceback.extract_stack(limit=3)[0]
        return f"{Path(frame.filename).name}:{frame.lineno}"

    def to(self, *args, **kwargs):
        moves = "device" in kwargs or any(isinstance(a, torch.device | str) for a in args)
        if moves and self.device.type == "cpu" and not kwargs.get("non_blocking", False):
            seen.append(where())
        return real_to(self, *args, **kwargs)

    def tensor(data, *args, **kwargs):
        if kwargs.get("device") is not None:
            seen.append(where())
        return real_tensor(data, *args, **kwargs)

    def as_tensor(data, *args, **kwargs):
        if kwargs.get("device") is not None and not isinstance(data, torch.Tensor):
            seen.append(where())
        return real_as_tensor(data, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", to)
    monkeypatch.setattr(torch, "tensor", tensor)
    monkeypatch.setattr(torch, "as_tensor", as_tensor)
    return seen
