"""The host decodes, the device renders: the Pillow stage of a batch of views on the device
that consumes them, with the same bytes as `views.apply_host`.

A loader worker draws a view's parameters and cuts its crop out of the decoded image (a crop
inside the image is a copy, no arithmetic: `Image.crop`); collating, it pads a batch's crops
into one uint8 tensor and computes their resize taps on the host in float64 (`prepare`). A
JPEG's crop is decoded only as far as its DCT blocks there (`jpegblocks`), the rest of its
decode left to the device. The consumer moves that to its device and runs the kernels
(`kernels/`, `realize`): the JPEG crops' IDCT, upsampling and colour conversion, the crop's
resize, the flips, then the auto-augment ops round by round, each op once for the views
that drew it. Views whose parameters the kernels do not cover (AugMix, colour jitter,
blur) are rendered by Pillow in the worker and ride along as pixels; `realize` counts them.
Fingerprints are taken from the rendered bytes exactly as the host path takes them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image
from torch.utils.data import get_worker_info

from deit_pipe.choices import RENDERS
from deit_pipe.data.decode.jpeg import EncodedJpeg, PendingCrop
from deit_pipe.data.device import jpegblocks
from deit_pipe.data.device.augsteps import covered, run_steps, steps_of
from deit_pipe.data.device.kernels import resample
from deit_pipe.data.views.batch import ViewBatch
from deit_pipe.data.views.host import (
    ViewConfig,
    apply_host,
    erasing_boxes,
    eval_transform,
    view_fingerprint,
)
from deit_pipe.data.views.params import ViewDrawer, ViewParams
from deit_pipe.errors import DeitPipeError


def render_mode(render: str, device: torch.device) -> str:
    """`--render auto|host|device` for views consumed on `device`. Both paths give the same
    bytes, so this is only a speed choice. auto starts on the host: on a CPU the kernels
    run 2x (32² views) to 12x (224²) slower than Pillow, and on a GPU the answer depends on
    the GPU, the model and the host's cores, so training on CUDA measures it
    (`student.rendertrial`) and may switch; precompute, verify, audit and eval keep the host."""
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
    top, left, h, w = params.crop
    # Pillow's: ops no kernel covers, an empty crop (a 1-pixel image), a crop over the
    # kernels' wave budget alone (a huge image: their memory stays bounded)
    if not covered(params) or h < 1 or w < 1 or view_cost((h, w), params.size) > WAVE_PIXELS:
        return DeviceView(apply_host(img, params), None), boxes
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
    short = math.floor(size / cfg.crop_pct)  # the resize's shorter side, before the crop
    scale = short / min(img.size)
    resized = (math.ceil(img.height * scale), math.ceil(img.width * scale))
    if resample_filter is None or view_cost((img.height, img.width), resized) > WAVE_PIXELS:
        return DeviceView(eval_transform(cfg)(img).permute(1, 2, 0).contiguous(), None)
    taps = resample.eval_taps(img.size, short, (size, size), int(resample_filter))
    params = ViewParams(
        (0, 0, img.height, img.width), (size, size), int(resample_filter), False, False
    )
    return DeviceView(torch.from_numpy(np.array(img)), params, taps)


def batch_tensor(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised batch tensor; in a loader worker, in shared memory from the start (as
    torch's `default_collate` makes its batches), so that handing it to the consumer copies
    nothing (a batch of 128 padded 224² crops is ~80 MB)."""
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    return torch.empty(0, dtype=dtype).set_(torch.UntypedStorage._new_shared(nbytes), 0, shape)


# The kernels' working set, in padded pixels: the views launched together are padded to the
# largest source crop (or output) on each axis, so a wave of n views costs n × max(H, oh) ×
# max(W, ow), and a batch is split into waves of at most this many (a view alone over it
# renders on the host: `defer`). Its peak memory is then fixed whatever the mix of image
# sizes (docs/DESIGN.md states the bytes); an ImageNet batch of 256 fits in one wave.
WAVE_PIXELS = 1 << 26


def view_cost(crop: tuple[int, int], size: tuple[int, int]) -> int:
    """A view's padded pixels in a wave of its own: source crop (h, w) and output size."""
    return max(crop[0], size[0]) * max(crop[1], size[1])


def waves(shapes: list[tuple[int, int]], sizes: list[tuple[int, int]]) -> list[list[int]]:
    """The views (by position) launched together: all at once where they fit under
    `WAVE_PIXELS`, else packed largest first, each wave under it (a view over it alone)."""
    dims = [(max(h, o[0]), max(w, o[1])) for (h, w), o in zip(shapes, sizes, strict=True)]
    hmax, wmax = max(d[0] for d in dims), max(d[1] for d in dims)
    if len(dims) * hmax * wmax <= WAVE_PIXELS:
        return [list(range(len(dims)))]
    out: list[list[int]] = []
    current, hmax, wmax = [], 0, 0
    for i in sorted(range(len(dims)), key=lambda k: -dims[k][0] * dims[k][1]):
        h, w = max(hmax, dims[i][0]), max(wmax, dims[i][1])
        if current and (len(current) + 1) * h * w > WAVE_PIXELS:
            out.append(current)
            current, h, w = [], dims[i][0], dims[i][1]
        current.append(i)
        hmax, wmax = h, w
    return [*out, current]


def prepare(views: list[DeviceView]) -> dict:
    """The host side of a batch of deferred views, done where the batch is collated (in a
    loader worker, in parallel with the others): the kernel views in waves of bounded
    padded size (`waves`), each with its crops padded into one uint8 tensor, its resize
    plan, flips and auto-augment steps; and the pixels of the views Pillow rendered. Only
    tensors and sizes: `realize` moves them to the consuming device and waves the
    kernels, wave by wave."""
    todo = [i for i, v in enumerate(views) if v.params is not None]
    done = [i for i, v in enumerate(views) if v.params is None]
    size = views[todo[0]].params.size if todo else tuple(views[0].pixels.shape[:2])
    out = {"size": size, "count": len(views), "kernel_views": len(todo), "waves": []}
    if done:
        ready = [views[i].pixels for i in done]
        out["ready"] = torch.stack(
            ready, out=batch_tensor((len(ready), *ready[0].shape), torch.uint8)
        )
        out["done"] = torch.tensor(done, dtype=torch.int64)
    if todo:
        shapes = [tuple(views[i].pixels.shape[:2]) for i in todo]
        groups = waves(shapes, [views[i].params.size for i in todo])
        for group in groups:
            wave = _prepare_wave([views[todo[k]] for k in group])
            wave["index"] = torch.tensor([todo[k] for k in group], dtype=torch.int64)
            out["waves"].append(wave)
    return out


def _prepare_wave(views: list[DeviceView]) -> dict:
    """One wave of kernel views: crops padded into one tensor, their plan and steps."""
    out: dict = {"kernel_views": len(views)}
    crops = [v.pixels for v in views]
    params = [v.params for v in views]
    taps = [
        v.taps or resample.resize_taps((c.shape[1], c.shape[0]), p.size[::-1], p.interpolation)
        for v, c, p in zip(views, crops, params, strict=True)
    ]
    out["plan"] = resample.stack_taps(taps)
    hmax, wmax = max(c.shape[0] for c in crops), max(c.shape[1] for c in crops)
    pixels = list(range(len(crops)))
    jpegs = [k for k, c in enumerate(crops) if isinstance(c, PendingCrop)]
    if jpegs and jpegblocks.enabled():  # left as DCT blocks for the device
        packed, left = jpegblocks.pack([crops[k] for k in jpegs], (hmax, wmax), batch_tensor)
        if packed is not None:
            packed["index"] = torch.tensor(jpegs, dtype=torch.int64)[packed["index"]]
            out["blocks"] = packed
        decoded = set(jpegs) - {jpegs[k] for k in left}
        pixels = [k for k in pixels if k not in decoded]
    # Not zeroed: padding is read only under zero weights, and x * 0 = 0 for any byte.
    padded = batch_tensor((len(pixels), hmax, wmax, crops[0].shape[2]), torch.uint8)
    for i, k in enumerate(pixels):
        c = crops[k]
        if isinstance(c, PendingCrop):
            c.into(padded[i].numpy())  # the region decoded in place
        else:
            padded[i, : c.shape[0], : c.shape[1]] = c
    out["crops"], out["pixel_rows"] = padded, torch.tensor(pixels, dtype=torch.int64)
    for flag in ("hflip", "vflip"):
        flips = [i for i, p in enumerate(params) if getattr(p, flag)]
        out[flag] = torch.tensor(flips, dtype=torch.int64)
    out["steps"] = steps_of(params)
    return out


def _crops(prepared: dict, device: torch.device) -> torch.Tensor:
    """The kernel views' padded source crops on `device`: JPEG blocks decoded there, the
    rest as the loader decoded them."""
    pixels, rows = prepared["crops"], prepared["pixel_rows"]
    blocks = prepared.get("blocks")
    if blocks is None:
        return pixels.to(device, non_blocking=True)
    decoded = jpegblocks.unpack(blocks, device)
    n = prepared["kernel_views"]
    if len(blocks["index"]) == n:  # every view a JPEG: the decoded batch is the batch
        crops = decoded
    else:
        crops = torch.empty((n, *decoded.shape[1:]), dtype=torch.uint8, device=device)
        crops[blocks["index"].to(device, non_blocking=True)] = decoded
    if len(rows):  # after the blocks: a JPEG libjpeg refused as blocks is among these
        crops[rows.to(device, non_blocking=True)] = pixels.to(device, non_blocking=True)
    return crops


def _kernels(prepared: dict, device: torch.device) -> torch.Tensor:
    """The Pillow stage of a prepared batch's kernel views on `device`: resize, flips, then
    the auto-augment ops and the jitter, round by round. Host tensors are moved without
    waiting and nothing is read back, so the waves queue behind the device's work."""
    crops = _crops(prepared, device)
    x = resample.resize_batch(crops, prepared["plan"].to(device))
    for flag, dim in (("hflip", 2), ("vflip", 1)):
        if len(prepared[flag]):
            index = prepared[flag].to(device, non_blocking=True)
            x[index] = x[index].flip(dim)
    return run_steps(x, prepared["steps"])


def device_pixels(batch: ViewBatch, device: torch.device, *, wait: bool = True) -> ViewBatch:
    """Any collated batch with its views' pixels: one whose Pillow stage the kernels run,
    rendered on `device` (`realize`); one the host rendered, as it is. Either way with
    `host_rendered`, how many of its views Pillow rendered."""
    if not batch.rendered:
        return realize(batch, device, wait=wait)
    return replace(batch, host_rendered=len(batch))


class Later:
    """A value computed when first asked for (`get`): a device batch's fingerprints, whose
    bytes are still on their way back to the host."""

    def __init__(self, compute: Callable[[], torch.Tensor]):
        self._compute: Callable[[], torch.Tensor] | None = compute
        self._value: torch.Tensor | None = None

    def get(self) -> torch.Tensor:
        if self._compute is not None:
            self._value, self._compute = self._compute(), None
        return self._value


def fingerprints(batch: ViewBatch) -> torch.Tensor:
    """A batch's fingerprints (int64 [n]), whether taken already or still pending."""
    fps = batch.fingerprint
    return fps.get() if isinstance(fps, Later) else fps


def _pending_fingerprints(image: torch.Tensor, batch: ViewBatch, now: bool) -> Later:
    """The fingerprints of `image`'s bytes, hashed on the host as the host path hashes them.
    On CUDA the copy back is queued behind the kernels into pinned memory without waiting
    for them, so the caller can wave its own work before it asks; elsewhere a copy
    unless hashed `now`, as the caller may write into `image` first."""
    if image.device.type == "cuda":
        host = torch.empty(image.shape, dtype=image.dtype, pin_memory=True)
        host.copy_(image, non_blocking=True)
        ready = torch.cuda.Event()
        ready.record()
    else:
        host, ready = (image if now else image.clone()), None
    parts = (batch.erase, batch.mix, batch.lam, batch.box, batch.seed)
    erase, mix, lam, box, seed = (t.numpy() for t in parts)

    def compute() -> torch.Tensor:
        if ready is not None:
            ready.synchronize()
        fps = [
            view_fingerprint(img, erase[i], int(mix[i]), lam[i], box[i], seed[i])
            for i, img in enumerate(host)
        ]
        return torch.from_numpy(np.array(fps, dtype=np.uint64).view(np.int64))

    return Later(compute)


def realize(batch: ViewBatch, device: torch.device, *, wait: bool = True) -> ViewBatch:
    """A collated batch of deferred views (`device_views`: `prepare`d, or a list of
    `DeviceView`) rendered on `device`, wave by wave: the batch as the host path collates
    it (`image` uint8 NHWC, on the device; `fingerprint` from those bytes, with
    `wait=False` still pending: see `fingerprints`), plus `host_rendered`, how many views
    the kernels did not cover."""
    prepared = batch.device_views
    if isinstance(prepared, list):
        prepared = prepare(prepared)
    n, kernel_views, parts = prepared["count"], prepared["kernel_views"], prepared["waves"]
    if len(parts) == 1 and kernel_views == n:  # the common case: the batch in one wave
        image = _kernels(parts[0], device)
    else:
        image = torch.empty((n, *prepared["size"], 3), dtype=torch.uint8, device=device)
        for wave in parts:
            image[wave["index"].to(device, non_blocking=True)] = _kernels(wave, device)
        if kernel_views < n:
            done = prepared["done"].to(device, non_blocking=True)
            image[done] = prepared["ready"].to(device, non_blocking=True)
    pending = _pending_fingerprints(image, batch, now=wait)
    fps = pending.get() if wait else pending
    done = dict(image=image, fingerprint=fps, host_rendered=n - kernel_views)
    return replace(batch, device_views=None, **done)
