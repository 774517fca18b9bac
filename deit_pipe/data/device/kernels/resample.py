"""Crop + resize as batched integer kernels, bit-identical to Pillow 13.0.0's 8-bit resize.

Mirrors, for uint8 L/RGB images (`Image.crop(box).resize(size, resample)` with no `box=` and
no `reducing_gap`, which is what torchvision's `F.resized_crop` and `F.resize` call):

- `Image.resize` (Image.py): a same-size request is a copy.
- `_resize` (_imaging.c): an integer box of the requested size is `ImagingCrop`; NEAREST goes
  to `ImagingTransform(AFFINE)` -> `ImagingScaleAffine` (Geometry.c), every other filter to
  `ImagingResample`.
- `ImagingScaleAffine`: source index `COORD(xo)` with `xo = a[0] * 0.5`, then `xo += a[0]`
  once per output pixel (an accumulated double, reproduced term by term in `_nearest_axis`).
- `ImagingResample` / `ImagingResampleInner` (Resample.c): `need_horizontal`/`need_vertical`
  skip a pass whose axis keeps its size; 13.0.0 picks the pass order per call (`_pass_order`).
- `precompute_coeffs`, `normalize_coeffs_8bpc` (host, NumPy float64, operation for operation)
  and `ImagingResampleHorizontal_8bpc` / `ImagingResampleVertical_8bpc` (device: exact
  integer sums of pixel x int32 coefficient, as float64 bmm's, plus `1 << 21`, arithmetic
  shift by `PRECISION_BITS` = 22, clip to 0..255, a uint8 image between the passes).

The filters are Pillow's: BOX, BILINEAR, HAMMING, BICUBIC (a = -0.5), LANCZOS, MKS2013 and
MKS2021 (the last two are new in 13.0), and NEAREST. Sizes and boxes are in Pillow's order:
`(width, height)` and `(left, top, right, bottom)`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

PRECISION_BITS = 22  # Resample.c: (32 - 8 - 2)
_HALF = 1 << (PRECISION_BITS - 1)
_ONE = 1 << PRECISION_BITS

# Pillow's `Image.Resampling` values (also `IMAGING_TRANSFORM_*` in Imaging.h).
NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING, MKS2013, MKS2021 = 0, 1, 2, 3, 4, 5, 6, 7

_Kernel = Callable[[np.ndarray], np.ndarray]


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5  # `#define a -0.5`; the expressions keep C's left-to-right evaluation order
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _box(x: np.ndarray) -> np.ndarray:
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)  # half-open, not symmetric


def _libm(fn: Callable[[float], float], x: np.ndarray) -> np.ndarray:
    # Python's `math` calls the C libm the wheel links; NumPy's SIMD sin/cos may differ by ulps.
    return np.array([fn(v) for v in x.ravel().tolist()], dtype=np.float64).reshape(x.shape)


def _sinc(x: np.ndarray) -> np.ndarray:
    px = x * math.pi
    safe = np.where(x == 0.0, 1.0, px)
    return np.where(x == 0.0, 1.0, _libm(math.sin, safe) / safe)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


def _hamming(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    px = np.where(x == 0.0, 1.0, x * math.pi)
    # `0.54f + 0.46f * cos(x)`: float literals, promoted to double
    window = float(np.float32(0.54)) + float(np.float32(0.46)) * _libm(math.cos, px)
    value = _libm(math.sin, px) / px * window
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, value))


def _mks2013(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)  # pow(v, 2) is exact in glibc, so it is v * v
    return np.select(
        [x < 0.5, x < 1.5, x < 2.5],
        [
            17.0 / 16.0 - 7.0 / 4.0 * (x * x),
            (1.0 - x) * (7.0 / 4.0 - x),
            -1.0 / 8.0 * ((x - 2.5) ** 2),
        ],
        0.0,
    )


def _mks2021(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.select(
        [x < 0.5, x < 1.5, x < 2.5, x < 3.5, x < 4.5],
        [
            577.0 / 576.0 - 239.0 / 144.0 * (x * x),
            35.0 / 36.0 * (x - 1.0) * (x - 239.0 / 140.0),
            1.0 / 6.0 * (x - 2.0) * (65.0 / 24.0 - x),
            1.0 / 36.0 * (x - 3.0) * (x - 15.0 / 4.0),
            -1.0 / 288.0 * ((x - 4.5) * (x - 4.5)),
        ],
        0.0,
    )


FILTERS: dict[int, tuple[_Kernel, float]] = {  # Resample.c's `struct filter`: (fn, support)
    BOX: (_box, 0.5),
    BILINEAR: (_bilinear, 1.0),
    HAMMING: (_hamming, 1.0),
    BICUBIC: (_bicubic, 2.0),
    LANCZOS: (_lanczos, 3.0),
    MKS2013: (_mks2013, 2.5),
    MKS2021: (_mks2021, 4.5),
}


# ----------------------------------------------------------------------------- host: one axis
@dataclass(frozen=True)
class AxisTaps:
    """One axis of one view: output `i` is `sum_k src[start[i] + k] * coeffs[i, k]` (int32
    coefficients in units of 2**-22, zero past the tap count), in source-image coordinates."""

    start: np.ndarray  # int64 [out]
    coeffs: np.ndarray  # int32 [out, K]
    resized: bool  # Pillow runs this pass (False: identity taps, the pass is skipped)

    @property
    def span(self) -> tuple[int, int]:
        """First source index read and one past the last (Pillow's `ybox_first`/`ybox_last`)."""
        count = np.count_nonzero(np.cumsum(self.coeffs[:, ::-1] != 0, axis=1), axis=1)
        return int(self.start.min()), int((self.start + np.maximum(count, 1)).max())


def precompute_coeffs(
    in_size: int, in0: float, in1: float, out_size: int, resample: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`precompute_coeffs` of Resample.c: (xmin, xmax, kk[out, ksize]) in float64, op for op."""
    kernel, filter_support = FILTERS[resample]
    scale = float(np.float32(in1) - np.float32(in0)) / out_size  # (double)(float - float)
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = float(np.float32(in0)) + (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # (int) truncates
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    inside = taps[None, :] < xmax[:, None]
    inv_filterscale = 1.0 / filterscale  # 12.3+ multiplies by the inverse
    arg = ((taps[None, :] + xmin[:, None]) - center[:, None] + 0.5) * inv_filterscale
    kk = np.where(inside, kernel(arg), 0.0)
    ww = np.zeros(out_size)
    for x in range(ksize):  # `ww += w` in tap order; the padded zeros add nothing
        ww = ww + kk[:, x]
    kk = np.where(ww[:, None] != 0.0, kk / np.where(ww == 0.0, 1.0, ww)[:, None], kk)
    return xmin, xmax, kk


def normalize_coeffs_8bpc(kk: np.ndarray) -> np.ndarray:
    """`normalize_coeffs_8bpc`: `(int)(k * 2**22 -/+ 0.5)`, truncated toward zero, as int32."""
    scaled = kk * float(_ONE)
    return np.trunc(np.where(kk < 0, -0.5 + scaled, 0.5 + scaled)).astype(np.int32)


def _resample_axis(in_size: int, out_size: int, resample: int, offset: int) -> AxisTaps:
    xmin, coeffs = _axis_coeffs(in_size, out_size, resample)
    return AxisTaps(xmin + offset, coeffs, resized=True)


@functools.lru_cache(maxsize=4096)
def _axis_coeffs(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray]:
    """One axis's taps at offset 0. A loader collates thousands of crops whose sides take a
    few hundred values, so most are already computed (4,096 entries of ≈ 10 KB at 224²)."""
    xmin, _, kk = precompute_coeffs(in_size, 0.0, float(in_size), out_size, resample)
    coeffs = normalize_coeffs_8bpc(kk)
    xmin.flags.writeable = coeffs.flags.writeable = False  # shared by every view of that size
    return xmin, coeffs


def _identity_axis(size: int, offset: int) -> AxisTaps:
    # A skipped pass as one tap of weight 2**22: (v << 22 | 1 << 21) >> 22 == v, exactly.
    return AxisTaps(
        np.arange(size, dtype=np.int64) + offset, np.full((size, 1), _ONE, np.int32), False
    )


def _nearest_axis(in_size: int, out_size: int, offset: int) -> AxisTaps:
    """`ImagingScaleAffine`'s `xintab`: `COORD(xo)`, `xo` accumulated in double per pixel."""
    step = float(np.float32(in_size)) / out_size  # a[0] = (double)(box[2] - box[0]) / xsize
    terms = np.full(out_size, step)
    terms[0] = 0.0 + step * 0.5  # xo = a[2] + a[0] * 0.5
    coords = np.add.accumulate(terms)  # sequential, like `xo += a[0]`
    index = np.where(coords < 0.0, -1, coords.astype(np.int64))
    if index.min() < 0 or index.max() >= in_size:
        raise ValueError("nearest index outside the source")  # cannot happen for 0 < step
    return AxisTaps(index + offset, np.full((out_size, 1), _ONE, np.int32), True)


# ----------------------------------------------------------------------------- host: one view
@dataclass(frozen=True)
class ViewTaps:
    """One view's resample: the horizontal and vertical taps and Pillow's pass order."""

    x: AxisTaps
    y: AxisTaps
    vertical_first: bool

    @property
    def out_size(self) -> tuple[int, int]:
        return len(self.x.start), len(self.y.start)


def _pass_order(in_size: tuple[int, int], out_size: tuple[int, int]) -> bool:
    """True when 13.0.0's `ImagingResampleInner` runs the vertical pass first: the height
    shrinks by more than twice as many pixels as the width does,

        out_h < in_h and (in_h - out_h) > 2 * (in_w - out_w)

    which includes every call that shrinks the height but not the width. 12.3 always ran the
    horizontal pass first. The rule comes from Pillow PR #9549 ("If height is scaled down
    significantly more than width, resize vertically first"), whose merged C source is not
    in our mirror (its last stored head reads `!(xsize >= box_w && ysize < box_h)`); the
    installed 13.0.0 wheel agrees with this form exactly, ties (== 2x) going horizontal
    first, and the golden tests pin it. The box is the whole (cropped) image here.
    """
    (w, h), (ow, oh) = in_size, out_size
    return oh < h and (h - oh) > 2 * (w - ow)


def resize_taps(
    in_size: tuple[int, int],
    out_size: tuple[int, int],
    resample: int,
    offset: tuple[int, int] = (0, 0),
) -> ViewTaps:
    """`im.resize(out_size, resample)` of an `in_size` (w, h) image whose pixel (0, 0) sits at
    `offset` (x, y) of the batched source: Image.resize -> _resize -> ImagingResample."""
    (w, h), (ow, oh), (ox, oy) = in_size, out_size, offset
    if min(w, h, ow, oh) < 1:
        raise ValueError(f"empty resize {in_size} -> {out_size}")
    if (w, h) == (ow, oh):  # Image.resize's copy, and _resize's ImagingCrop
        return ViewTaps(_identity_axis(ow, ox), _identity_axis(oh, oy), False)
    if resample == NEAREST:
        return ViewTaps(_nearest_axis(w, ow, ox), _nearest_axis(h, oh, oy), False)
    if resample not in FILTERS:
        raise ValueError(f"unknown resampling filter {resample}")
    # need_horizontal / need_vertical: an axis that keeps its size is not resampled at all
    x = _resample_axis(w, ow, resample, ox) if ow != w else _identity_axis(ow, ox)
    y = _resample_axis(h, oh, resample, oy) if oh != h else _identity_axis(oh, oy)
    return ViewTaps(x, y, _pass_order((w, h), (ow, oh)))


def crop_resize_taps(
    box: tuple[int, int, int, int], out_size: tuple[int, int], resample: int
) -> ViewTaps:
    """`img.crop(box).resize(out_size, resample)`, i.e. torchvision's `F.resized_crop(img, top,
    left, height, width, size[::-1], interpolation)` on a PIL image. `box` is an integer
    (left, top, right, bottom) inside the image: the crop is a plain copy, and the filter
    support is cut (and renormalised) at the crop's edges, unlike `resize(box=...)`."""
    left, top, right, bottom = (int(v) for v in box)
    if left < 0 or top < 0 or right <= left or bottom <= top:
        raise ValueError(f"crop box {box} is empty or outside the image")
    return resize_taps((right - left, bottom - top), out_size, resample, (left, top))


def tv_resize_size(in_size: tuple[int, int], size: int) -> tuple[int, int]:
    """(w, h) that torchvision's `Resize(size)` (an int) gives: `_compute_resized_output_size`
    in torchvision/transforms/functional.py sets the shorter side to `size` and the longer to
    `int(size * long / short)` (no max_size)."""
    w, h = in_size
    short, long = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if w <= h else (new_long, new_short)


def eval_taps(
    in_size: tuple[int, int], resize: int, crop: tuple[int, int], resample: int
) -> ViewTaps:
    """timm's eval transform on a PIL image: torchvision `Resize(resize, resample)` then
    `CenterCrop(crop)` with `crop` as (w, h). `F.resize` returns the image itself when the size
    is unchanged (the identity here too); `F.center_crop` takes `int(round((h - th) / 2.0))`.
    A crop larger than the resized image (torchvision pads it) is not supported."""
    new_w, new_h = tv_resize_size(in_size, resize)
    cw, ch = crop
    if cw > new_w or ch > new_h:
        raise ValueError(f"center crop {crop} exceeds the resized image {(new_w, new_h)}")
    full = resize_taps(in_size, (new_w, new_h), resample)
    top = int(round((new_h - ch) / 2.0))
    left = int(round((new_w - cw) / 2.0))
    # Cropping after a separable resize keeps whole output rows/columns: slice the taps.
    return ViewTaps(
        _slice_axis(full.x, left, cw), _slice_axis(full.y, top, ch), full.vertical_first
    )


def _slice_axis(axis: AxisTaps, first: int, size: int) -> AxisTaps:
    sl = slice(first, first + size)
    return AxisTaps(axis.start[sl], axis.coeffs[sl], axis.resized)


# ----------------------------------------------------------------------------- batched taps
@dataclass(frozen=True)
class PassGroup:
    """The views of a batch that share a pass order, with their taps padded to the group's
    widest kernel by zero coefficients. `first`/`span` window the first pass to the rows
    (horizontal first) or columns (vertical first) the second pass reads, as Pillow's
    `ybox_first`/`ybox_last` do; `x_copy`/`y_copy` mark axes that are pure index copies."""

    vertical_first: bool
    index: torch.Tensor | None  # int64 [G] views of the batch; None: the whole batch in order
    x_start: torch.Tensor  # int64 [G, out_w]
    x_coeffs: torch.Tensor  # int32 [G, out_w, Kx]
    y_start: torch.Tensor  # int64 [G, out_h]
    y_coeffs: torch.Tensor  # int32 [G, out_h, Ky]
    first: torch.Tensor  # int64 [G]
    span: int
    x_copy: bool
    y_copy: bool

    def to(self, device: torch.device | str) -> PassGroup:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return PassGroup(
            self.vertical_first, move(self.index), move(self.x_start), move(self.x_coeffs),
            move(self.y_start), move(self.y_coeffs), move(self.first), self.span,
            self.x_copy, self.y_copy,
        )  # fmt: skip


@dataclass(frozen=True)
class BatchTaps:
    """A batch of `ViewTaps` (one output size) as tensors, grouped by pass order (<= 2)."""

    batch: int
    out_size: tuple[int, int]  # (w, h)
    groups: tuple[PassGroup, ...]

    def to(self, device: torch.device | str) -> BatchTaps:
        return BatchTaps(self.batch, self.out_size, tuple(g.to(device) for g in self.groups))


def _pad_coeffs(axes: Sequence[AxisTaps]) -> np.ndarray:
    k = max(a.coeffs.shape[1] for a in axes)
    out = np.zeros((len(axes), len(axes[0].start), k), np.int32)
    for i, a in enumerate(axes):
        out[i, :, : a.coeffs.shape[1]] = a.coeffs
    return out


def _is_copy(axes: Sequence[AxisTaps]) -> bool:
    return all(a.coeffs.shape[1] == 1 and bool((a.coeffs == _ONE).all()) for a in axes)


def _group(views: Sequence[ViewTaps], index: list[int] | None, vertical_first: bool) -> PassGroup:
    xs, ys = [v.x for v in views], [v.y for v in views]
    # the first pass runs over the window of the other axis that the second pass reads
    spans = [(a.span if vertical_first else b.span) for a, b in zip(xs, ys, strict=True)]
    return PassGroup(
        vertical_first=vertical_first,
        index=None if index is None else torch.tensor(index, dtype=torch.int64),
        x_start=torch.from_numpy(np.stack([a.start for a in xs]).astype(np.int64)),
        x_coeffs=torch.from_numpy(_pad_coeffs(xs)),
        y_start=torch.from_numpy(np.stack([a.start for a in ys]).astype(np.int64)),
        y_coeffs=torch.from_numpy(_pad_coeffs(ys)),
        first=torch.tensor([s[0] for s in spans], dtype=torch.int64),
        span=max(s[1] - s[0] for s in spans),
        x_copy=_is_copy(xs),
        y_copy=_is_copy(ys),
    )


def stack_taps(views: Sequence[ViewTaps]) -> BatchTaps:
    """The batched taps of `views` (all of one output size), on the CPU; `.to(device)` it."""
    if not views:
        raise ValueError("no views")
    out_size = views[0].out_size
    if any(v.out_size != out_size for v in views):
        raise ValueError("every view of a batch must have the same output size")
    orders = [v.vertical_first for v in views]
    groups = []
    for vertical_first in (False, True):
        index = [i for i, o in enumerate(orders) if o == vertical_first]
        if index:
            whole = len(index) == len(views)
            groups.append(
                _group([views[i] for i in index], None if whole else index, vertical_first)
            )
    return BatchTaps(len(views), out_size, tuple(groups))


# ----------------------------------------------------------------------------- device
# Layout between the passes: [G, rows, C, cols] uint8, so that both passes are one bmm each:
# the horizontal pass contracts the last dim, the vertical pass the rows.


def _band_matrix(start: torch.Tensor, coeffs: torch.Tensor, n_in: int) -> torch.Tensor:
    """The taps as a dense float64 [G, n_in, out] matrix. Zero-padded taps past the input are
    clamped onto its last index: adding 0.0 there changes nothing, whatever the order."""
    g, n_out, k = coeffs.shape
    taps = torch.arange(k, device=start.device)
    rows = (start[:, :, None] + taps).clamp_(max=n_in - 1)  # [G, out, K]
    flat = rows * n_out + torch.arange(n_out, device=start.device)[:, None]
    dense = torch.zeros((g, n_in * n_out), dtype=torch.float64, device=start.device)
    dense.scatter_add_(1, flat.reshape(g, -1), coeffs.reshape(g, -1).to(torch.float64))
    return dense.view(g, n_in, n_out)


def _clip8(sums: torch.Tensor) -> torch.Tensor:
    """`clip8(ss)`: (ss + (1 << 21)) >> 22, clipped to 0..255, on exact integer sums."""
    acc = sums.to(torch.int64) + _HALF
    return (acc >> PRECISION_BITS).clamp_(0, 255).to(torch.uint8)


def _horizontal(
    t: torch.Tensor, start: torch.Tensor, coeffs: torch.Tensor, copy: bool
) -> torch.Tensor:
    """`ImagingResampleHorizontal_8bpc` on t [G, R, C, W] -> [G, R, C, out_w].

    A float64 bmm over the dense band matrix is exact: the pixels and int32 coefficients are
    integers, every product is below 2**31 and every partial sum below 2**53, so no addition
    rounds, in any order, with or without FMA (cuBLAS, MKL) and on any device. It equals
    Pillow's int32 `ss0` accumulation whenever that does not overflow (it cannot for these
    filters: |ss0| < 255 * sum|k| * 2**22 < 2**31)."""
    g, r, c, w = t.shape
    if copy:  # one tap of weight 2**22 per output: a gather
        return t.gather(3, start[:, None, None, :].expand(g, r, c, start.shape[1]))
    sums = torch.bmm(t.reshape(g, r * c, w).to(torch.float64), _band_matrix(start, coeffs, w))
    return _clip8(sums).view(g, r, c, -1)


def _vertical(
    t: torch.Tensor, start: torch.Tensor, coeffs: torch.Tensor, copy: bool
) -> torch.Tensor:
    """`ImagingResampleVertical_8bpc` on t [G, H, C, W] -> [G, out_h, C, W] (exact as above)."""
    g, h, c, w = t.shape
    if copy:
        return t.gather(1, start[:, :, None, None].expand(g, start.shape[1], c, w))
    band = _band_matrix(start, coeffs, h).transpose(1, 2)  # [G, out_h, H]
    sums = torch.bmm(band, t.reshape(g, h, c * w).to(torch.float64))
    return _clip8(sums).view(g, -1, c, w)


def _run_group(images: torch.Tensor, g: PassGroup) -> torch.Tensor:
    """Both passes of a group, in its order: images [G, H, C, W] -> [G, out_h, C, out_w].

    The first pass runs only over the window of the other axis that the second pass reads
    (Pillow's `ybox_first`..`ybox_last` for horizontal-first); the second pass's taps are
    shifted into that window. Window positions past a view's image read other pixels under
    zero weights only."""
    n, h, c, w = images.shape
    window = torch.arange(g.span, device=images.device)
    first = g.first[:, None]
    if g.vertical_first:
        cols = (first + window).clamp_(max=w - 1)  # [G, span]
        t = images.gather(3, cols[:, None, None, :].expand(n, h, c, g.span))
        t = _vertical(t, g.y_start, g.y_coeffs, g.y_copy)
        return _horizontal(t, g.x_start - first, g.x_coeffs, g.x_copy)
    rows = (first + window).clamp_(max=h - 1)
    t = images.gather(1, rows[:, :, None, None].expand(n, g.span, c, w))
    t = _horizontal(t, g.x_start, g.x_coeffs, g.x_copy)
    return _vertical(t, g.y_start - first, g.y_coeffs, g.y_copy)


def resize_batch(images: torch.Tensor, taps: BatchTaps) -> torch.Tensor:
    """Render a batch of crop + resize views: `images` uint8 [B, Hmax, Wmax, C] holds each
    view's source image in its top-left corner (padding is never read under a nonzero
    weight); `taps` (on the same device) come from `stack_taps`. Returns uint8
    [B, out_h, out_w, C], byte-identical to Pillow 13.0.0 on every view."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError("images must be uint8 [B, H, W, C]")
    if images.shape[0] != taps.batch:
        raise ValueError(f"{images.shape[0]} images for taps of {taps.batch} views")
    planar = images.permute(0, 1, 3, 2)  # [B, H, C, W]: both passes become bmm's
    out_w, out_h = taps.out_size
    if len(taps.groups) == 1 and taps.groups[0].index is None:
        return _run_group(planar, taps.groups[0]).permute(0, 1, 3, 2).contiguous()
    out = images.new_empty((taps.batch, out_h, images.shape[3], out_w))
    for g in taps.groups:  # at most two pass orders
        out.index_copy_(0, g.index, _run_group(planar.index_select(0, g.index), g))
    return out.permute(0, 1, 3, 2).contiguous()
