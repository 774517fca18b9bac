"""JPEG files the region and block decoders are tested on, and views rendered through them."""

import io
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from deit_pipe.data import ViewConfig, collate_views, open_source
from deit_pipe.data.decode.pillow import decode_image
from deit_pipe.data.device.render import realize
from deit_pipe.data.loaders.dataset import PairDataset
from deit_pipe.data.plan.epoch import MixConfig, plan
from deit_pipe.errors import DataError

KINDS = {
    "4:4:4": dict(subsampling=0),
    "4:2:2": dict(subsampling=1),
    "4:2:0": dict(subsampling=2),
    "gray": dict(gray=True),
    "4:2:0 progressive": dict(subsampling=2, progressive=True),
    "4:2:2 progressive optimized": dict(subsampling=1, progressive=True, optimize=True),
    "4:4:4 progressive": dict(subsampling=0, progressive=True),
    "4:2:0 restart markers": dict(subsampling=2, restart_marker_blocks=3),
    "gray progressive": dict(gray=True, progressive=True),
}


def _jpeg(rng, w: int, h: int, quality: int, gray=False, **save) -> bytes:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(xx / 5 + c) * np.cos(yy / 7) * 90 + 128 for c in range(3)], -1)
    pixels = np.clip(base + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels).convert("L") if gray else Image.fromarray(pixels)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, **save)
    return buf.getvalue()


def _boxes(rng, w: int, h: int, count: int):
    """Random boxes, then the whole image, its corners and one-pixel rows and columns."""
    for _ in range(count):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        yield x0, y0, int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
    yield from [(0, 0, w, h), (w - 1, h - 1, w, h), (0, h - 1, w, h), (w - 1, 0, w, 1)]
    yield from [(0, 0, 1, h), (w // 2, 0, w, h), (0, h // 2, w, h // 2 + 1)]


def _h1v2(rng, w: int, h: int, progressive: bool) -> bytes:
    """A 4:4:0 (h1v2) JPEG, which Pillow cannot write: a 4:2:2 file of 2w × h/2 whose SOF is
    rewritten to w × h with luma sampled 1×2. Its MCUs (and each component's block counts)
    are the same four blocks, so the entropy-coded data stays valid."""
    data = bytearray(_jpeg(rng, 2 * w, h // 2, 85, subsampling=1, progressive=progressive))
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, h, w)
    assert data[sof + 11] == 0x21  # luma: 2 across, 1 down
    data[sof + 11] = 0x12
    return bytes(data)


def damaged_below(rng) -> tuple[bytes, str]:
    """A tall 64x256 4:2:0 JPEG with a bogus marker segment near its end, and the line
    Pillow refuses it with."""
    data = _jpeg(rng, 64, 256, 85, subsampling=2)
    cut = len(data) - 200
    bad = data[:cut] + b"\xff\xc4\x00\x05\x17\x00\x00" + data[cut:]
    with pytest.raises(DataError) as whole:
        decode_image(bad, "tall.jpg")
    return bad, str(whole.value)


def _views(root, render: str, size: int = 32, epochs: int = 5) -> dict:
    """Every training view of the JPEGs in `root`, rendered with `render` (on the CPU)."""
    split = open_source(f"imagefolder:{root}").split("train")
    cfg = ViewConfig(input_size=size, re_count=2)
    views = PairDataset(split, plan(epochs, 2, len(split), epochs, MixConfig(), 8), cfg, render)
    batch = collate_views([views[p] for p in range(len(views))])
    return realize(batch, torch.device("cpu")) if render == "device" else batch


def damaged_decodable(rng, kind: str, tries: int, w: int = 64, h: int = 48) -> list[bytes]:
    """Uniform-noise JPEGs of `kind` at quality 5 (quantisers of 255: a corrupt coefficient
    leaves 16 bits once dequantised), each with one bit flipped in its entropy-coded data,
    kept where Pillow decodes them without an error."""
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    save = dict(KINDS[kind])
    img = (
        Image.fromarray(pixels).convert("L") if save.pop("gray", False) else Image.fromarray(pixels)
    )
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=5, **save)
    data = buf.getvalue()
    sos = data.find(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    kept = []
    for _ in range(tries):
        damaged = bytearray(data)
        at = int(rng.integers(start, len(data) - 2))
        damaged[at] ^= 1 << int(rng.integers(0, 8))
        if 0xFF in damaged[at - 1 : at + 1] or 0xFF in data[at - 1 : at + 1]:
            continue  # a marker made or unmade: a different file, not a damaged one
        try:
            decode_image(bytes(damaged), "damaged.jpg")
        except DataError:
            continue
        kept.append(bytes(damaged))
    return kept
