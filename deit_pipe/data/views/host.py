"""View rendering on the host: a training view is a pure function of (image, view seed, config).

`render` draws a view's parameters from its seed (`viewparams`, in timm's order) and runs
the Pillow stage of timm's training transform with them (crop, flip, RandAugment or color
jitter) in timm's prefetcher form — uint8, kept in Pillow's HWC layout — then draws the
view's random erasing boxes from the same generator as timm's `RandomErasing` would.
Everything after — to float, normalize, erasing noise, mixup/cutmix — is `finish`, batched
on the device that consumes the views. `fingerprint` hashes exactly what decides
a finished view (its uint8 bytes and its finishing parameters), so the student proves it
replays the pixels the teacher saw without finishing anything on the host.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
import xxhash
from PIL import Image
from timm.data import auto_augment as timm_aa
from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torchvision.transforms import functional as F

from deit_pipe.data.decode.jpeg import EncodedJpeg
from deit_pipe.data.sources.source import Source
from deit_pipe.data.views.ops import OPS, posterize
from deit_pipe.data.views.params import AugMix, AugOp, ViewDrawer, ViewParams
from deit_pipe.errors import check
from deit_pipe.limits import MAX_INPUT_SIZE, MAX_RE_COUNT, check_at_most

Transform = Callable[[Image.Image], torch.Tensor]

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
        check(
            8 <= self.input_size <= MAX_INPUT_SIZE,
            f"--input-size must be in [8, {MAX_INPUT_SIZE}], got {self.input_size}",
        )
        lo, hi = self.scale
        check(0 < lo <= hi <= 1, f"--scale-min must be in (0, 1], got {lo:g}")
        for flag, p in (("--hflip", self.hflip), ("vflip", self.vflip), ("--reprob", self.re_prob)):
            check(0 <= p <= 1, f"{flag} is a probability in [0, 1], got {p:g}")
        check(  # an infinite factor range makes every view one colour
            math.isfinite(self.color_jitter) and self.color_jitter >= 0,
            f"--color-jitter must be finite and ≥ 0, got {self.color_jitter:g}",
        )
        check(self.re_count >= 1, f"--recount must be at least 1, got {self.re_count}")
        check_at_most(self.re_count, MAX_RE_COUNT, "--recount")
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


def _patch_posterize(policy: object) -> None:
    ops = getattr(policy, "ops", None)
    if ops is None:  # AutoAugment keeps sub-policies of ops
        ops = [op for sub in getattr(policy, "policy", []) for op in sub]
    for op in ops:
        if op.aug_fn is timm_aa.posterize:
            op.aug_fn = posterize


def _apply_ops(img: Image.Image, ops: tuple[AugOp, ...]) -> Image.Image:
    for op in ops:
        fill = op.fill if len(op.fill) > 1 else op.fill[0]
        img = OPS[op.name].host(img, *op.args, fillcolor=fill, resample=op.resample)
    return img


_JITTER = (F.adjust_brightness, F.adjust_contrast, F.adjust_saturation, F.adjust_hue)


def _apply_augmix(img: Image.Image, mix: AugMix) -> Image.Image:
    """timm's `AugMixAugment._apply_basic`/`_apply_blended` with the drawn chains."""
    weights = np.array(mix.weights, dtype=np.float32)
    m = np.float32(mix.m)
    if mix.blended:
        orig = img.copy()
        ws = timm_aa.AugMixAugment._calc_blended_weights(None, weights, m)
        for w, chain in zip(ws, mix.chains, strict=True):
            img = Image.blend(img, _apply_ops(orig, chain), w)
        return img
    mixed = np.zeros_like(img, dtype=np.float32)
    for w, chain in zip(weights, mix.chains, strict=True):
        mixed += w * np.asarray(_apply_ops(img, chain), dtype=np.float32)
    np.clip(mixed, 0, 255.0, out=mixed)
    return Image.blend(img, Image.fromarray(mixed.astype(np.uint8)), m)


def apply_host(img: Image.Image | EncodedJpeg, p: ViewParams) -> torch.Tensor:
    """The Pillow stage of a view with drawn parameters, exactly as timm's transform renders
    it (torchvision's `resized_crop` is a crop then a resize): uint8 HWC."""
    top, left, h, w = p.crop
    img = img.crop((left, top, left + w, top + h)).resize(p.size[::-1], p.interpolation)
    if p.hflip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if p.vflip:
        img = img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    img = _apply_ops(img, p.ops)
    if p.augmix is not None:
        img = _apply_augmix(img, p.augmix)
    for fn, factor in p.jitter:
        img = _JITTER[fn](img, factor)
    pixels = np.array(img, dtype=np.uint8)
    return torch.from_numpy(pixels if pixels.ndim == 3 else pixels[:, :, None])


def render(
    img: Image.Image | EncodedJpeg, view_seed: int, drawer: ViewDrawer, cfg: ViewConfig
) -> tuple[torch.Tensor, np.ndarray]:
    """One augmented view before finishing: uint8 HWC pixels (Pillow's layout, which is
    channels-last NCHW once batched and permuted) and its erasing boxes, drawn after the
    transform's own parameters from the same generator, as timm's RandomErasing would."""
    params, rng = drawer.draw(view_seed, *img.size)
    pixels = apply_host(img, params)
    return pixels, erasing_boxes(rng, cfg, pixels.shape[0], pixels.shape[1])


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


def view_fingerprint(pixels, boxes: np.ndarray, op: int, lams, box, seed) -> int:
    """A view's fingerprint: its pixels, then its erasing boxes, its pair's mix (op as u32,
    float32 λs, int32 box) and its seed (u64), as bytes."""
    mix_bytes = np.array([op], "<u4").tobytes() + np.asarray(lams).tobytes()
    mix_bytes += np.asarray(box).tobytes()
    return fingerprint(pixels, boxes.tobytes(), mix_bytes, np.asarray(seed, "<u8").tobytes())
