"""A view's random parameters, drawn explicitly from its seed in timm's order.

timm's training transform draws its parameters from the module-level `random`, `np.random`
and torch's default generator while it renders. deit-pipe instead draws every parameter of
a view itself — crop box and interpolation, flips, the auto-augment ops with their
magnitudes, fills and filters (or the colour-jitter order and factors), AugMix's chains and
weights — from the view's own generators, in exactly the order timm's code consumes them, so
the plan-3 views are unchanged and no library global is ever swapped. The parameters are
plain data: the host renders them with Pillow (`views.apply_host`), the device kernels with
the same arithmetic, and a test pins the draws to timm's own transform over many seeds.

The transform's configuration (ranges, op lists, hparams) is read from the timm transform
`create_transform` builds for the recipe, so parsing an auto-augment string stays timm's.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from timm.data import auto_augment as timm_aa
from timm.data import transforms as timm_transforms
from torchvision.transforms import transforms as tv_transforms

from deit_pipe.data.views.ops import OPS
from deit_pipe.errors import PlanError

_TAG_NUMPY = 0x5EED_A7  # the NumPy stream of a view seed
_LEVEL = timm_aa._LEVEL_DENOM


@dataclass(frozen=True)
class AugOp:
    """One auto-augment op as timm applies it: `NAME_TO_OP[name](img, *args, fillcolor=fill,
    resample=resample)`. GaussianBlurRand's radius is drawn here and stored as a GaussianBlur."""

    name: str
    args: tuple[float, ...]
    fill: tuple[int, ...]
    resample: int


@dataclass(frozen=True)
class AugMix:
    """AugMix's draws: float32 chain weights, the float32 final blend and each chain's ops."""

    weights: tuple[float, ...]
    m: float
    chains: tuple[tuple[AugOp, ...], ...]
    blended: bool


@dataclass(frozen=True)
class ViewParams:
    """Everything random about a view before finishing (erasing boxes are drawn after)."""

    crop: tuple[int, int, int, int]  # top, left, height, width in the source image
    size: tuple[int, int]  # output height, width
    interpolation: int  # PIL resample filter of the crop's resize
    hflip: bool
    vflip: bool
    ops: tuple[AugOp, ...] = ()
    jitter: tuple[tuple[int, float], ...] = ()  # (torchvision ColorJitter fn id, factor)
    augmix: AugMix | None = None


def _draw_op(op: timm_aa.AugmentOp, py: random.Random) -> AugOp | None:
    """`AugmentOp.__call__`'s draws in its order: apply?, magnitude, level args, filter."""
    if op.prob < 1.0 and py.random() > op.prob:
        return None
    magnitude = op.magnitude
    if op.magnitude_std == float("inf"):
        magnitude = py.uniform(0, magnitude)
    elif op.magnitude_std > 0:
        magnitude = py.gauss(magnitude, op.magnitude_std)
    magnitude = max(0.0, min(magnitude, op.magnitude_max or _LEVEL))
    entry = OPS.get(op.name)
    if entry is None:
        raise PlanError(f"auto-augment op {op.name!r} is not supported by deit-pipe's renderer")
    args = entry.args(magnitude, op.hparams, py)
    name, resample = op.name, 0
    if entry.affine:  # only the affine aug_fns resolve timm's `_interpolation`
        resample = op.kwargs["resample"]
        if isinstance(resample, list | tuple):
            resample = py.choice(resample)
    if entry.redraw is not None:
        name, args = entry.redraw(args, py)
    fill = op.kwargs["fillcolor"]
    fill = tuple(int(c) for c in fill) if isinstance(fill, list | tuple) else (int(fill),)
    return AugOp(name, tuple(args), fill, int(resample))


def _draw_ops(ops, py: random.Random) -> tuple[AugOp, ...]:
    drawn = (_draw_op(op, py) for op in ops)
    return tuple(op for op in drawn if op is not None)


class _LazyNumpy:
    """The view's NumPy generator, made on first use: most views draw from it once or never."""

    def __init__(self, seed: int):
        self.seed, self._gen = seed, None

    @property
    def gen(self) -> np.random.Generator:
        if self._gen is None:
            self._gen = np.random.Generator(np.random.PCG64([self.seed, _TAG_NUMPY]))
        return self._gen


class ViewDrawer:
    """Draws `ViewParams` for a timm training transform (as `views.train_transform` builds
    it), reading its configuration and never calling its random parts."""

    def __init__(self, transform):
        self.rrc, self.hflip, self.vflip = None, 0.0, 0.0
        self.augment, self.jitter = None, None
        for t in getattr(transform, "transforms", [transform]):
            if isinstance(t, timm_transforms.RandomResizedCropAndInterpolation):
                self.rrc = t
            elif isinstance(t, tv_transforms.RandomHorizontalFlip):
                self.hflip = float(t.p)
            elif isinstance(t, tv_transforms.RandomVerticalFlip):
                self.vflip = float(t.p)
            elif isinstance(t, timm_aa.RandAugment | timm_aa.AutoAugment | timm_aa.AugMixAugment):
                self.augment = t
            elif isinstance(t, tv_transforms.ColorJitter):
                self.jitter = (t.brightness, t.contrast, t.saturation, t.hue)
            elif not isinstance(t, timm_transforms.MaybePILToTensor):
                raise PlanError(f"the training transform's {type(t).__name__} is not supported")
        if self.rrc is None:
            raise PlanError("the training transform has no RandomResizedCrop")

    def draw(self, seed: int, width: int, height: int) -> tuple[ViewParams, random.Random]:
        """The parameters of view `seed` of a `width`×`height` image, and the view's Python
        generator positioned where timm's RandomErasing would continue drawing from it."""
        seed = int(seed) & 0xFFFF_FFFF_FFFF_FFFF
        py, npg = random.Random(seed), _LazyNumpy(seed)
        tg = torch.Generator().manual_seed(seed)
        crop = self._crop(py, width, height)
        interp = self.rrc.interpolation
        if isinstance(interp, list | tuple):
            interp = py.choice(interp)
        hflip = bool(self.hflip > 0 and torch.rand(1, generator=tg) < self.hflip)
        vflip = bool(self.vflip > 0 and torch.rand(1, generator=tg) < self.vflip)
        ops, augmix = self._augment(py, npg)
        jitter = self._jitter(tg) if self.jitter is not None else ()
        return ViewParams(
            crop, tuple(self.rrc.size), _pil_filter(interp), hflip, vflip, ops, jitter, augmix
        ), py

    def _crop(self, py: random.Random, img_w: int, img_h: int) -> tuple[int, int, int, int]:
        """timm's `RandomResizedCropAndInterpolation.get_params`, drawing from `py`."""
        scale, ratio, area = self.rrc.scale, self.rrc.ratio, img_w * img_h
        for _ in range(10):
            target_area = py.uniform(*scale) * area
            log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
            aspect = math.exp(py.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if w <= img_w and h <= img_h:
                return py.randint(0, img_h - h), py.randint(0, img_w - w), h, w
        in_ratio = img_w / img_h
        if in_ratio < min(ratio):
            w, h = img_w, int(round(img_w / min(ratio)))
        elif in_ratio > max(ratio):
            w, h = int(round(img_h * max(ratio))), img_h
        else:
            w, h = img_w, img_h
        return (img_h - h) // 2, (img_w - w) // 2, h, w

    def _augment(self, py: random.Random, npg: _LazyNumpy):
        aug = self.augment
        if isinstance(aug, timm_aa.RandAugment):
            pick = npg.gen.choice(
                len(aug.ops),
                aug.num_layers,
                replace=aug.choice_weights is None,
                p=aug.choice_weights,
            )
            return _draw_ops([aug.ops[i] for i in pick], py), None
        if isinstance(aug, timm_aa.AutoAugment):
            return _draw_ops(py.choice(aug.policy), py), None
        if isinstance(aug, timm_aa.AugMixAugment):
            return (), self._augmix(py, npg)
        return (), None

    def _augmix(self, py: random.Random, npg: _LazyNumpy) -> AugMix:
        aug = self.augment
        weights = np.float32(npg.gen.dirichlet([aug.alpha] * aug.width))
        m = np.float32(npg.gen.beta(aug.alpha, aug.alpha))
        chains = []
        for _ in range(aug.width):
            depth = aug.depth if aug.depth > 0 else int(npg.gen.integers(1, 4))
            pick = npg.gen.choice(len(aug.ops), depth, replace=True)
            chains.append(_draw_ops([aug.ops[i] for i in pick], py))
        return AugMix(tuple(float(w) for w in weights), float(m), tuple(chains), aug.blended)

    def _jitter(self, tg: torch.Generator) -> tuple[tuple[int, float], ...]:
        """torchvision `ColorJitter.get_params` + `forward`'s order, from the view's torch
        generator (as the transform drew from the default one, seeded with the view seed)."""
        order = torch.randperm(4, generator=tg).tolist()
        factors = [
            None if r is None else float(torch.empty(1).uniform_(r[0], r[1], generator=tg))
            for r in self.jitter
        ]
        return tuple((i, factors[i]) for i in order if factors[i] is not None)


def _pil_filter(interp) -> int:
    """A torchvision InterpolationMode (or PIL filter) as the PIL filter `resized_crop` uses."""
    from torchvision.transforms.functional import pil_modes_mapping

    return int(pil_modes_mapping[interp]) if interp in pil_modes_mapping else int(interp)
