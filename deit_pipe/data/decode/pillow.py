"""Pillow's full decode of an image file's bytes, and its failures as one line."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from deit_pipe.errors import DataError


def decode_image(data: bytes, name: str) -> Image.Image:
    """`data` decoded as RGB; a DataError naming `name` when it is not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            # An RGB file is used as decoded: `convert` would copy it (0.1 ms per view).
            return img if img.mode == "RGB" else img.convert("RGB")
    except UNREADABLE as exc:
        raise unreadable(exc, name) from None


# What Pillow raises for one bad file: the "known exceptions" its own fuzzing test allows
# (Tests/oss-fuzz/test_fuzzers.py; SyntaxError is an APNG's frame-sequence errors).
UNREADABLE = (
    OSError,
    SyntaxError,
    MemoryError,
    ValueError,
    NotImplementedError,
    OverflowError,
    Image.DecompressionBombError,
)


def unreadable(exc: Exception, name: str) -> DataError:
    """Pillow's failure on an in-memory image as one line naming `name` (Pillow names the
    buffer, "<_io.BytesIO object at 0x…>": say what it means instead)."""
    why = "not an image format Pillow reads" if isinstance(exc, UnidentifiedImageError) else exc
    return DataError(f"unreadable image {name}: {why}")
