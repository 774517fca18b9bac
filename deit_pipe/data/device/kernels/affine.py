"""Affine ops of timm's auto-augment (rotate, shear x/y, translate x/y) as batched kernels,
bit-identical to Pillow's `Image.rotate` / `Image.transform(size, AFFINE, ...)`.

Host side (float64, Python, exactly as Pillow's `Image.py` builds them): the matrices
(`Image.rotate` with its `angle % 360`, cos/sin rounded to 15 places, centre (w/2, h/2),
no expand) and the fill colour (`Image.new(mode, size, fillcolor)`; with a fill colour,
Pillow passes fill=0 so points outside keep it).

Device side mirrors `src/libImaging/Geometry.c`:

- BILINEAR / BICUBIC go through `ImagingGenericTransform` with `affine_transform`:
  `x' = a0 (x + 0.5) + a1 (y + 0.5) + a2` in double; a point with x' < 0, x' >= W,
  y' < 0 or y' >= H keeps the fill; else `x' - 0.5` is split into floor and fraction, the
  neighbours are edge-clamped (the "previous row" rule of `BICUBIC_BODY` equals clamping)
  and `bilinear_filter32RGB` / `bicubic_filter32RGB` interpolate rows then the column in
  double with Pillow's exact expression trees; bicubic clamps to 0..255, both truncate.
  Every rounded double operation is its own eager kernel (no FMA).
- NEAREST goes through `ImagingTransformAffine`'s own paths: `ImagingScaleAffine` when
  a1 == a3 == 0 (running sums `xo += a0`, replayed on the host), `affine_fixed` (16.16 fixed
  point, integer on the device) when the corners fit, else its float running sums (host).

Images are uint8 [n, H, W, C]; matrices float64 [n, 6] on the host; fill uint8 [n, C].
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "BICUBIC",
    "BILINEAR",
    "NEAREST",
    "fill_color",
    "rotate",
    "rotate_matrix",
    "shear_matrix",
    "shear_x",
    "shear_y",
    "transform_affine",
    "translate_matrix",
    "translate_rel",
    "translate_x",
    "translate_y",
]

NEAREST, BILINEAR, BICUBIC = 0, 2, 3  # PIL.Image.Resampling values
# Output pixels per chunk. The float64 temporaries of a chunk stay in a CPU core's L2
# (2.4x faster per 224² view than chunks of 1M pixels, BENCHMARKS.md); a GPU takes large
# chunks, which bound its memory (≈ 0.6 GB of temporaries for 2M bicubic pixels) without
# multiplying kernel launches (about 60 a chunk).
_CHUNK_PIXELS = {"cpu": 1 << 14, "cuda": 1 << 21}

Matrix = tuple[float, float, float, float, float, float]
Fill = torch.Tensor | Sequence[int] | int | None


# ---------------------------------------------------------------- host-side parameters


def rotate_matrix(degrees: float, width: int, height: int) -> Matrix:
    """`Image.rotate(degrees)`'s inverse matrix (expand=False, default centre)."""
    angle = -math.radians(degrees % 360.0)
    cos, sin = round(math.cos(angle), 15), round(math.sin(angle), 15)
    a, b, d, e = cos, sin, round(-math.sin(angle), 15), cos
    cx, cy = width / 2, height / 2
    # Pillow's `transform(-cx, -cy, matrix)` then `+= center`, term by term.
    c = a * -cx + b * -cy + 0.0
    f = d * -cx + e * -cy + 0.0
    return (a, b, c + cx, d, e, f + cy)


def shear_matrix(factor: float, axis: str) -> Matrix:
    """timm's `shear_x` (1, f, 0, 0, 1, 0) or `shear_y` (1, 0, 0, f, 1, 0)."""
    if axis == "x":
        return (1.0, factor, 0.0, 0.0, 1.0, 0.0)
    return (1.0, 0.0, 0.0, factor, 1.0, 0.0)


def translate_matrix(dx: float, dy: float) -> Matrix:
    """timm's `translate_*_abs` / `translate_*_rel`: (1, 0, dx, 0, 1, dy)."""
    return (1.0, 0.0, dx, 0.0, 1.0, dy)


def translate_rel(pct: float, size: int) -> float:
    """timm's `translate_x_rel` / `translate_y_rel` pixels: `pct * img.size[axis]`."""
    return pct * size


# Each affine auto-augment op's inverse matrix from its argument and the view's w, h (the
# names `data/views/ops.py` gives its entries' kernels).
def rotate_op(a: float, w: int, h: int) -> Matrix:
    return rotate_matrix(a, w, h)


def shear_x_op(a: float, w: int, h: int) -> Matrix:
    return shear_matrix(a, "x")


def shear_y_op(a: float, w: int, h: int) -> Matrix:
    return shear_matrix(a, "y")


def translate_x_op(a: float, w: int, h: int) -> Matrix:
    return translate_matrix(a, 0.0)


def translate_y_op(a: float, w: int, h: int) -> Matrix:
    return translate_matrix(0.0, a)


def translate_x_rel_op(a: float, w: int, h: int) -> Matrix:
    return translate_matrix(translate_rel(a, w), 0.0)


def translate_y_rel_op(a: float, w: int, h: int) -> Matrix:
    return translate_matrix(0.0, translate_rel(a, h))


def fill_color(fillcolor: float | Sequence[float] | str | None, mode: str = "RGB") -> tuple:
    """The pixel `Image.new(mode, size, fillcolor)` paints (an int for RGB is packed
    0xBBGGRR, a str is a colour name): Pillow itself computes it."""
    from PIL import Image  # host-only, and only for this one-off conversion

    if isinstance(fillcolor, list):
        fillcolor = tuple(fillcolor)
    px = Image.new(mode, (1, 1), fillcolor).getpixel((0, 0))
    return tuple(px) if isinstance(px, tuple) else (px,)


# ---------------------------------------------------------------- batched ops


def _fill_tensor(fill: Fill, n: int, c: int, device: torch.device) -> torch.Tensor:
    if fill is None:
        fill = 0  # Pillow zeroes the new image
    t = torch.as_tensor(fill, dtype=torch.uint8).to(device, non_blocking=True)
    return t.reshape(-1).expand(c).expand(n, c) if t.numel() in (1, c) else t.reshape(n, c)


def transform_affine(
    imgs: torch.Tensor,
    matrices: torch.Tensor | np.ndarray | Sequence[Matrix],
    resample: int = BICUBIC,
    fill: Fill = None,
) -> torch.Tensor:
    """`img.transform(img.size, AFFINE, matrix, resample, fillcolor=fill)` per view.

    `matrices` float64 [n, 6] (Pillow's inverse map, output -> input; computed on the
    host, and best already on the images' device: a host copy here is moved without
    waiting), `resample` one of NEAREST/BILINEAR/BICUBIC for the whole call, `fill` uint8
    [n, C], [C] or a scalar (see `fill_color`; None is black).
    """
    n, h, w, c = imgs.shape
    if resample not in (NEAREST, BILINEAR, BICUBIC):
        raise ValueError(f"resample {resample} is not NEAREST, BILINEAR or BICUBIC")
    if not isinstance(matrices, torch.Tensor):
        matrices = torch.from_numpy(np.asarray(matrices, dtype=np.float64))
    mats = matrices.to(torch.float64).reshape(n, 6).to(imgs.device, non_blocking=True)
    fills = _fill_tensor(fill, n, c, imgs.device)
    out = torch.empty_like(imgs)
    chunk = _CHUNK_PIXELS.get(imgs.device.type, _CHUNK_PIXELS["cuda"])
    step = max(1, chunk // (h * w))
    for s in range(0, n, step):
        sl = slice(s, min(n, s + step))
        if resample == NEAREST:  # its coordinate maps are host arithmetic (rare: timm's
            # auto-augment draws bilinear or bicubic)
            out[sl] = _nearest(imgs[sl], mats[sl].cpu().numpy(), fills[sl])
            continue
        cubic = resample == BICUBIC
        table = _row_terms(imgs[sl].permute(0, 3, 1, 2), w, cubic)
        rows = max(1, chunk // w)  # an image larger than a chunk: a band of rows at a time
        for top in range(0, h, rows):
            band = slice(top, min(h, top + rows))
            out[sl, band] = _interpolated(table, cubic, (h, w), band, mats[sl], fills[sl])
    return out


def rotate(
    imgs: torch.Tensor, degrees: Sequence[float], resample: int = BICUBIC, fill: Fill = None
) -> torch.Tensor:
    """timm's `rotate(img, degrees, resample=, fillcolor=)`, i.e. `Image.rotate`."""
    _, h, w, _ = imgs.shape
    return transform_affine(imgs, [rotate_matrix(d, w, h) for d in degrees], resample, fill)


def shear_x(
    imgs: torch.Tensor, factors: Sequence[float], resample: int = BICUBIC, fill: Fill = None
) -> torch.Tensor:
    """timm's `shear_x(img, factor, ...)`."""
    return transform_affine(imgs, [shear_matrix(f, "x") for f in factors], resample, fill)


def shear_y(
    imgs: torch.Tensor, factors: Sequence[float], resample: int = BICUBIC, fill: Fill = None
) -> torch.Tensor:
    """timm's `shear_y(img, factor, ...)`."""
    return transform_affine(imgs, [shear_matrix(f, "y") for f in factors], resample, fill)


def translate_x(
    imgs: torch.Tensor, pixels: Sequence[float], resample: int = BICUBIC, fill: Fill = None
) -> torch.Tensor:
    """timm's `translate_x_abs(img, pixels, ...)`; for `translate_x_rel(img, pct)` pass
    `translate_rel(pct, width)`."""
    return transform_affine(imgs, [translate_matrix(p, 0.0) for p in pixels], resample, fill)


def translate_y(
    imgs: torch.Tensor, pixels: Sequence[float], resample: int = BICUBIC, fill: Fill = None
) -> torch.Tensor:
    """timm's `translate_y_abs(img, pixels, ...)`; for `translate_y_rel(img, pct)` pass
    `translate_rel(pct, height)`."""
    return transform_affine(imgs, [translate_matrix(0.0, p) for p in pixels], resample, fill)


# ---------------------------------------------------------------- BILINEAR / BICUBIC


def _source_coords(mats: torch.Tensor, band: slice, w: int) -> torch.Tensor:
    """`a0 (x + 0.5) + a1 (y + 0.5) + a2` and `a3 (x + 0.5) + a4 (y + 0.5) + a5` for the
    output rows `band`, [n, 2, rows, W] float64 (x' then y'), each product and sum rounded
    on its own, in C's left-to-right order."""
    a = mats.view(-1, 2, 3)
    xs = torch.arange(w, dtype=torch.float64, device=mats.device) + 0.5  # exact
    ys = torch.arange(band.start, band.stop, dtype=torch.float64, device=mats.device) + 0.5
    px = torch.mul(a[:, :, 0, None], xs)[:, :, None, :]
    py = torch.mul(a[:, :, 1, None], ys)[:, :, :, None]
    return torch.add(torch.add(px, py), a[:, :, 2, None, None])


_REACH = 4  # floors are capped to -4 .. size + 4: every tap beyond is an edge-clamped one
# The first pass's terms from the k edge-clamped columns around a floor: bicubic p1..p4 of
# `BICUBIC` over columns i - 1 .. i + 2, bilinear (a, b - a) over i, i + 1.
_TERMS = {
    True: ((0, 1, 0, 0), (-1, 0, 1, 0), (2, -2, 1, -1), (-1, 1, -1, 1)),
    False: ((1, 0), (-1, 1)),
}


@functools.lru_cache(maxsize=16)
def _terms_matrix(cubic: bool, device: torch.device) -> torch.Tensor:
    return torch.tensor(_TERMS[cubic], dtype=torch.float64).to(device, non_blocking=True)


def _row_terms(planes: torch.Tensor, w: int, cubic: bool) -> torch.Tensor:
    """The first pass's terms (`_TERMS`) for every source row and every capped floor
    column. They are sums of uint8 values by small integers, so exact whatever the order:
    computed once per source pixel rather than once per output pixel and tap row.
    planes: uint8-valued [n, C, H, W]; returns int16 [n, k * C, H * W'], W' = w + 2 *
    _REACH + 1 columns, terms major (|terms| <= 4 * 255: a quarter of float64's memory,
    and each op that reads them promotes them to float64 exactly)."""
    n, c, h, _ = planes.shape
    k = 4 if cubic else 2
    dev = planes.device
    cols = torch.arange(-_REACH, w + _REACH + 1, device=dev)
    taps = torch.add(cols, torch.arange(k, device=dev).sub_(1 if cubic else 0)[:, None])
    v = planes[..., taps.clamp_(0, w - 1)].to(torch.float64)  # [n, C, H, k, W']
    terms = torch.matmul(_terms_matrix(cubic, dev), v).to(torch.int16)  # [n, C, H, k, W']
    return terms.permute(0, 3, 1, 2, 4).reshape(n, k * c, -1)


def _horner(terms: list[torch.Tensor], d: torch.Tensor) -> torch.Tensor:
    """`p1 + d (p2 + d (p3 + d p4))` (bicubic) or `a + (b - a) d` (bilinear): one rounding
    per operation, in Geometry.c's order (no FMA). In place after the first product: IEEE
    products and sums are commutative, so `v *= d; v += t` rounds as `t + d * v`."""
    v = torch.mul(d, terms[-1])
    for t in reversed(terms[1:-1]):
        v.add_(t).mul_(d)
    return v.add_(terms[0])


def _cubic(
    v1: torch.Tensor, v2: torch.Tensor, v3: torch.Tensor, v4: torch.Tensor, d: torch.Tensor
) -> torch.Tensor:
    """Geometry.c's `BICUBIC`: p1 + d (p2 + d (p3 + d p4)), one rounding per operation."""
    p2 = torch.add(torch.neg(v1), v3)
    p3 = torch.sub(torch.add(torch.mul(torch.sub(v1, v2), 2.0), v3), v4)
    p4 = torch.add(torch.sub(torch.add(torch.neg(v1), v2), v3), v4)
    return _horner([v2, p2, p3, p4], d)


def _linear(a: torch.Tensor, b: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Geometry.c's `BILINEAR`: a + (b - a) d."""
    return torch.add(a, torch.mul(torch.sub(b, a), d))


def _interpolated(
    table: torch.Tensor,
    cubic: bool,
    size: tuple[int, int],
    band: slice,
    mats: torch.Tensor,
    fills: torch.Tensor,
) -> torch.Tensor:
    """Output rows `band` of the BICUBIC (`cubic`) or BILINEAR transform of the images whose
    first-pass terms are `table` (`_row_terms`): uint8 [n, rows, W, C]. All k tap rows are
    gathered and interpolated along x in one go, then along y."""
    h, w = size
    n, kc, _ = table.shape
    k = 4 if cubic else 2
    c, rows = kc // k, band.stop - band.start
    xy = _source_coords(mats, band, w)
    inside = (xy >= 0).all(1) & (xy[:, 0] < w) & (xy[:, 1] < h)
    v = torch.sub(xy, 0.5)  # `v -= 0.5; i = FLOOR(v); d = v - i` (exact)
    fl = torch.floor(v)
    d = torch.sub(v, fl)
    # Floors capped (exact integers in float64), then the tap rows iy - 1 .. iy + 2
    # (bicubic) or iy, iy + 1, edge-clamped, at the capped floor column's terms.
    col = fl[:, 0].clamp(-_REACH, w + _REACH).add_(_REACH)
    top = fl[:, 1, None].clamp(-_REACH, h + _REACH)
    shift = torch.arange(k, dtype=torch.float64, device=mats.device).sub_(1 if cubic else 0)
    ry = torch.add(top, shift[:, None, None]).clamp_(0, h - 1)  # [n, k, rows, W]
    index = ry.mul_(w + 2 * _REACH + 1).add_(col[:, None]).to(torch.int64)
    index = index.reshape(n, 1, -1).expand(n, kc, -1)
    terms = torch.gather(table, 2, index).reshape(n, k, c, k, rows, w).unbind(1)
    lines = _horner(list(terms), d[:, None, None, 0]).unbind(2)  # k of [n, C, rows, W]
    dy = d[:, None, 1]
    v = _cubic(*lines, dy) if cubic else _linear(*lines, dy)
    # bicubic: <= 0 -> 0, >= 255 -> 255, else (UINT8) truncation; bilinear stays in range.
    px = v.clamp_(0.0, 255.0).to(torch.uint8).permute(0, 2, 3, 1)
    return torch.where(inside[..., None], px, fills.reshape(n, 1, 1, c))


# ---------------------------------------------------------------- NEAREST


def _coord(v: np.ndarray) -> np.ndarray:
    """Geometry.c's `COORD`: -1 below zero, else truncation."""
    return np.where(v < 0.0, -1, np.trunc(np.clip(v, -1.0, 2.0**40))).astype(np.int64)


def _running(start: float, step: float, count: int) -> np.ndarray:
    """`start, start + step, (start + step) + step, ...`: C's `xo += a` running sum."""
    seq = np.full(count, step, dtype=np.float64)
    if count:
        seq[0] = start
    return np.add.accumulate(seq)  # strictly sequential, one rounding per step


def _fits_fixed(a: np.ndarray, w: int, h: int) -> bool:
    """`check_fixed` at the four corners: 16.16 fixed point can hold the coordinates."""
    return all(
        abs(x * a[0] + y * a[1] + a[2]) < 32768.0 and abs(x * a[3] + y * a[4] + a[5]) < 32768.0
        for x, y in ((0, 0), (w, h), (0, h), (w, 0))
    )


def _nearest_map(a: np.ndarray, h: int, w: int, device: torch.device) -> tuple:
    """Source column and row of every output pixel ([H, W] int64; out of range = fill)."""
    a = [float(v) for v in a]
    if a[1] == 0 and a[3] == 0:  # ImagingScaleAffine
        sx = _coord(_running(a[2] + a[0] * 0.5, a[0], w))[None, :]
        sy = _coord(_running(a[5] + a[4] * 0.5, a[4], h))[:, None]
        sx, sy = np.broadcast_arrays(sx, sy)
    elif _fits_fixed(np.asarray(a), w, h):  # affine_fixed: exact integers, on the device

        def fix(v: float) -> int:
            return math.floor(v * 65536.0 + 0.5)

        k0, k1, k3, k4 = fix(a[0]), fix(a[1]), fix(a[3]), fix(a[4])
        k2, k5 = fix(a[2] + a[0] * 0.5 + a[1] * 0.5), fix(a[5] + a[3] * 0.5 + a[4] * 0.5)
        x = torch.arange(w, device=device, dtype=torch.int64)[None, :]
        y = torch.arange(h, device=device, dtype=torch.int64)[:, None]
        sx = torch.bitwise_right_shift(k2 + y * k1 + x * k0, 16)  # >> 16 floors, like C
        sy = torch.bitwise_right_shift(k5 + y * k4 + x * k3, 16)
        return sx, sy
    else:  # float running sums, row by row (coordinates beyond +-32768)
        xo = _running(a[2] + a[1] * 0.5 + a[0] * 0.5, a[1], h)
        yo = _running(a[5] + a[4] * 0.5 + a[3] * 0.5, a[4], h)
        sx = _coord(np.stack([_running(s, a[0], w) for s in xo]).reshape(h, w))
        sy = _coord(np.stack([_running(s, a[3], w) for s in yo]).reshape(h, w))
    return torch.from_numpy(np.ascontiguousarray(sx)).to(device), torch.from_numpy(
        np.ascontiguousarray(sy)
    ).to(device)


def _nearest(imgs: torch.Tensor, mats: np.ndarray, fills: torch.Tensor) -> torch.Tensor:
    n, h, w, c = imgs.shape
    maps = [_nearest_map(m, h, w, imgs.device) for m in mats]
    sx = torch.stack([m[0] for m in maps])
    sy = torch.stack([m[1] for m in maps])
    inside = (sx >= 0) & (sx < w) & (sy >= 0) & (sy < h)
    base = torch.arange(n, device=imgs.device).reshape(n, 1, 1) * (h * w)
    idx = base + sy.clamp(0, h - 1) * w + sx.clamp(0, w - 1)
    px = imgs.reshape(n * h * w, c)[idx]
    return torch.where(inside[..., None], px, fills.reshape(n, 1, 1, c))
