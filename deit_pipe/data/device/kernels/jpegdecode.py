"""A JPEG crop's pixels from its quantised DCT blocks as batched integer kernels, bit-identical
to the libjpeg-turbo that Pillow 13.0.0 bundles (3.1) at Pillow's settings.

The host stops at the entropy decoding (`csrc/jpeg_region.c`, `coefficients`); the rest of a
decode is integer arithmetic, run here on the device that consumes the views:

- `jpeg_idct_islow` (jidctint.c): dequantise, then the column pass (`CONST_BITS` 13,
  `PASS1_BITS` 2, `DESCALE` by 11) and the row pass (`DESCALE` by 18), plus `CENTERJSAMPLE`.
  Its zero-AC shortcuts give the full formula's values, so there are none here. A pass
  only adds and multiplies by constants, so it runs as one exact float64 matrix product
  (two launches for the batch's blocks instead of a hundred int32 ops). The last
  step clamps to 0..255, as the SIMD versions Pillow's wheels run (SSE2/AVX2, NEON) saturate;
  the C table's wrap-around differs only for values a valid 8-bit encoder never produces.
- `h2v1_fancy_upsample`, `h1v2_fancy_upsample`, `h2v2_fancy_upsample` (jdsample.c): the
  triangle filter, 3/4 nearer + 1/4 further sample in each upsampled dimension, with the
  image's edge sample repeated (jdmainct.c's context rows at the top and bottom, the first
  and last columns' special cases): here one separable 2x2-tap integer filter a view, whose
  taps, weights and biases are computed on the device from 11 numbers a view
  (`crop_maps`), so that 4:4:4, 4:2:2, 4:4:0 and 4:2:0 views share the kernel launches;
  4:4:4 and grayscale are its identity case.
- `ycc_rgb_convert` with `build_ycc_rgb_table` (jdcolor.c, jdcolext.c): the tables'
  entries computed per sample (the same integers), `SCALEBITS` 16, a clamp.

A grayscale view travels with zero chroma blocks, which decode to 128 everywhere, and the
colour conversion then repeats its luma three times, as Pillow's `convert("RGB")` does.
"""

from __future__ import annotations

import functools

import torch

# jidctint.c's FIX_* constants: round(x * 2**13).
_C = {
    "0_298631336": 2446,
    "0_390180644": 3196,
    "0_541196100": 4433,
    "0_765366865": 6270,
    "0_899976223": 7373,
    "1_175875602": 9633,
    "1_501321110": 12299,
    "1_847759065": 15137,
    "1_961570560": 16069,
    "2_053119869": 16819,
    "2_562915447": 20995,
    "3_072711026": 25172,
}


def _idct_1d(d: list[torch.Tensor]) -> list[torch.Tensor]:
    """One pass of jidctint.c's `jpeg_idct_islow` over 8 integer inputs, before its descale."""
    z1 = (d[2] + d[6]) * _C["0_541196100"]
    tmp2 = z1 + d[6] * -_C["1_847759065"]
    tmp3 = z1 + d[2] * _C["0_765366865"]
    tmp0, tmp1 = (d[0] + d[4]) << 13, (d[0] - d[4]) << 13
    tmp10, tmp13, tmp11, tmp12 = tmp0 + tmp3, tmp0 - tmp3, tmp1 + tmp2, tmp1 - tmp2
    o0, o1, o2, o3 = d[7], d[5], d[3], d[1]
    z5 = (o0 + o2 + o1 + o3) * _C["1_175875602"]
    z1 = (o0 + o3) * -_C["0_899976223"]
    z2 = (o1 + o2) * -_C["2_562915447"]
    z3 = (o0 + o2) * -_C["1_961570560"] + z5
    z4 = (o1 + o3) * -_C["0_390180644"] + z5
    t0 = o0 * _C["0_298631336"] + z1 + z3
    t1 = o1 * _C["2_053119869"] + z2 + z4
    t2 = o2 * _C["3_072711026"] + z2 + z3
    t3 = o3 * _C["1_501321110"] + z1 + z4
    out = [tmp10 + t3, tmp11 + t2, tmp12 + t1, tmp13 + t0]
    return out + [tmp13 - t0, tmp12 - t1, tmp11 - t2, tmp10 - t3]


@functools.lru_cache(maxsize=8)
def _pass_matrix(device: torch.device) -> torch.Tensor:
    """`_idct_1d` as the integer matrix it is (float64 [8, 8], out = M @ in): a pass only
    adds and multiplies by constants. Built on `device` from the identity, once."""
    eye = torch.eye(8, dtype=torch.int64, device=device)
    return torch.stack(_idct_1d(list(eye.unbind(0))), 0).to(torch.float64)


def idct_islow(coefs: torch.Tensor, quant: torch.Tensor) -> torch.Tensor:
    """int16 [N, 64] quantised blocks in natural order (row = vertical frequency) and their
    [N, 64] (or broadcastable) quantisation tables -> uint8 [N, 8, 8] samples.

    Each pass is a matrix product in float64, where every product and partial sum is an
    integer below 2^53 for any int16 coefficient and 8-bit table, hence exact whatever the
    summation order (BLAS, FMA, the GPU's); the descales are exact floors of a power-of-two
    division, as C's `>>` of a negative JLONG floors."""
    m = _pass_matrix(coefs.device)
    x = coefs.to(torch.float64).mul_(quant).unflatten(-1, (8, 8))  # [N, v, u]
    # In place: a batch's blocks are hundreds of MB in float64.
    cols = torch.matmul(m, x).add_(2.0**10).mul_(2.0**-11).floor_()  # DESCALE by 13 - 2
    rows = torch.matmul(cols, m.T).add_(2.0**17).mul_(2.0**-18).floor_()  # by 13 + 2 + 3
    return rows.add_(128.0).clamp_(0.0, 255.0).to(torch.uint8)


def to_planes(blocks: torch.Tensor) -> torch.Tensor:
    """uint8 [..., R, C, 8, 8] blocks -> [..., R*8, C*8] sample planes."""
    *lead, r, c, _, _ = blocks.shape
    return blocks.transpose(-3, -2).reshape(*lead, r * 8, c * 8)


def _fix(v: float) -> int:
    """jdcolor.c's FIX(v): v in 16-bit fixed point, rounded."""
    return int(v * (1 << 16) + 0.5)


# build_ycc_rgb_table's entries, computed per sample instead of looked up: with x the
# chroma value minus 128, Cr_r = (FIX(1.402) x + ONE_HALF) >> 16, Cb_b likewise with
# FIX(1.772), and green's table sum (-FIX(0.34414) x_b + ONE_HALF) + (-FIX(0.71414) x_r),
# all exact in int32 (|products| < 2^24).
_CR_R, _CB_B, _CB_G, _CR_G, _HALF = _fix(1.402), _fix(1.772), _fix(0.34414), _fix(0.71414), 1 << 15


def _take_rows(plane: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """plane[b, ..., rows[b, i], :] for a [B, ..., H, W] plane and [B, h] rows."""
    index = rows.view(rows.shape[0], *([1] * (plane.dim() - 3)), -1, 1)
    return plane.gather(-2, index.expand(*plane.shape[:-2], rows.shape[-1], plane.shape[-1]))


def _take_cols(plane: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """plane[b, ..., :, cols[b, j]] for a [B, ..., H, W] plane and [B, w] columns."""
    index = cols.view(cols.shape[0], *([1] * (plane.dim() - 2)), -1)
    return plane.gather(-1, index.expand(*plane.shape[:-1], cols.shape[-1]))


def decode_crops(
    luma: torch.Tensor, chroma: torch.Tensor, views: torch.Tensor, out: tuple[int, int]
) -> torch.Tensor:
    """A batch of JPEG crops as uint8 [B, h, w, 3] RGB (`out` = (h, w)) from their decoded
    sample planes, luma uint8 [B, H, W] and chroma [B, 2, Hc, Wc] (each view's blocks in
    their top-left corners, `idct_islow` then `to_planes`), and `crop_maps`' rows, all on
    one device. Rows and columns past a view's crop repeat its edge: the caller's padding."""
    b = luma.shape[0]
    maps = crop_maps(views, out)
    y = _take_cols(_take_rows(luma, maps["y_rows"]), maps["y_cols"]).to(torch.int32)
    rows, row_w = maps["c_rows"], maps["c_row_w"].view(b, 1, 2, -1, 1)
    v = _take_rows(chroma, rows[:, 0]).to(torch.int32) * row_w[:, :, 0]
    v += _take_rows(chroma, rows[:, 1]).to(torch.int32) * row_w[:, :, 1]
    cols, col_w = maps["c_cols"], maps["c_col_w"].view(b, 1, 2, 1, -1)
    c = _take_cols(v, cols[:, 0]) * col_w[:, :, 0]
    c += _take_cols(v, cols[:, 1]) * col_w[:, :, 1]
    c += maps["row_bias"].view(b, 1, -1, 1)
    c += maps["col_bias"].view(b, 1, 1, -1)
    c >>= 4
    cb, cr = c[:, 0] - 128, c[:, 1] - 128
    red = y + ((cr * _CR_R + _HALF) >> 16)
    blue = y + ((cb * _CB_B + _HALF) >> 16)
    green = y + ((_HALF - cb * _CB_G - cr * _CR_G) >> 16)
    return torch.stack([red, green, blue], -1).clamp_(0, 255).to(torch.uint8)


def imcu_box(
    size: tuple[int, int], sampling: tuple[int, int], box: tuple[int, int, int, int]
) -> tuple[int, int, int, int]:
    """The iMCU columns and rows (c0, r0, c1, r1) whose blocks a crop `box` (left, top,
    right, bottom) of an image of `size` needs: its own, and the chroma sample beyond each
    edge that the fancy upsampling reads where chroma is subsampled."""
    (w, h), (hmax, vmax) = size, sampling
    spans = []
    for lo, hi, f, n in ((box[0], box[2], hmax, w), (box[1], box[3], vmax, h)):
        samples = -(-n // f)  # chroma samples along this axis (downsampled_width)
        first = max(lo // f - (f - 1), 0)
        last = min((hi - 1) // f + (f - 1), samples - 1)
        spans.append((first // 8, last // 8 + 1))  # one chroma block an iMCU
    (c0, c1), (r0, r1) = spans
    return c0, r0, c1, r1


def crop_maps(views: torch.Tensor, out: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Where `decode_crops` reads each view's crop in its blocks, from int64 [B, 11] rows
    (left, top, right, bottom, c0, r0, width, height, h and v luma sampling, gray), padded
    to `out` (h, w) by repeating the crop's edge: luma rows and columns, and the chroma
    upsampling's two rows and two columns an output sample with their weights and rounding
    biases. Computed where the views are decoded, from a few numbers each, both axes at
    once (axis 0 the columns, 1 the rows: the rows' (x, y) pairs), in integer arithmetic."""
    b, pad = views.shape[0], max(out)
    # Each [B, 2, 1]: the crop [lo, hi) of an image n long whose luma is sampled f times
    # its chroma along the axis, its blocks starting at iMCU `start`.
    lo, hi, start, n, f = views[:, :10].view(b, 5, 2, 1).unbind(1)
    color = 1 - views[:, 10, None, None]  # a gray view's zero blocks decode to 128 anywhere
    pos = torch.minimum(lo + torch.arange(pad, device=views.device), hi - 1)
    near = pos // f
    odd = pos % 2
    # The output pair of a chroma sample leans on the sample before (upper/left) or after.
    far = torch.minimum((near + 2 * odd - 1).clamp_(min=0), (n + f - 1) // f - 1)
    sub = (f == 2) * color  # 1 where this axis is upsampled
    far = near + sub * (far - near)
    # 3x+y+1>>2 and +2 with one axis subsampled (scaled by 4: +4, +8); both: 9/3/3/1 taps,
    # +8 and +7 by column, the rows adding none.
    one_axis = (f.flip(1) == 1) * 1
    columns = (torch.arange(2, device=views.device) == 0)[:, None]
    bias = sub * (one_axis * (4 + 4 * odd) + (1 - one_axis) * (8 - odd) * columns)
    chroma = (torch.stack([near, far], 1) - start[:, None] * 8) * color[:, None]
    luma = pos - start * 8 * f
    weights = torch.cat([4 - sub, sub], 2).to(torch.int32)  # [B, 2 axes, 2 taps]
    bias = bias.to(torch.int32)
    (h, w), (x, y) = out, (0, 1)
    return {
        "y_rows": luma[:, y, :h], "y_cols": luma[:, x, :w],
        "c_rows": chroma[:, :, y, :h], "c_cols": chroma[:, :, x, :w],
        "c_row_w": weights[:, y], "c_col_w": weights[:, x],
        "row_bias": bias[:, y, :h], "col_bias": bias[:, x, :w],
    }  # fmt: skip
