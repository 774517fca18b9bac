"""Helpers the test files share (fixtures live in conftest.py): free ports, checksums of a
folder, and the small JPEG files the dataset tests write."""

from __future__ import annotations

import hashlib
import io
import socket
from pathlib import Path

import numpy as np
from PIL import Image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below `folder`, by relative path: proof nothing was changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def write_jpeg(path: Path, seed: int, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


def truncated_jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()[:200]


def deferred_batch(views, re_count: int = 1):
    """A `ViewBatch` of deferred device views (a list of `DeviceView`, or `prepare`d) with
    no erasing and no mixing: what `realize` renders."""
    import torch

    from deit_pipe.data.views.batch import ViewBatch

    n = views["count"] if isinstance(views, dict) else len(views)
    return ViewBatch(
        slot=torch.arange(n),
        seed=torch.arange(n),
        erase=torch.zeros((n, re_count, 4), dtype=torch.int32),
        mix=torch.zeros(n, dtype=torch.int64),
        lam=torch.ones((n, 2), dtype=torch.float32),
        box=torch.zeros((n, 4), dtype=torch.int32),
        device_views=views,
    )
