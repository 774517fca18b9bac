"""View rendering on the host: a training view is a pure function of (image, view seed, config).

`render` runs the Pillow stage of timm's training transform (crop, flip, RandAugment or
color jitter) in timm's prefetcher form — uint8, kept in Pillow's HWC layout — with
private `random`/NumPy generators and torch's CPU generator seeded from the view seed, and
draws the view's random erasing boxes from the same generator as timm's `RandomErasing`
would. Everything after — to float, normalize, erasing noise, mixup/cutmix — is `finish`,
batched on the device that consumes the views. `fingerprint` hashes exactly what decides
a finished view (its uint8 bytes and its finishing parameters), so the student proves it
replays the pixels the teacher saw without finishing anything on the host.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
import xxhash
from PIL import Image
from timm.data import auto_augment as timm_aa
from timm.data import create_transform
from timm.data import transforms as timm_transforms
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import transforms as tv_transforms

from deit_pipe.data.sources import Source
from deit_pipe.errors import check

Transform = Callable[[Image.Image], torch.Tensor]
_TAG_NUMPY = 0x5EED_A7  # the NumPy stream of a view seed
# Renders patch module attributes (below); one render at a time per process.
_RNG_LOCK = threading.RLock()


_AA_POLICIES = ("original", "originalr", "v0", "v0r", "3a")  # timm auto_augment_policy


@dataclass(frozen=True)
class ViewConfig:
    """timm transform settings (DeiT recipe defaults) shared by teacher and student."""

    input_size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    vflip: float = 0.0
    color_jitter: float = 0.3  # DeiT's; timm turns it off when RandAugment is on
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"
    interpolation: str = "bicubic"
    re_prob: float = 0.25
    re_mode: str = "pixel"
    re_count: int = 1
    mean: tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, float, float] = IMAGENET_DEFAULT_STD
    crop_pct: float = 0.875

    def __post_init__(self) -> None:
        check(self.input_size >= 8, f"--input-size must be at least 8, got {self.input_size}")
        lo, hi = self.scale
        check(0 < lo <= hi <= 1, f"--scale-min must be in (0, 1], got {lo:g}")
        for flag, p in (("--hflip", self.hflip), ("vflip", self.vflip), ("--reprob", self.re_prob)):
            check(0 <= p <= 1, f"{flag} is a probability in [0, 1], got {p:g}")
        check(self.color_jitter >= 0, f"--color-jitter must be ≥ 0, got {self.color_jitter:g}")
        check(self.re_count >= 1, f"--recount must be at least 1, got {self.re_count}")
        check(
            self.re_mode in ("const", "rand", "pixel"),
            f"--remode must be const, rand or pixel, got {self.re_mode!r}",
        )
        check(
            self.interpolation in ("bicubic", "bilinear", "nearest", "random"),
            f"--interpolation must be bicubic, bilinear, nearest or random, "
            f"got {self.interpolation!r}",
        )
        check(0 < self.crop_pct <= 1, f"crop_pct must be in (0, 1], got {self.crop_pct:g}")
        aa = self.auto_augment
        check(
            not aa or aa.startswith(("rand-", "augmix-", "trivialaugwide")) or aa in _AA_POLICIES,
            f"--aa {aa!r} is not a timm auto-augment string (e.g. rand-m9-mstd0.5-inc1, "
            "augmix-m5-w4-d2, original, v0) or 'none'",
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViewConfig:
        tuples = ("scale", "ratio", "mean", "std")
        return cls(**{k: tuple(v) if k in tuples else v for k, v in d.items()})

    @classmethod
    def for_source(cls, source: Source, **overrides: object) -> ViewConfig:
        """DeiT defaults, the source's input size and flip default, then non-None overrides."""
        base = {"input_size": source.default_input_size, "hflip": source.default_hflip}
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(base)


def _common(cfg: ViewConfig) -> dict:
    """What training and eval views share: size, interpolation and normalisation."""
    return dict(interpolation=cfg.interpolation, mean=cfg.mean, std=cfg.std)


def train_transform(cfg: ViewConfig) -> Transform:
    """timm's training transform for `cfg` in its prefetcher form (uint8 CHW out; normalize
    and random erasing are left to `finish`), with Pillow-proof posterize."""
    tf = create_transform(
        cfg.input_size,
        is_training=True,
        scale=cfg.scale,
        ratio=cfg.ratio,
        hflip=cfg.hflip,
        vflip=cfg.vflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.auto_augment or None,
        use_prefetcher=True,
        **_common(cfg),
    )
    for t in getattr(tf, "transforms", []):
        if isinstance(t, timm_aa.RandAugment | timm_aa.AutoAugment):
            _patch_posterize(t)
    return tf


def eval_transform(cfg: ViewConfig) -> Transform:
    """Clean eval view, uint8 CHW: resize to input/crop_pct, center crop (bicubic by default);
    `finish` normalizes it."""
    return create_transform(
        cfg.input_size,
        is_training=False,
        crop_pct=cfg.crop_pct,
        use_prefetcher=True,
        **_common(cfg),
    )


def _posterize(img: Image.Image, bits_to_keep: int, **kwargs) -> Image.Image:
    # Pillow >= 13 refuses 0 bits; keeping no bits historically meant an all-black image,
    # which `inc1` RandAugment reaches at magnitude 10.
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return timm_aa.posterize(img, bits_to_keep, **kwargs)


def _patch_posterize(policy: object) -> None:
    ops = getattr(policy, "ops", None)
    if ops is None:  # AutoAugment keeps sub-policies of ops
        ops = [op for sub in getattr(policy, "policy", []) for op in sub]
    for op in ops:
        if op.aug_fn is timm_aa.posterize:
            op.aug_fn = _posterize


class _ViewNumpyRandom:
    """What timm's auto-augment draws from `np.random` (`choice`, `randint`, `dirichlet`,
    `beta`), from a PCG64 generator of the view seed made on first use: a `RandomState`
    costs 0.17 ms to seed, a `Generator` 0.01 ms, and most views draw once."""

    def __init__(self, seed: int):
        self.seed, self._gen = seed, None

    @property
    def gen(self) -> np.random.Generator:
        if self._gen is None:
            self._gen = np.random.Generator(np.random.PCG64([self.seed, _TAG_NUMPY]))
        return self._gen

    def choice(self, *args, **kwargs):
        return self.gen.choice(*args, **kwargs)

    def randint(self, low: int, high: int | None = None, size=None):
        return self.gen.integers(low, high, size=size)

    def dirichlet(self, alpha, size=None):
        return self.gen.dirichlet(alpha, size=size)

    def beta(self, a: float, b: float, size=None):
        return self.gen.beta(a, b, size=size)


class _NumpyWithOwnRandom:
    """numpy, except that `.random` is the view's own generator (for timm's `np.random.*`)."""

    def __init__(self, random: _ViewNumpyRandom):
        self.random = random

    def __getattr__(self, name: str) -> object:
        return getattr(np, name)


# Modules whose transforms draw from `random.*` / `np.random.*`. They get private, seeded
# generators during a render: other threads of the process (dask's event loop, for one)
# also draw from the global `random`, and a single draw between seeding and use would
# silently change a view.
_PY_RANDOM_USERS = (timm_transforms, timm_aa, tv_transforms)
_NP_RANDOM_USERS = (timm_aa, timm_transforms)


@contextmanager
def seeded_rngs(seed: int) -> Iterator[random.Random]:
    """Give the transforms RNGs seeded from a 64-bit seed; leave every caller RNG as it was.

    `random` and `np.random` users get private generators (the process-wide ones are never
    touched) and the context yields the `random.Random` for draws of our own; torch's CPU
    generator is seeded and restored (not `torch.manual_seed`, which would also reseed the
    CUDA generators of a training process).
    """
    seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
    gen = torch.random.default_generator
    py_rng = random.Random(seed)
    np_rng = _NumpyWithOwnRandom(_ViewNumpyRandom(seed))
    with _RNG_LOCK:
        saved = [(m, "random", m.random) for m in _PY_RANDOM_USERS]
        saved += [(m, "np", m.np) for m in _NP_RANDOM_USERS]
        torch_state = gen.get_state()
        try:
            for m in _PY_RANDOM_USERS:
                m.random = py_rng
            for m in _NP_RANDOM_USERS:
                m.np = np_rng
            gen.manual_seed(seed)
            yield py_rng
        finally:
            for module, name, value in saved:
                setattr(module, name, value)
            gen.set_state(torch_state)


def render(
    img: Image.Image, view_seed: int, transform: Transform, cfg: ViewConfig
) -> tuple[torch.Tensor, np.ndarray]:
    """One augmented view before finishing: uint8 HWC pixels (Pillow's layout, which is
    channels-last NCHW once batched and permuted) and its erasing boxes."""
    with seeded_rngs(view_seed) as rng:
        pixels = hwc(transform(img))
        boxes = erasing_boxes(rng, cfg, pixels.shape[0], pixels.shape[1])
    return pixels, boxes


def hwc(chw: torch.Tensor) -> torch.Tensor:
    """timm's uint8 CHW tensor as the HWC bytes under it (a view, no copy): batches stack
    them with plain copies, and the device reads them as channels-last."""
    return chw.permute(1, 2, 0)


def erasing_boxes(rng: random.Random, cfg: ViewConfig, img_h: int, img_w: int) -> np.ndarray:
    """timm's `RandomErasing._erase` draws (probability, count, then per box up to 10
    tries of area and aspect), in its order from its generator, made explicit: int32
    [re_count, 4] rows of (top, left, height, width); unused rows are zero."""
    boxes = np.zeros((cfg.re_count, 4), dtype=np.int32)
    if cfg.re_prob <= 0 or rng.random() > cfg.re_prob:
        return boxes
    area, log_ratio = img_h * img_w, (math.log(0.3), math.log(1 / 0.3))
    count = 1 if cfg.re_count == 1 else rng.randint(1, cfg.re_count)
    for i in range(count):
        for _ in range(10):
            target = rng.uniform(0.02, 1 / 3) * area / count
            aspect = math.exp(rng.uniform(*log_ratio))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if w < img_w and h < img_h:
                top, left = rng.randint(0, img_h - h), rng.randint(0, img_w - w)
                boxes[i] = (top, left, h, w)
                break
    return boxes


def fingerprint(pixels: torch.Tensor, *params: bytes) -> int:
    """64-bit xxh3 of what decides a finished view: its uint8 HWC pixels, then its finishing
    parameters (erasing boxes, mix, noise seed) as little-endian bytes, as an unsigned int."""
    h = xxhash.xxh3_64(np.ascontiguousarray(pixels.numpy()))
    for chunk in params:
        h.update(chunk)
    return h.intdigest()
