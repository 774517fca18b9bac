"""View rendering: a training view is a pure function of (image, view seed, config).

`render` runs timm's training transform with private `random`/NumPy generators and torch's
CPU generator seeded from the view seed, leaving the caller's RNG state as it was;
`mix_pair` applies the plan's mixup/cutmix; `fingerprint` hashes the final float32 bytes so
the student can prove it replays the very pixels the teacher saw.

A view's bytes must not depend on the CPU that renders it (a store made on an AVX-512 node
is replayed on ARM or older x86 nodes), so every float operation after Pillow is exactly
rounded and free of ISA-dispatched kernels; the one timm step that was not (random
erasing's `normal_` noise) draws from `erasing_noise` instead. docs/DESIGN.md audits each step.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from timm.data import auto_augment as timm_aa
from timm.data import create_transform
from timm.data import random_erasing as timm_erasing
from timm.data import transforms as timm_transforms
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import transforms as tv_transforms

from deit_pipe.data.plan import MIX_CUTMIX, MIX_MIXUP
from deit_pipe.data.sources import Source
from deit_pipe.errors import check

Transform = Callable[[Image.Image], torch.Tensor]
# Renders patch module attributes (below); one render at a time per process.
_RNG_LOCK = threading.RLock()
_TAG_NOISE = 0x4E015E  # the erasing-noise stream of a view seed


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
    """timm's training transform for `cfg`, with Pillow-proof posterize."""
    tf = create_transform(
        cfg.input_size,
        is_training=True,
        scale=cfg.scale,
        ratio=cfg.ratio,
        hflip=cfg.hflip,
        vflip=cfg.vflip,
        color_jitter=cfg.color_jitter,
        auto_augment=cfg.auto_augment or None,
        re_prob=cfg.re_prob,
        re_mode=cfg.re_mode,
        re_count=cfg.re_count,
        **_common(cfg),
    )
    for t in getattr(tf, "transforms", []):
        if isinstance(t, timm_aa.RandAugment | timm_aa.AutoAugment):
            _patch_posterize(t)
    return tf


def eval_transform(cfg: ViewConfig) -> Transform:
    """Clean eval view: resize to input/crop_pct, center crop, normalize (bicubic by default)."""
    return create_transform(
        cfg.input_size, is_training=False, crop_pct=cfg.crop_pct, **_common(cfg)
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


class _NumpyWithOwnRandom:
    """numpy, except that `.random` is one seeded RandomState (for timm's `np.random.*`)."""

    def __init__(self, state: np.random.RandomState):
        self.random = state

    def __getattr__(self, name: str) -> object:
        return getattr(np, name)


def erasing_noise(bits: np.random.BitGenerator, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard-normal-shaped float32 noise that is bit-identical on every CPU.

    torch's `normal_` has per-ISA kernels (AVX2/AVX-512 Box–Muller with vectorised log/cos,
    a scalar path, NEON) that round differently. Here each value is the Irwin–Hall sum of 12
    uniforms on 16-bit midpoints, minus 6: integer sums and an exact power-of-two scaling
    (|numerator| < 2²⁴), so nothing rounds. Mean 0, variance 1 − 2⁻³², support ±6 (a normal
    leaves it with probability 2·10⁻⁹), excess kurtosis −0.1.
    """
    n = int(np.prod(shape))
    raw = bits.random_raw(3 * n).astype("<u8", copy=False)  # explicit byte order: portable
    sums = raw.view("<u2").reshape(n, 12).sum(axis=1, dtype=np.int64)
    values = (sums - (6 * 65536 - 6)).astype(np.float32) * np.float32(2.0**-16)
    return torch.from_numpy(values.reshape(shape))


class _ErasingPixels:
    """timm's `random_erasing._get_pixels`, with noise from the view's own portable stream."""

    def __init__(self, seed: int):
        self.seed, self.bits = seed, None

    def __call__(self, per_pixel, rand_color, patch_size, dtype=torch.float32, device="cpu"):
        if not (per_pixel or rand_color):
            return torch.zeros((patch_size[0], 1, 1), dtype=dtype, device=device)
        if self.bits is None:  # made on first use: most views are never erased
            seq = np.random.SeedSequence([self.seed & 0xFFFF_FFFF, self.seed >> 32, _TAG_NOISE])
            self.bits = np.random.PCG64(seq)
        shape = tuple(patch_size) if per_pixel else (patch_size[0], 1, 1)
        return erasing_noise(self.bits, shape).to(device=device, dtype=dtype)


# Modules whose transforms draw from `random.*` / `np.random.*`. They get private, seeded
# generators during a render: other threads of the process (dask's event loop, for one)
# also draw from the global `random`, and a single draw between seeding and use would
# silently change a view.
_PY_RANDOM_USERS = (timm_transforms, timm_aa, timm_erasing, tv_transforms)
_NP_RANDOM_USERS = (timm_aa, timm_transforms)


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Give the transforms RNGs seeded from a 64-bit seed; leave every caller RNG as it was.

    `random` and `np.random` users get private generators (the process-wide ones are never
    touched); random erasing gets its portable noise stream; torch's CPU generator is seeded
    and restored (not `torch.manual_seed`, which would also reseed the CUDA generators of a
    training process).
    """
    seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
    gen = torch.random.default_generator
    py_rng = random.Random(seed)
    np_rng = _NumpyWithOwnRandom(np.random.RandomState([seed & 0xFFFF_FFFF, seed >> 32]))
    with _RNG_LOCK:
        saved = [(m, "random", m.random) for m in _PY_RANDOM_USERS]
        saved += [(m, "np", m.np) for m in _NP_RANDOM_USERS]
        saved.append((timm_erasing, "_get_pixels", timm_erasing._get_pixels))
        torch_state = gen.get_state()
        try:
            for m in _PY_RANDOM_USERS:
                m.random = py_rng
            for m in _NP_RANDOM_USERS:
                m.np = np_rng
            timm_erasing._get_pixels = _ErasingPixels(seed)
            gen.manual_seed(seed)
            yield
        finally:
            for module, name, value in saved:
                setattr(module, name, value)
            gen.set_state(torch_state)


def render(img: Image.Image, view_seed: int, transform: Transform) -> torch.Tensor:
    """One augmented view: `transform(img)` under RNGs seeded from `view_seed`."""
    with seeded_rngs(view_seed):
        return transform(img).to(torch.float32).contiguous()


def mix_pair(
    x_a: torch.Tensor, x_b: torch.Tensor, op: int, lam: float, box: np.ndarray | tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both halves of a pair: each keeps weight λ of itself and takes 1−λ from its partner.

    Portable: λ and 1−λ are rounded to float32 once, then two IEEE multiplies and an add, each
    its own kernel (no fused multiply-add can form), as timm's `Mixup` computes it; cutmix
    only copies.
    """
    if op == MIX_MIXUP:
        return x_a * lam + x_b * (1.0 - lam), x_b * lam + x_a * (1.0 - lam)
    if op == MIX_CUTMIX:
        y0, y1, x0, x1 = (int(v) for v in box)
        a, b = x_a.clone(), x_b.clone()
        a[:, y0:y1, x0:x1] = x_b[:, y0:y1, x0:x1]
        b[:, y0:y1, x0:x1] = x_a[:, y0:y1, x0:x1]
        return a, b
    return x_a, x_b


def fingerprint(view: torch.Tensor) -> int:
    """64-bit blake2b of the view's float32 bytes, as an unsigned int."""
    data = view.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def as_int64(fp: int) -> int:
    """A uint64 fingerprint reinterpreted as int64 (torch tensors have no uint64 math)."""
    return fp - (1 << 64) if fp >= 1 << 63 else fp
