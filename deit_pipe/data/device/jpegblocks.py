"""JPEG crops that travel as DCT blocks: the host entropy-decodes, the device does the rest.

Of a JPEG crop's decode on the host (`jpeg.EncodedJpeg.crop_into`), the entropy decoding is
about three quarters, and the IDCT, chroma upsampling and colour conversion of the crop's
own rows the rest: integer arithmetic that `kernels.jpegdecode` runs on the consuming
device with libjpeg-turbo's bytes. So where a batch of device views is collated, `pack`
stops each JPEG crop at its quantised blocks (rows below the crop are not decoded at all),
and `unpack` turns them into the crops' pixels on the device, before the resize. A file
the kernels do not cover, or one libjpeg finds fault with, is decoded to pixels on the host
as before; a self-check against Pillow when first used guards against another libjpeg.
`DEIT_PIPE_JPEG_DCT=0` turns it off (and `DEIT_PIPE_JPEG_REGION=0`, which decodes whole).
"""

from __future__ import annotations

import functools
import io
import logging
import os
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from deit_pipe.data.decode import jpeg
from deit_pipe.data.device.kernels.jpegdecode import decode_crops, idct_islow, imcu_box, to_planes

log = logging.getLogger(__name__)
_COVERED = {(1, 1), (2, 1), (1, 2), (2, 2)}  # luma sampling: 4:4:4, 4:2:2, 4:4:0, 4:2:0

Alloc = Callable[[tuple[int, ...], torch.dtype], torch.Tensor]


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def pack(
    crops: list[jpeg.PendingCrop], out: tuple[int, int], alloc: Alloc = _empty
) -> tuple[dict | None, list[int]]:
    """The blocks of `crops` whose files the kernels cover, back to back (no padding to write
    or to move) in tensors made by `alloc` (a loader worker's shared memory), with what
    places each crop in an `out` (h, w) slot, and the positions in `crops` that must be
    decoded to pixels instead."""
    take = [k for k, c in enumerate(crops) if c.image.sampling in _COVERED]
    pixels = [k for k, c in enumerate(crops) if c.image.sampling not in _COVERED]
    if not take:
        return None, pixels
    views = []  # box, iMCU origin, image size, sampling, gray, luma and chroma block grids
    for k in take:
        img, box = crops[k].image, crops[k].box
        c0, r0, c1, r1 = imcu_box(img.size, img.sampling, box)
        gray = img.mode == "L"
        grid = ((r1 - r0) * img.sampling[1], (c1 - c0) * img.sampling[0])
        grid += (1, 1) if gray else (r1 - r0, c1 - c0)  # a gray view's: one zero block
        views.append((*box, c0, r0, *img.size, *img.sampling, gray, *grid, c1, r1))
    table = np.array(views, dtype=np.int64)
    luma_n = table[:, 11] * table[:, 12]
    chroma_n = 2 * table[:, 13] * table[:, 14]
    split = int(luma_n.sum())  # every view's luma blocks, then every view's chroma blocks
    blocks = alloc((split + int(chroma_n.sum()), 64), torch.int16)
    quant = np.zeros((len(take), 3, 64), np.uint16)
    ly, lc = np.cumsum(luma_n) - luma_n, split + np.cumsum(chroma_n) - chroma_n
    for j, k in enumerate(take):
        (*_, gray, ry, cy, rc, cc, c1, r1), img = views[j], crops[k].image
        y = blocks[ly[j] : ly[j] + luma_n[j]].numpy().reshape(ry, cy, 64)
        c = blocks[lc[j] : lc[j] + chroma_n[j]].numpy().reshape(2, rc, cc, 64)
        if gray:  # zero chroma decodes to 128: the luma three times
            c[:] = 0
        if not img.blocks_into((*views[j][4:6], c1, r1), y, c, quant[j]):
            pixels.append(k)
    packed = {"index": torch.tensor(take, dtype=torch.int64), "blocks": blocks}
    packed["quant"] = torch.from_numpy(quant.astype(np.int32))
    packed["views"] = torch.from_numpy(table[:, :11].copy())
    grids = tuple(int(v) for v in table[:, 11:15].max(axis=0))
    packed["segments"] = _segments(table[:, 11:15], grids)
    packed["shape"] = (*out, *grids)
    return packed, sorted(pixels)


def _segments(grids: np.ndarray, padded: tuple[int, ...]) -> torch.Tensor:
    """The block stream's runs, one a plane of a view (every view's luma, then each view's
    Cb and Cr), as int64 [3n, 6] rows: first block, columns, the padded grid's columns and
    its offset in blocks, the plane's quantisation table and block count; the device
    places each block from its run's row."""
    n = len(grids)
    ry, cy, rc, cc = padded
    v = np.arange(n)
    luma = np.stack([grids[:, 1], np.full(n, cy), v * ry * cy, 3 * v, grids[:, 0] * grids[:, 1]])
    v2, plane = np.repeat(v, 2), np.tile([0, 1], n)
    chroma = np.stack(
        [
            np.repeat(grids[:, 3], 2),
            np.full(2 * n, cc),
            n * ry * cy + (2 * v2 + plane) * rc * cc,
            3 * v2 + 1 + plane,
            np.repeat(grids[:, 2] * grids[:, 3], 2),
        ]
    )
    runs = np.concatenate([luma, chroma], axis=1).T
    first = np.cumsum(runs[:, 4]) - runs[:, 4]
    return torch.from_numpy(np.concatenate([first[:, None], runs], axis=1).astype(np.int64))


def unpack(packed: dict, device: torch.device) -> torch.Tensor:
    """The packed crops' pixels (uint8 [n, h, w, 3], padded to `pack`'s `out`) on `device`;
    host tensors moved without waiting. The IDCT runs on the blocks back to back (none
    of the padding), which are then placed in padded planes for the upsampling, each by
    its run's row of `segments` (no read-back: the block count travels as a size)."""
    blocks, quant, views, segments = (
        packed[k].to(device, non_blocking=True) for k in ("blocks", "quant", "views", "segments")
    )
    h, w, ry, cy, rc, cc = packed["shape"]
    n, total = len(views), blocks.shape[0]
    runs = torch.arange(len(segments), device=device)
    run = torch.repeat_interleave(runs, segments[:, 5], output_size=total)
    first, cols, pitch, base, table, _ = segments[run].unbind(1)
    local = torch.arange(total, device=device) - first
    row = local // cols
    dest = base + row * pitch + (local - row * cols)
    samples = idct_islow(blocks, quant.view(-1, 64)[table]).view(total, 64)
    # Not zeroed: padding samples are never read (the maps point inside each crop).
    grid = torch.empty((n * (ry * cy + 2 * rc * cc), 64), dtype=torch.uint8, device=device)
    grid.index_copy_(0, dest, samples)
    luma = to_planes(grid[: n * ry * cy].view(n, ry, cy, 8, 8))
    chroma = to_planes(grid[n * ry * cy :].view(n, 2, rc, cc, 8, 8))
    return decode_crops(luma, chroma, views, (h, w))


@functools.cache
def enabled() -> bool:
    """Whether JPEG crops travel as blocks: the region decoder bound, not turned off, and
    the kernels giving Pillow's bytes for a few crops here."""
    if os.environ.get("DEIT_PIPE_JPEG_DCT", "1") == "0" or jpeg._bound() is None:
        return False
    if not _agrees():
        log.warning("JPEG crops decode on the host: the block kernels disagree with Pillow")
        return False
    return True


def _agrees() -> bool:
    """Crops (edges, odd sizes) of 4:2:0, 4:2:2, 4:4:4 and grayscale JPEGs through
    `pack`/`unpack` on the CPU against Pillow's decode."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:45, 0:61]
    base = np.stack([xx * 4, yy * 5, (xx * yy) % 256], axis=-1) + rng.integers(0, 60, (45, 61, 3))
    pixels = np.clip(base, 0, 255).astype(np.uint8)
    boxes = [(0, 0, 61, 45), (13, 7, 50, 44), (1, 30, 9, 45)]
    for img, subsampling in ((pixels, 2), (pixels, 1), (pixels, 0), (pixels[..., 0], 0)):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=92, subsampling=subsampling)
        data = buf.getvalue()
        whole = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        source = jpeg.open_image(data, "self-check")
        if not isinstance(source, jpeg.EncodedJpeg):
            return False
        crops = [jpeg.PendingCrop(source, box) for box in boxes]
        packed, pixels_left = pack(crops, (45, 61))
        if packed is None or pixels_left:
            return False
        got = unpack(packed, torch.device("cpu")).numpy()
        for view, (x0, y0, x1, y1) in zip(got, boxes, strict=True):
            if not np.array_equal(view[: y1 - y0, : x1 - x0], whole[y0:y1, x0:x1]):
                return False
    return True
