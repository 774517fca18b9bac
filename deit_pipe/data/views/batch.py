"""`ViewBatch`: a collated batch of views, what every DataLoader of views yields.

Rendered by Pillow in a loader worker, a batch holds its views' pixels and fingerprints;
left to the device (`--render device`), it holds their `prepare`d crops in `device_views`
until `device.render.device_pixels` renders them where the student or teacher runs. Either
way it carries what finishing needs: each view's slot, seed, erasing boxes and its pair's
mix. Per-item data inside a worker stays plain (NumPy, a dict per pair) until
`loaders.dataset.collate_views` makes one of these.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

import torch


@dataclass
class ViewBatch:
    """`n` views. Every tensor is on the host until `device_pixels` moves `image`; the
    fingerprints of device-rendered views may still be on their way (`device.render.Later`:
    read them with `device.render.fingerprints`)."""

    slot: torch.Tensor  # int64 [n]: each view's slot in its epoch (or its index, for eval)
    seed: torch.Tensor  # int64 [n]: the view seeds' bits
    erase: torch.Tensor  # int32 [n, re_count, 4]: random-erasing boxes (top, left, h, w)
    mix: torch.Tensor  # int64 [n]: the pair's mix op (0 none, 1 mixup, 2 cutmix)
    lam: torch.Tensor  # float32 [n, 2]: its mix weights
    box: torch.Tensor  # int32 [n, 4]: its CutMix box
    image: torch.Tensor | None = None  # uint8 [n, H, W, C] once rendered
    fingerprint: Any = None  # int64 [n] once rendered (or a pending `Later`)
    device_views: dict | None = None  # `prepare`d views the device renders instead
    epoch: torch.Tensor | None = None  # int64 [n], for training batches
    host_rendered: int = 0  # how many views Pillow rendered, once rendered

    def __len__(self) -> int:
        return len(self.slot)

    @property
    def rendered(self) -> bool:
        return self.device_views is None

    def pin_memory(self) -> ViewBatch:
        """Page-locked copies of its host tensors (a DataLoader's `pin_memory=True`)."""
        return replace(self, **{f.name: _pinned(getattr(self, f.name)) for f in fields(self)})

    @classmethod
    def empty(cls) -> ViewBatch:
        """No views (a block-order worker that owns none of a step's slots)."""
        none = torch.zeros(0, dtype=torch.int64)
        return cls(none, none, none.reshape(0, 0, 4), none, none.reshape(0, 2), none.reshape(0, 4))


def _pinned(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.pin_memory()
    if isinstance(value, dict):
        return {k: _pinned(v) for k, v in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple (a kernel Step)
        return type(value)(*(_pinned(v) for v in value))
    if isinstance(value, list | tuple):
        return type(value)(_pinned(v) for v in value)
    return value
