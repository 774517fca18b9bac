"""Finishing rendered views on the device that consumes them: uint8 → normalized float32,
random erasing, mixup/cutmix of each pair.

The host renders uint8 pixels and draws every random parameter (`render`); `finish` is pure
arithmetic on a batch, run where the batch goes — the teacher's device in precompute, the
student's in training, the CPU in tests and previews. Its bits must not depend on that
device or on the CPU's ISA, so every step is one eager, exactly rounded elementwise kernel
(subtract, divide, multiply, add — never fused, never compiled) or an exact copy/select,
and the erasing noise is integer arithmetic: a counter-based hash of (view seed, box,
element) made into Irwin–Hall noise (12 uniforms on 8-bit midpoints, minus 6: integer sums
and one power-of-two scaling, so nothing rounds; mean 0, variance 1 − 2⁻¹⁶, support ±6).
"""

from __future__ import annotations

import numpy as np
import torch

from deit_pipe.data.plan.epoch import MIX_CUTMIX, MIX_MIXUP
from deit_pipe.data.views.batch import ViewBatch
from deit_pipe.data.views.host import ViewConfig

_M32 = 0xFFFF_FFFF
_TAG_NOISE = 0x4E015E  # the erasing-noise stream of a view seed


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (hash-prospector's 0x21f0aaad/0x735a2d97), in place, on int64
    lanes holding values < 2³²: both multipliers are < 2³¹, so no product overflows."""
    h ^= h >> 16
    h.mul_(0x21F0AAAD).bitwise_and_(_M32)
    h ^= h >> 15
    h.mul_(0x735A2D97).bitwise_and_(_M32)
    h ^= h >> 15
    return h


def _mix32_np(h: np.ndarray) -> np.ndarray:
    """`_mix32` on NumPy uint32 lanes (multiplication wraps mod 2³² natively)."""
    h ^= h >> np.uint32(16)
    h *= np.uint32(0x21F0AAAD)
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x735A2D97)
    h ^= h >> np.uint32(15)
    return h


def erasing_noise(key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """float32 noise for element `index` (int64, < 2²⁹) of the stream `key` (int64 < 2³²,
    broadcast against it): standard-normal-shaped, the same bits on every device. Each value
    is the Irwin–Hall sum of twelve 8-bit uniforms (the bytes of three 32-bit hashes, summed
    four at a time in 16-bit lanes) on their midpoints, minus 6: multiples of 2⁻⁸.

    The same integer function is computed by NumPy on uint32 lanes on the CPU (5× faster
    than torch's int64 kernels there) and by torch on int64 lanes elsewhere; integer
    arithmetic is exact, and `tests/test_views.py` holds the two to the same bits."""
    key, index = torch.broadcast_tensors(key, index)
    lanes = (_lanes_numpy if index.device.type == "cpu" else _lanes_torch)(key, index)
    total = (lanes & 0xFFFF) + (lanes >> 16) - (6 * 256 - 6)
    return total.to(torch.float32) * (2.0**-8)


def _lanes_torch(key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    i, lanes = index * 3, torch.zeros_like(index)
    for j in range(3):
        h = _mix32((i + j) ^ key)
        lanes += h & 0x00FF00FF
        lanes += (h >> 8) & 0x00FF00FF  # two 16-bit lanes; each sums ≤ 6 bytes < 2¹⁶
    return lanes


def _lanes_numpy(key: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    k, i = key.numpy().astype(np.uint32), index.numpy().astype(np.uint32) * np.uint32(3)
    lanes = np.zeros(i.shape, np.uint32)
    for j in range(3):
        h = _mix32_np((i + np.uint32(j)) ^ k)
        lanes += h & np.uint32(0x00FF00FF)
        lanes += (h >> np.uint32(8)) & np.uint32(0x00FF00FF)
    return torch.from_numpy(lanes.astype(np.int64))


def noise_keys(seeds: torch.Tensor, box: int) -> torch.Tensor:
    """Per view, the noise stream of its erasing box `box` (seeds: int64 view seeds)."""
    lo, hi = seeds & _M32, (seeds >> 32) & _M32
    return _mix32(_mix32(_mix32(lo ^ _TAG_NOISE) ^ hi) ^ box)


def finish(batch: ViewBatch, cfg: ViewConfig, device: torch.device) -> torch.Tensor:
    """float32 NCHW views (channels-last in memory) on `device` from a collated batch of
    rendered views (uint8 NHWC)."""
    pixels = batch.image.to(device, non_blocking=True).permute(0, 3, 1, 2)
    mean = _host_tensor([m * 255 for m in cfg.mean], np.float32, device)
    std = _host_tensor([s * 255 for s in cfg.std], np.float32, device)
    x = (pixels.to(torch.float32) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    erase = batch.erase.numpy()  # the boxes are host data: what to launch needs no sync
    seeds = batch.seed.to(device, non_blocking=True)
    for box in range(erase.shape[1]):
        _erase(x, erase[:, box], seeds, box, cfg.re_mode)
    return _mix(x, batch, device)


def _host_tensor(values, dtype: type, device: torch.device) -> torch.Tensor:
    """Host values (as NumPy `dtype`) on `device`, moved without waiting for its queue."""
    return torch.from_numpy(np.asarray(values, dtype=dtype)).to(device, non_blocking=True)


def _erase(x: torch.Tensor, boxes: np.ndarray, seeds: torch.Tensor, box: int, mode: str):
    """Fill box `box` of each view that has one, as timm's `RandomErasing` (after normalize)
    does: noise per element (`pixel`), per channel (`rand`) or zeros (`const`). `boxes`
    (top, left, h, w per view) is read on the host, so nothing here waits on the device."""
    rows_np = np.flatnonzero(boxes[:, 2] > 0)
    if len(rows_np) == 0:
        return
    dev = x.device
    n, c, height, width = len(rows_np), x.shape[1], x.shape[2], x.shape[3]
    hs, ws = boxes[rows_np, 2].astype(np.int64), boxes[rows_np, 3].astype(np.int64)
    hmax, wmax, count = int(hs.max()), int(ws.max()), c * int((hs * ws).sum())
    rows = _host_tensor(rows_np, np.int64, dev)
    sel = _host_tensor(boxes[rows_np], np.int64, dev)  # one copy: top, left, h, w
    top, left, h, w = (sel[:, i].view(-1, 1, 1, 1) for i in range(4))
    ch = torch.arange(c, device=dev).view(1, c, 1, 1)
    yy = torch.arange(hmax, device=dev).view(1, 1, hmax, 1)
    xx = torch.arange(wmax, device=dev).view(1, 1, 1, wmax)
    grid = (n, c, hmax, wmax)
    inside = ((yy < h) & (xx < w)).expand(grid).reshape(-1)
    # The grid positions inside a box, in order: the host knows how many there are.
    at = torch.nonzero_static(inside, size=count)[:, 0]
    pos = torch.div(at, c * hmax * wmax, rounding_mode="floor")  # row in `rows`
    chan, row, col = (t.expand(grid).reshape(-1)[at] for t in (ch, top + yy, left + xx))
    index = chan * (height * width) + row * width + col  # NCHW position: the noise counter
    keys = noise_keys(seeds[rows], box)
    if mode == "pixel":
        fill = erasing_noise(keys[pos], index)
    elif mode == "rand":
        fill = erasing_noise(keys.view(-1, 1), ch.view(1, c))[pos, chan]
    else:
        fill = torch.zeros(len(index), dtype=x.dtype, device=dev)
    x[rows[pos], chan, row, col] = fill


def _mix(x: torch.Tensor, batch: ViewBatch, device: torch.device) -> torch.Tensor:
    """Each view of a mixed pair (adjacent rows 2p, 2p+1) keeps weight λ of itself and takes
    1−λ from its partner, as timm's `Mixup` computes it: λ and 1−λ rounded to float32 once on
    the host, then two multiplies and an add, each its own kernel (no fused multiply-add can
    form); cutmix only copies."""
    if not batch.mix.numpy().any():  # host data: no sync
        return x
    op = batch.mix.to(device, non_blocking=True)
    n = x.shape[0]
    # A pair is one collated item: slot 2p's partner is the next row, 2p+1's the previous.
    step = 1 - 2 * (batch.slot.to(device, non_blocking=True) & 1)
    partner = x[(torch.arange(n, device=device) + step).clamp(0, n - 1)]
    lam = batch.lam.to(device, non_blocking=True)
    mixed = x * lam[:, 0].view(n, 1, 1, 1) + partner * lam[:, 1].view(n, 1, 1, 1)
    box = batch.box.to(device, non_blocking=True)
    y0, y1, x0, x1 = (box[:, i].view(n, 1, 1, 1) for i in range(4))
    yy = torch.arange(x.shape[2], device=device).view(1, 1, -1, 1)
    xx = torch.arange(x.shape[3], device=device).view(1, 1, 1, -1)
    cut = torch.where((yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1), partner, x)
    op = op.view(n, 1, 1, 1)
    return torch.where(op == MIX_MIXUP, mixed, torch.where(op == MIX_CUTMIX, cut, x))


def mix_params(op: int, lam: float, box) -> tuple[int, np.ndarray, np.ndarray]:
    """A pair's mix as the batch carries it: op, float32 (λ, 1−λ) rounded once, int32 box."""
    lams = np.array([lam, 1.0 - lam], dtype=np.float64).astype(np.float32)
    return int(op), lams, np.asarray(box, dtype=np.int32).reshape(4)
