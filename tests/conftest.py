from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_jpeg(path: Path, seed: int, size: int = 24) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG")


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    """A tiny ImageNet-layout dataset: 3 classes, 6 train and 2 val images each."""
    root = tmp_path / "imgs"
    for c, name in enumerate(["cat", "dog", "eel"]):
        for i in range(6):
            write_jpeg(root / "train" / name / f"{i}.jpg", seed=100 * c + i)
        for i in range(2):
            write_jpeg(root / "val" / name / f"v{i}.jpg", seed=1000 + 100 * c + i)
    return root


def truncated_jpeg_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()[:200]
