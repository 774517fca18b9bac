"""Point ops of timm's auto-augment as batched integer kernels, bit-identical to Pillow.

Mirrors `ImagingPoint` (`src/libImaging/Point.c`, a per-band 256-entry uint8 LUT whose
entries `_point` in `_imaging.c` clips with `CLIP8`), `ImagingHistogram`
(`src/libImaging/Histo.c`) and the Python LUT builders of `PIL/ImageOps.py`:
`autocontrast` (cutoff=0, no ignore, no mask), `equalize`, `invert`, `posterize`,
`solarize`, and timm's own `solarize_add` LUT. Every image is uint8 [n, H, W, C]; per-view
parameters are integer tensors of shape [n]. Everything is integer except AutoContrast's
LUT, which Python builds in double (`int(ix * scale + offset)`) and which is rebuilt here
in float64 with one kernel per rounded operation.
"""

from __future__ import annotations

import torch

__all__ = [
    "apply_lut",
    "autocontrast",
    "channel_histograms",
    "equalize",
    "invert",
    "posterize",
    "solarize",
    "solarize_add",
]


def _per_view(values: torch.Tensor | list[int] | int, n: int, device: torch.device) -> torch.Tensor:
    """A per-view integer parameter as int64 [n, 1, 1, 1] on the images' device (a Python
    number is filled in there, not copied over)."""
    if isinstance(values, int):
        return torch.full((n, 1, 1, 1), values, dtype=torch.int64, device=device)
    t = torch.as_tensor(values, dtype=torch.int64, device=device)
    return t.expand(n).reshape(n, 1, 1, 1) if t.dim() == 0 else t.reshape(n, 1, 1, 1)


def apply_lut(imgs: torch.Tensor, luts: torch.Tensor) -> torch.Tensor:
    """`Image.point` with a per-view, per-band LUT: `luts` is uint8 [n, 256] (one table for
    every band, as `ImageOps._lut` triples it) or [n, C, 256]."""
    n, h, w, c = imgs.shape
    luts = luts.to(device=imgs.device, dtype=torch.uint8, non_blocking=True)
    if luts.dim() == 2:
        luts = luts[:, None, :].expand(n, c, 256)
    # Flat index (view, band, value) into the stacked tables: one gather for the batch.
    base = (torch.arange(n * c, device=imgs.device, dtype=torch.int64) * 256).reshape(n, 1, 1, c)
    return luts.reshape(-1)[base + imgs.to(torch.int64)]


def channel_histograms(imgs: torch.Tensor) -> torch.Tensor:
    """`Image.histogram()` per view and band: int64 [n, C, 256] (`ImagingHistogram`)."""
    n, h, w, c = imgs.shape
    base = (torch.arange(n * c, device=imgs.device, dtype=torch.int32) * 256).reshape(n, 1, 1, c)
    flat = (base + imgs.to(torch.int32)).reshape(-1)  # int32: half the traffic of int64
    # Integer counts: the order of accumulation cannot change them. An index_add rather
    # than bincount, which on CUDA reads the index range back to the host (a stall).
    hist = torch.zeros(n * c * 256, dtype=torch.int64, device=imgs.device)
    ones = torch.ones(1, dtype=torch.int64, device=imgs.device).expand(flat.numel())
    return hist.index_add_(0, flat, ones).reshape(n, c, 256)


def invert(imgs: torch.Tensor) -> torch.Tensor:
    """`ImageOps.invert`: LUT 255 - i, which for uint8 is the bitwise complement."""
    return torch.bitwise_not(imgs)


def posterize(imgs: torch.Tensor, bits: torch.Tensor | list[int] | int) -> torch.Tensor:
    """`ImageOps.posterize` per view: keep the top `bits` bits (LUT `i & ~(2**(8-bits)-1)`).

    bits >= 8 is the unchanged image (timm returns it), bits <= 0 an all-black image
    (deit-pipe's wrapper: Pillow >= 13 refuses 0 bits).
    """
    b = _per_view(bits, imgs.shape[0], imgs.device).clamp(0, 8)
    mask = (255 - ((1 << (8 - b)) - 1)).to(torch.uint8)  # ~(2**(8-b)-1) & 0xFF; 0 when b == 0
    return torch.bitwise_and(imgs, mask)


def solarize(imgs: torch.Tensor, threshold: torch.Tensor | list[int] | int) -> torch.Tensor:
    """`ImageOps.solarize` per view: LUT i if i < threshold else 255 - i (256 = unchanged)."""
    t = _per_view(threshold, imgs.shape[0], imgs.device).clamp(0, 256).to(torch.int16)
    return torch.where(imgs.to(torch.int16) < t, imgs, torch.bitwise_not(imgs))


def solarize_add(
    imgs: torch.Tensor,
    add: torch.Tensor | list[int] | int,
    threshold: torch.Tensor | list[int] | int = 128,
) -> torch.Tensor:
    """timm's `solarize_add` per view: LUT min(255, i + add) if i < threshold else i, its
    entries clipped to 0..255 by `CLIP8` as `Image.point` does (a negative `add`)."""
    n = imgs.shape[0]
    # int16 holds every value met: thresholds are capped at 256 and adds at +-512.
    a = _per_view(add, n, imgs.device).clamp(-512, 512).to(torch.int16)
    t = _per_view(threshold, n, imgs.device).clamp(-1, 256).to(torch.int16)
    x = imgs.to(torch.int16)
    added = (x + a).clamp(0, 255).to(torch.uint8)
    return torch.where(x < t, added, imgs)


def _identity_luts(n: int, c: int, device: torch.device) -> torch.Tensor:
    return torch.arange(256, device=device, dtype=torch.int64).expand(n, c, 256)


def _first_last_nonzero(hist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of the lowest and highest non-empty bin of each histogram ([n, C] each)."""
    ramp = torch.arange(256, device=hist.device, dtype=torch.int64)
    nz = hist > 0
    lo = torch.where(nz, ramp, 256).amin(dim=-1)
    hi = torch.where(nz, ramp, -1).amax(dim=-1)
    return lo, hi


def autocontrast(imgs: torch.Tensor) -> torch.Tensor:
    """`ImageOps.autocontrast(img)` (cutoff 0): per band, lo/hi = lowest/highest used
    value; if hi <= lo the identity, else LUT `int(ix * scale + offset)` clipped to 0..255,
    with `scale = 255.0 / (hi - lo)`, `offset = -lo * scale`, all in double as Python does."""
    n, _, _, c = imgs.shape
    lo, hi = _first_last_nonzero(channel_histograms(imgs))
    flat = hi <= lo  # also a band of one value; no band is empty
    span = torch.where(flat, 1, hi - lo).to(torch.float64)
    scale = torch.div(torch.full_like(span, 255.0), span)  # IEEE division, correctly rounded
    offset = torch.mul(torch.neg(lo.to(torch.float64)), scale)
    ramp = torch.arange(256, device=imgs.device, dtype=torch.float64)
    v = torch.mul(ramp, scale[..., None])  # separate multiply and add: Python has no FMA
    v = torch.add(v, offset[..., None])
    lut = torch.trunc(v).clamp(0, 255).to(torch.int64)  # int() truncates toward zero
    lut = torch.where(flat[..., None], _identity_luts(n, c, imgs.device), lut)
    return apply_lut(imgs, lut.to(torch.uint8))


def equalize(imgs: torch.Tensor) -> torch.Tensor:
    """`ImageOps.equalize(img)`: per band, `step = (N - h[last used]) // 255`; the identity
    if fewer than two values are used or step is 0, else LUT[i] = (step // 2 + sum(h[:i]))
    // step, which `CLIP8` caps at 255."""
    n, _, _, c = imgs.shape
    hist = channel_histograms(imgs)
    _, hi = _first_last_nonzero(hist)
    used = (hist > 0).sum(dim=-1)
    total = hist.sum(dim=-1)
    step = torch.div(total - hist.gather(-1, hi[..., None])[..., 0], 255, rounding_mode="floor")
    identity = (used <= 1) | (step == 0)
    safe = torch.where(identity, 1, step)[..., None]
    below = torch.cumsum(hist, dim=-1) - hist  # sum(h[:i]), exact in int64
    lut = torch.div(safe // 2 + below, safe, rounding_mode="floor").clamp(max=255)
    lut = torch.where(identity[..., None], _identity_luts(n, c, imgs.device), lut)
    return apply_lut(imgs, lut.to(torch.uint8))
