"""The host decodes, the device renders: the Pillow stage of a batch of views on the device
that consumes them, with the same bytes as `views.apply_host`.

A loader worker draws a view's parameters and cuts its crop out of the decoded image (a crop
inside the image is a copy, no arithmetic: `Image.crop`); collating, it pads a batch's crops
into one uint8 tensor and computes their resize taps on the host in float64 (`prepare`). The
consumer moves that to its device and runs the kernels (`kernels/`, `realize`): the crop's
resize, the flips, then the auto-augment ops round by round, each op once for the views
that drew it. Views whose parameters the kernels do not cover (AugMix, colour jitter,
blur) are rendered by Pillow in the worker and ride along as pixels; `realize` counts them.
Fingerprints are taken from the rendered bytes exactly as the host path takes them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from deit_pipe.choices import RENDERS
from deit_pipe.data.jpeg import EncodedJpeg, PendingCrop
from deit_pipe.data.kernels import affine, enhance, pointops, resample
from deit_pipe.data.viewparams import AugOp, ViewDrawer, ViewParams
from deit_pipe.data.views import (
    ViewConfig,
    apply_host,
    erasing_boxes,
    eval_transform,
    view_fingerprint,
)
from deit_pipe.errors import DeitPipeError


def render_mode(render: str, device: torch.device) -> str:
    """`--render auto|host|device` for views consumed on `device`. Both paths give the same
    bytes, so this is only a speed choice, and auto takes the host for now: on a CPU the
    kernels run 2x (32² views) to 7x (224²) slower than Pillow, and on an H200 the device
    path's consumer side measured 1.0 ms a view (BENCHMARKS.md, 2026-12-04), more than a
    host loader's cores cost, before its host work moved into the loader workers; auto
    turns to the device on CUDA once `make gpu-check` shows it faster."""
    if render not in RENDERS:
        raise DeitPipeError(f"--render must be one of {', '.join(RENDERS)}, got {render!r}")
    return "host" if render == "auto" else render


@dataclass
class DeviceView:
    """A view handed to the device: its source crop (uint8 HWC, or a JPEG's region still to
    decode) and parameters, or, where `params` is None, its pixels rendered on the host."""

    pixels: torch.Tensor | PendingCrop
    params: ViewParams | None
    taps: resample.ViewTaps | None = None  # its resize, where not `params`' crop's (eval)


def defer(
    img: Image.Image | EncodedJpeg, view_seed: int, drawer: ViewDrawer, cfg: ViewConfig
) -> tuple[DeviceView, np.ndarray]:
    """`views.render`'s work up to the Pillow stage: the draws, the erasing boxes (drawn
    after, from the same generator) and the crop; `prepare` and `realize` do the rest."""
    params, rng = drawer.draw(view_seed, *img.size)
    boxes = erasing_boxes(rng, cfg, *params.size)
    if not covered(params):
        return DeviceView(apply_host(img, params), None), boxes
    top, left, h, w = params.crop
    box = (left, top, left + w, top + h)
    if isinstance(img, EncodedJpeg):  # decoded when collated, into the batch's tensor
        return DeviceView(PendingCrop(img, box), params), boxes
    return DeviceView(torch.from_numpy(np.array(img.crop(box))), params), boxes


_EVAL_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
_EVAL_FILTERS["nearest"] = Image.Resampling.NEAREST


def defer_eval(img: Image.Image, cfg: ViewConfig) -> DeviceView:
    """An eval view left to the device: timm's eval transform (torchvision `Resize` of the
    shorter side to floor(input / crop_pct), then `CenterCrop`) as resize taps of the whole
    image. A filter the eval path has no kernel for renders on the host."""
    size = cfg.input_size
    resample_filter = _EVAL_FILTERS.get(cfg.interpolation)
    if resample_filter is None:
        return DeviceView(eval_transform(cfg)(img).permute(1, 2, 0).contiguous(), None)
    taps = resample.eval_taps(
        img.size, math.floor(size / cfg.crop_pct), (size, size), int(resample_filter)
    )
    params = ViewParams(
        (0, 0, img.height, img.width), (size, size), int(resample_filter), False, False
    )
    return DeviceView(torch.from_numpy(np.array(img)), params, taps)


# The affine ops (by timm name) as the inverse matrix Pillow builds for a w x h image: one
# `transform_affine` call runs every affine op of a round that shares a filter.
MATRICES = {
    "Rotate": lambda a, w, h: affine.rotate_matrix(a, w, h),
    "ShearX": lambda a, w, h: affine.shear_matrix(a, "x"),
    "ShearY": lambda a, w, h: affine.shear_matrix(a, "y"),
    "TranslateX": lambda a, w, h: affine.translate_matrix(a, 0.0),
    "TranslateY": lambda a, w, h: affine.translate_matrix(0.0, a),
    "TranslateXRel": lambda a, w, h: affine.translate_matrix(affine.translate_rel(a, w), 0.0),
    "TranslateYRel": lambda a, w, h: affine.translate_matrix(0.0, affine.translate_rel(a, h)),
}


def _affine(x: torch.Tensor, ops: list[AugOp]) -> torch.Tensor:
    _, h, w, _ = x.shape
    mats = [MATRICES[op.name](op.args[0], w, h) for op in ops]
    fill = torch.tensor([affine.fill_color(op.fill) for op in ops], dtype=torch.uint8)
    return affine.transform_affine(x, mats, ops[0].resample, fill)


def _arg(fn, convert=lambda a: a):
    return lambda x, ops: fn(x, [convert(op.args[0]) for op in ops])


def _plain(fn):
    return lambda x, ops: fn(x)


_ENHANCE = {"Color": enhance.color, "Contrast": enhance.contrast}
_ENHANCE |= {"Brightness": enhance.brightness, "Sharpness": enhance.sharpness}
# Each auto-augment op (by timm name) as a kernel over the views that drew it: (x, ops) → x.
KERNELS = {
    "AutoContrast": _plain(pointops.autocontrast),
    "Equalize": _plain(pointops.equalize),
    "Invert": _plain(pointops.invert),
    "SolarizeAdd": _arg(pointops.solarize_add),
    "Desaturate": _arg(enhance.color, enhance.desaturate_factor),
}
KERNELS |= dict.fromkeys(MATRICES, _affine)
for _suffix in ("", "Increasing", "Original"):
    KERNELS[f"Posterize{_suffix}"] = _arg(pointops.posterize)
for _suffix in ("", "Increasing"):
    KERNELS[f"Solarize{_suffix}"] = _arg(pointops.solarize)
    KERNELS |= {f"{name}{_suffix}": _arg(fn) for name, fn in _ENHANCE.items()}
# torchvision's ColorJitter on a PIL image is ImageEnhance too (brightness, contrast,
# saturation = Color); hue (id 3) goes through Pillow's HSV conversion, left to the host.
_JITTER = {0: enhance.brightness, 1: enhance.contrast, 2: enhance.color}


def covered(p: ViewParams) -> bool:
    """Whether the kernels render every step of this view (else the host renders it)."""
    return (
        p.augmix is None
        and all(op.name in KERNELS for op in p.ops)
        and all(fn in _JITTER for fn, _ in p.jitter)
    )


def _rounds(x: torch.Tensor, steps: list[tuple], apply) -> torch.Tensor:
    """Step k of every view, views grouped by what their step k is (one kernel call a
    group): `steps[i]` is view i's sequence, `apply(x, key, items)` runs one group."""
    for k in range(max((len(s) for s in steps), default=0)):
        groups: dict = {}
        for i, seq in enumerate(steps):
            if k < len(seq):
                groups.setdefault(seq[k][0], []).append((i, seq[k][1]))
        for key, members in groups.items():
            index = torch.tensor([i for i, _ in members], device=x.device)
            x[index] = apply(x[index], key, [item for _, item in members])
    return x


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch tensor; in a loader worker, in shared memory from the start (as
    torch's `default_collate` makes its batches), so that handing it to the consumer copies
    nothing (a batch of 128 padded 224² crops is ~80 MB)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(nbytes), 0, shape)


def prepare(views: list[DeviceView]) -> dict:
    """The host side of a batch of deferred views, done where the batch is collated (in a
    loader worker, in parallel with the others): the crops padded into one uint8 tensor
    (each in its top-left corner) and their resize plan, the parameters, and the pixels of
    the views Pillow rendered. `realize` does the rest on the consuming device."""
    todo = [i for i, v in enumerate(views) if v.params is not None]
    done = [i for i, v in enumerate(views) if v.params is None]
    size = views[todo[0]].params.size if todo else tuple(views[0].pixels.shape[:2])
    out = {"size": size, "count": len(views), "todo": todo, "done": done}
    if done:
        ready = [views[i].pixels for i in done]
        out["ready"] = torch.stack(
            ready, out=batch_tensor((len(ready), *ready[0].shape), torch.uint8)
        )
    if todo:
        crops = [views[i].pixels for i in todo]
        out["params"] = [views[i].params for i in todo]
        taps = [
            views[i].taps
            or resample.resize_taps((c.shape[1], c.shape[0]), p.size[::-1], p.interpolation)
            for i, c, p in zip(todo, crops, out["params"], strict=True)
        ]
        out["plan"] = resample.stack_taps(taps)
        hmax, wmax = max(c.shape[0] for c in crops), max(c.shape[1] for c in crops)
        # Not zeroed: padding is read only under zero weights, and x * 0 = 0 for any byte.
        padded = batch_tensor((len(crops), hmax, wmax, crops[0].shape[2]), torch.uint8)
        for i, c in enumerate(crops):
            if isinstance(c, PendingCrop):
                c.into(padded[i].numpy())  # the region decoded in place
            else:
                padded[i, : c.shape[0], : c.shape[1]] = c
        out["crops"] = padded
    return out


def _render(prepared: dict, device: torch.device) -> torch.Tensor:
    """The Pillow stage of a prepared batch's kernel views on `device`: resize, flips, then
    the auto-augment ops and the jitter, round by round."""
    params = prepared["params"]
    crops = prepared["crops"].to(device, non_blocking=True)
    x = resample.resize_batch(crops, prepared["plan"].to(device))
    for flag, dim in (("hflip", 2), ("vflip", 1)):
        flips = [i for i, p in enumerate(params) if getattr(p, flag)]
        if flips:
            index = torch.tensor(flips, device=device)
            x[index] = x[index].flip(dim)
    # Grouped by kernel and filter: every affine op of a round with the same filter shares
    # one call (they differ only in their matrices), every other op has its own.
    ops = [[((KERNELS[op.name], op.resample), op) for op in p.ops] for p in params]
    x = _rounds(x, ops, lambda xs, key, items: key[0](xs, items))
    jitter = [list(p.jitter) for p in params]
    return _rounds(x, jitter, lambda xs, fn, factors: _JITTER[fn](xs, factors))


def realize(batch: dict, device: torch.device) -> dict:
    """A collated batch of deferred views (`device_views`: `prepare`d, or a list of
    `DeviceView`) rendered on `device`: the batch as the host path collates it (`image`
    uint8 NHWC, on the device; `fingerprint` from those bytes), plus `host_rendered`, how
    many views the kernels did not cover."""
    prepared = batch.pop("device_views")
    if isinstance(prepared, list):
        prepared = prepare(prepared)
    n, todo, done = prepared["count"], prepared["todo"], prepared["done"]
    image = torch.empty((n, *prepared["size"], 3), dtype=torch.uint8, device=device)
    if todo:
        image[todo] = _render(prepared, device)
    if done:
        image[done] = prepared["ready"].to(device)
    host = image.cpu()  # one read-back a batch: the fingerprints hash the rendered bytes
    erase, mix, lam = batch["erase"].numpy(), batch["mix"].numpy(), batch["lam"].numpy()
    box, seed = batch["box"].numpy(), batch["seed"].numpy()
    fps = [
        view_fingerprint(host[i], erase[i], int(mix[i]), lam[i], box[i], seed[i]) for i in range(n)
    ]
    fps = torch.from_numpy(np.array(fps, dtype=np.uint64).view(np.int64))
    return {**batch, "image": image, "fingerprint": fps, "host_rendered": len(done)}
