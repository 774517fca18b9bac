"""A JPEG decoded only where a view's crop needs it, with the bytes of Pillow's full decode.

A training view's Pillow stage starts with a crop (`RandomResizedCrop`), and its crop box
depends only on the image's size, known from the header. So a loader opens a sample
(`open_image`: the header only), draws the view, and decodes the crop's region
(`EncodedJpeg.crop`): rows below the crop are not decoded, and outside the crop's
columns libjpeg-turbo skips the IDCT and the colour conversion. The rest of the file is
checked for markers (the only thing in it a decoder can find fatal; where one is, the
rows are entropy-decoded to the end), so a file Pillow refuses is refused whatever the
crop, and no view depends on whether its crop reaches the damage. The compiled part
(`csrc/jpeg_region.c`) calls the libjpeg Pillow itself loaded, at Pillow's settings, with a
one-iMCU margin around the crop (libjpeg-turbo's partial decode treats a region's edges as
image edges when upsampling chroma). Golden tests and a self-check when first bound prove
the bytes equal Pillow's; anything else (no compiler at install, another libjpeg, a
warning from libjpeg, CMYK, 12-bit) decodes with Pillow whole: the same bytes, slower.
`DEIT_PIPE_JPEG_REGION=0` turns it off.
"""

from __future__ import annotations

import functools
import glob
import io
import logging
import os

import numpy as np
from PIL import Image

from deit_pipe.data.decode.pillow import UNREADABLE, decode_image, unreadable

log = logging.getLogger(__name__)
_MODES = ("RGB", "L")  # the modes a region decodes to (grayscale is repeated to RGB)


class EncodedJpeg:
    """A JPEG with its header read: `size`, its luma's `sampling` factors (h, v), and
    `crop(box)` decoding only the box's region (the same pixels as
    `decode_image(data).crop(box)`), or `blocks_into` its DCT blocks alone."""

    def __init__(
        self,
        data: bytes,
        name: str,
        size: tuple[int, int],
        mode: str,
        sampling: tuple[int, int] = (1, 1),
    ):
        self.data, self.name, self.size, self.mode = data, name, size, mode
        self.sampling = sampling

    def crop(self, box: tuple[int, int, int, int]) -> Image.Image:
        """The region (left, top, right, bottom) as an RGB image."""
        left, top, right, bottom = box
        if right <= left or bottom <= top:  # timm's crop of a 1-pixel image can be empty
            return self.load().crop(box)  # decoded whole, as timm does (a broken file fails)
        return Image.fromarray(self.crop_array(box))

    def crop_array(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """The region (left, top, right, bottom) as uint8 HWC RGB, decoded only there."""
        left, top, right, bottom = box
        out = np.empty((bottom - top, right - left, 3), dtype=np.uint8)
        self.crop_into(box, out)
        return out

    def crop_into(self, box: tuple[int, int, int, int], out: np.ndarray) -> None:
        """Decode region `box` into the top-left corner of `out`, a C-contiguous uint8
        [H, W, 3] at least the box's size (a batch's padded slot: no copy after)."""
        left, top, right, bottom = (int(v) for v in box)
        stride = out.strides[0]
        got = _bound().region(self.data, self.mode == "L", left, top, right, bottom, out, stride)
        if got is not None:
            log.debug("%s: decoded whole by Pillow (%s)", self.name, got[1])
            out[: bottom - top, : right - left] = np.asarray(self.load().crop(box))

    def blocks_into(
        self,
        imcus: tuple[int, int, int, int],
        luma: np.ndarray,
        chroma: np.ndarray,
        quant: np.ndarray,
    ) -> bool:
        """Entropy-decode the quantised DCT blocks of iMCU columns and rows `imcus` (c0, r0,
        c1, r1) into `luma` (int16 [rows, cols, 64], its top-left corner) and `chroma`
        ([2, rows, cols, 64]), their tables into `quant` (uint16 [3, 64]); False where the
        file is not one `kernels.jpegdecode` covers, or libjpeg finds fault with it: its
        pixels are then the caller's to decode (`crop_into`, which refuses a broken file)."""
        got = _bound().coefficients(
            self.data, self.mode == "L", *imcus, luma, luma.strides[0], chroma,
            chroma.strides[1], chroma.strides[0], quant,
        )  # fmt: skip
        if got is not None:
            log.debug("%s: decoded to pixels on the host (%s)", self.name, got[1])
        return got is None

    def load(self) -> Image.Image:
        """The whole image, decoded by Pillow."""
        return decode_image(self.data, self.name)


def open_image(data: bytes, name: str) -> Image.Image | EncodedJpeg:
    """`data` as an `EncodedJpeg` where its crops can be decoded alone (a complete 8-bit
    RGB or grayscale JPEG, and the region decoder bound), else decoded whole as RGB; a
    DataError naming `name` when it is not a readable image."""
    if not (data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9") or _bound() is None:
        return decode_image(data, name)  # not a JPEG, or one whose end is missing
    try:
        with Image.open(io.BytesIO(data)) as img:  # the header: size, mode, bomb check
            size, mode, fmt = img.size, img.mode, img.format
            layers = getattr(img, "layer", None) or [(0, 1, 1, 0)]
    except UNREADABLE as exc:
        raise unreadable(exc, name) from None
    if fmt != "JPEG" or mode not in _MODES:
        return decode_image(data, name)
    sampling = (max(layer[1] for layer in layers), max(layer[2] for layer in layers))
    return EncodedJpeg(data, name, size, mode, sampling)


class PendingCrop:
    """A JPEG crop left undecoded until its batch is collated, then decoded straight into
    the batch's tensor (`into`)."""

    def __init__(self, image: EncodedJpeg, box: tuple[int, int, int, int]):
        self.image, self.box = image, box
        self.shape = (box[3] - box[1], box[2] - box[0], 3)

    def into(self, out: np.ndarray) -> None:
        self.image.crop_into(self.box, out)


@functools.cache
def _bound():
    """The region decoder bound to Pillow's libjpeg and checked against Pillow, or None."""
    if os.environ.get("DEIT_PIPE_JPEG_REGION", "1") == "0":
        return None
    try:
        from deit_pipe.data.decode import _jpeg_region as ext
    except ImportError:
        log.info("JPEG crops decode whole: the region decoder was not built (no C compiler?)")
        return None
    path = pillow_libjpeg()
    if path is None:
        log.info("JPEG crops decode whole: Pillow's libjpeg not found")
        return None
    try:
        ext.bind(path)
    except OSError as exc:
        log.info("JPEG crops decode whole: %s", exc)
        return None
    if not _agrees(ext):
        log.warning("JPEG crops decode whole: the region decoder disagrees with Pillow (%s)", path)
        return None
    return ext


def pillow_libjpeg() -> str | None:
    """The libjpeg Pillow's `_imaging` is linked to: its wheel's bundled copy, or the one
    library of that name this process has mapped (a Pillow built against the system's)."""
    pil = os.path.dirname(Image.__file__)
    bundled = glob.glob(os.path.join(pil, os.pardir, "pillow.libs", "libjpeg*.so*"))
    bundled += glob.glob(os.path.join(pil, ".dylibs", "libjpeg*.dylib"))
    if len(bundled) == 1:
        return os.path.realpath(bundled[0])
    try:
        with open("/proc/self/maps") as maps:
            mapped = {line.split()[-1] for line in maps if "/libjpeg" in line}
    except OSError:
        return None
    return mapped.pop() if len(mapped) == 1 else None


def _agrees(ext) -> bool:
    """Whether the region decoder gives Pillow's bytes on a few crops of a 4:2:0 and a
    4:4:4 JPEG (edges, odd sizes): a guard against a libjpeg other than the tested one."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:61, 0:83]
    base = np.stack([xx * 3, yy * 4, (xx * yy) % 256], axis=-1) + rng.integers(0, 40, (61, 83, 3))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    for subsampling in (2, 0):
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90, subsampling=subsampling)
        data = buf.getvalue()
        whole = np.array(Image.open(io.BytesIO(data)).convert("RGB"))
        for x0, y0, x1, y1 in ((0, 0, 83, 61), (17, 19, 50, 44), (33, 40, 83, 61), (1, 0, 9, 7)):
            out = np.zeros((y1 - y0 + 3, x1 - x0 + 5, 3), np.uint8)  # a padded slot
            if ext.region(data, False, x0, y0, x1, y1, out, out.strides[0]) is not None:
                return False
            if not np.array_equal(out[: y1 - y0, : x1 - x0], whole[y0:y1, x0:x1]):
                return False
    return True
