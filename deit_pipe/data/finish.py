"""Finishing rendered views on the device that consumes them: uint8 → normalized float32,
random erasing, mixup/cutmix of each pair.

The host renders uint8 pixels and draws every random parameter (`render`); `finish` is pure
arithmetic on a batch, run where the batch goes — the teacher's device in precompute, the
student's in training, the CPU in tests and previews. Its bits must not depend on that
device or on the CPU's ISA, so every step is one eager, exactly rounded elementwise kernel
(subtract, divide, multiply, add — never fused, never compiled) or an exact copy/select,
and the erasing noise is integer arithmetic: a counter-based hash of (view seed, box,
element) made into Irwin–Hall noise (12 uniforms on 16-bit midpoints, minus 6: integer sums
and one power-of-two scaling, so nothing rounds; mean 0, variance 1 − 2⁻³², support ±6).
"""

from __future__ import annotations

import numpy as np
import torch

from deit_pipe.data.plan import MIX_CUTMIX, MIX_MIXUP
from deit_pipe.data.views import ViewConfig

_M32 = 0xFFFF_FFFF
_TAG_NOISE = 0x4E015E  # the erasing-noise stream of a view seed


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (hash-prospector's 0x21f0aaad/0x735a2d97) on int64 lanes holding
    values < 2³²: both multipliers are < 2³¹, so no product overflows int64 anywhere."""
    h = h ^ (h >> 16)
    h = (h * 0x21F0AAAD) & _M32
    h = h ^ (h >> 15)
    h = (h * 0x735A2D97) & _M32
    return h ^ (h >> 15)


def erasing_noise(key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """float32 noise for element `index` (int64, < 2²⁹) of the stream `key` (int64 < 2³²,
    broadcast against it): standard-normal-shaped, the same bits on every device."""
    total = torch.zeros(torch.broadcast_shapes(key.shape, index.shape), dtype=torch.int64,
                        device=index.device)  # fmt: skip
    for j in range(6):  # six 32-bit hashes → twelve 16-bit uniforms
        h = _mix32(_mix32((index * 6 + j) ^ key) ^ 0x5BD1E995)
        total += (h & 0xFFFF) + (h >> 16)
    return (total - (6 * 65536 - 6)).to(torch.float32) * (2.0**-16)


def noise_keys(seeds: torch.Tensor, box: int) -> torch.Tensor:
    """Per view, the noise stream of its erasing box `box` (seeds: int64 view seeds)."""
    lo, hi = seeds & _M32, (seeds >> 32) & _M32
    return _mix32(_mix32(_mix32(lo ^ _TAG_NOISE) ^ hi) ^ box)


def finish(batch: dict[str, torch.Tensor], cfg: ViewConfig, device: torch.device) -> torch.Tensor:
    """float32 NCHW views on `device` from a collated batch of rendered views."""
    pixels = batch["image"].to(device, non_blocking=True)
    mean = torch.tensor([m * 255 for m in cfg.mean], dtype=torch.float32, device=device)
    std = torch.tensor([s * 255 for s in cfg.std], dtype=torch.float32, device=device)
    x = (pixels.to(torch.float32) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    erase = batch["erase"].to(device, non_blocking=True)
    seeds = batch["seed"].to(device, non_blocking=True)
    for box in range(erase.shape[1]):
        _erase(x, erase[:, box], seeds, box, cfg.re_mode)
    return _mix(x, batch, device)


def _erase(x: torch.Tensor, boxes: torch.Tensor, seeds: torch.Tensor, box: int, mode: str):
    """Fill box `box` of each view that has one, as timm's `RandomErasing` (after normalize)
    does: noise per element (`pixel`), per channel (`rand`) or zeros (`const`)."""
    rows = torch.nonzero(boxes[:, 2] > 0).flatten()
    if len(rows) == 0:  # a host sync, once per box slot and batch
        return
    top, left, h, w = (boxes[rows, i].to(torch.int64).view(-1, 1, 1, 1) for i in range(4))
    n, c, height, width = len(rows), x.shape[1], x.shape[2], x.shape[3]
    hmax, wmax = int(h.max()), int(w.max())
    dev = x.device
    ch = torch.arange(c, device=dev).view(1, c, 1, 1)
    yy = torch.arange(hmax, device=dev).view(1, 1, hmax, 1)
    xx = torch.arange(wmax, device=dev).view(1, 1, 1, wmax)
    inside = ((yy < h) & (xx < w)).expand(n, c, hmax, wmax)
    index = ch * (height * width) + (top + yy) * width + (left + xx)
    if mode == "pixel":
        fill = erasing_noise(noise_keys(seeds[rows], box).view(-1, 1, 1, 1), index)
    elif mode == "rand":
        fill = erasing_noise(noise_keys(seeds[rows], box).view(-1, 1, 1, 1), ch)
        fill = fill.expand(n, c, hmax, wmax)
    else:
        fill = torch.zeros((n, c, hmax, wmax), dtype=x.dtype, device=dev)
    view = rows.view(-1, 1, 1, 1).expand(n, c, hmax, wmax)
    flat = x.view(x.shape[0], -1)
    flat[view[inside], index.expand(n, c, hmax, wmax)[inside]] = fill[inside]


def _mix(x: torch.Tensor, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Each view of a mixed pair (adjacent rows 2p, 2p+1) keeps weight λ of itself and takes
    1−λ from its partner, as timm's `Mixup` computes it: λ and 1−λ rounded to float32 once on
    the host, then two multiplies and an add, each its own kernel (no fused multiply-add can
    form); cutmix only copies."""
    op = batch["mix"].to(device, non_blocking=True)
    if not bool((op != 0).any()):
        return x
    n = x.shape[0]
    # A pair is one collated item: slot 2p's partner is the next row, 2p+1's the previous.
    step = 1 - 2 * (batch["slot"].to(device) & 1)
    partner = x[(torch.arange(n, device=device) + step).clamp(0, n - 1)]
    lam = batch["lam"].to(device, non_blocking=True)
    mixed = x * lam[:, 0].view(n, 1, 1, 1) + partner * lam[:, 1].view(n, 1, 1, 1)
    y0, y1, x0, x1 = (batch["box"][:, i].to(device).view(n, 1, 1, 1) for i in range(4))
    yy = torch.arange(x.shape[2], device=device).view(1, 1, -1, 1)
    xx = torch.arange(x.shape[3], device=device).view(1, 1, 1, -1)
    cut = torch.where((yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1), partner, x)
    op = op.view(n, 1, 1, 1)
    return torch.where(op == MIX_MIXUP, mixed, torch.where(op == MIX_CUTMIX, cut, x))


def mix_params(op: int, lam: float, box) -> tuple[int, np.ndarray, np.ndarray]:
    """A pair's mix as the batch carries it: op, float32 (λ, 1−λ) rounded once, int32 box."""
    lams = np.array([lam, 1.0 - lam], dtype=np.float64).astype(np.float32)
    return int(op), lams, np.asarray(box, dtype=np.int32).reshape(4)
