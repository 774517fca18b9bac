"""The reference a drawn view is proved against: timm's own training transform run with
timm's and torchvision's module RNGs swapped for generators of the view seed — how plan-3
views were made. Tests and `make bench-render` use it; rendering never does (it draws
explicitly, `viewparams`), so nothing here runs in a loader or a dask worker.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa
from timm.data import transforms as timm_transforms
from torchvision.transforms import transforms as tv_transforms

from deit_pipe.data.views.host import ViewConfig, erasing_boxes

_TAG_NUMPY = 0x5EED_A7  # the NumPy stream of a view seed (as viewparams)


class _ViewNumpy:
    """What timm's auto-augment draws from `np.random`, from the view's PCG64 stream."""

    def __init__(self, seed: int):
        self.gen = np.random.Generator(np.random.PCG64([seed, _TAG_NUMPY]))

    def choice(self, *args, **kwargs):
        return self.gen.choice(*args, **kwargs)

    def randint(self, low: int, high: int | None = None, size=None):
        return self.gen.integers(low, high, size=size)

    def dirichlet(self, alpha, size=None):
        return self.gen.dirichlet(alpha, size=size)

    def beta(self, a: float, b: float, size=None):
        return self.gen.beta(a, b, size=size)


class _NumpyWithViewRandom:
    def __init__(self, seed: int):
        self.random = _ViewNumpy(seed)

    def __getattr__(self, name: str) -> object:
        return getattr(np, name)


@contextmanager
def timm_seeded(seed: int) -> Iterator[random.Random]:
    """timm/torchvision draw from generators of `seed` inside the block (not thread-safe:
    it swaps module attributes); yields the Python generator, restores everything after."""
    seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
    py, npy = random.Random(seed), _NumpyWithViewRandom(seed)
    saved = [(m, "random", m.random) for m in (timm_transforms, timm_aa, tv_transforms)]
    saved += [(m, "np", m.np) for m in (timm_aa, timm_transforms)]
    state = torch.random.default_generator.get_state()
    try:
        for m, name, _ in saved:
            setattr(m, name, py if name == "random" else npy)
        torch.random.default_generator.manual_seed(seed)
        yield py
    finally:
        for m, name, value in saved:
            setattr(m, name, value)
        torch.random.default_generator.set_state(state)


def timm_view(img: Image.Image, seed: int, transform, cfg: ViewConfig):
    """View `seed` as timm's `transform` renders it, and its erasing boxes: (uint8 HWC, boxes)."""
    with timm_seeded(seed) as py:
        pixels = transform(img).permute(1, 2, 0).contiguous()
        return pixels, erasing_boxes(py, cfg, pixels.shape[0], pixels.shape[1])
