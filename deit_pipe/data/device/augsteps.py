"""A batch's auto-augment ops and colour jitter as kernel calls: made on the host where
the batch is collated (`steps_of`), run on the consuming device (`run_steps`). Which kernel
an op runs is its entry's in the op table (`data/views/ops.py`).

Round k applies every view's k-th op; the views of a round that drew the same op (and,
for the affine ops, the same filter: rotate, shear and translate differ only in their
matrices) share one kernel call. Everything a call needs that depends on the views (which
rows of the batch, their matrices, fills, magnitudes and factors) is computed here on the
host in float64, as Pillow computes it, and travels with the batch as tensors: the
consumer only moves them to its device, without waiting, and launches kernels. So the
device stage reads nothing back and never stalls its stream on a host copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from deit_pipe.data.device.kernels import affine, enhance, pointops
from deit_pipe.data.views.ops import OPS, DeviceOp
from deit_pipe.data.views.params import AugOp, ViewParams

__all__ = ["KERNELS", "JITTER", "Step", "covered", "steps_of", "run_steps"]


class Step(NamedTuple):
    """One kernel call: `kernel` (a `KERNELS` name, `affine` or `jitter:<id>`) on the batch rows
    `index`, with per-row `args` ([g] or [g, 6] matrices) and, for affine ops, the filter
    and the fill colours ([g, 3] uint8)."""

    kernel: str
    index: torch.Tensor
    args: torch.Tensor | None = None
    resample: int = -1
    fill: torch.Tensor | None = None


class Kernel(NamedTuple):
    """How an op runs: `run(x, step)` on the device, and its per-view argument built on the
    host from the op and the view's (w, h) (None: the op takes no argument)."""

    run: Callable[[torch.Tensor, Step], torch.Tensor]
    arg: Callable[[AugOp, int, int], float | tuple] | None = None
    dtype: torch.dtype = torch.float64


def _plain(fn) -> Kernel:
    return Kernel(lambda x, s: fn(x))


def _int(fn) -> Kernel:
    return Kernel(lambda x, s: fn(x, s.args), lambda op, w, h: op.args[0], torch.int64)


def _float(fn, convert=lambda a: a) -> Kernel:
    return Kernel(lambda x, s: fn(x, s.args), lambda op, w, h: convert(op.args[0]))


def _run_affine(x: torch.Tensor, s: Step) -> torch.Tensor:
    return affine.transform_affine(x, s.args, s.resample, s.fill)


def _affine(matrix) -> Kernel:
    return Kernel(_run_affine, lambda op, w, h: matrix(op.args[0], w, h))


def _resolve(name: str) -> Callable:
    """The kernel the op table names as "module.function" in `kernels`."""
    module, fn = name.split(".")
    return getattr(_MODULES[module], fn)


_MODULES = {"affine": affine, "enhance": enhance, "pointops": pointops}


def _kernel(spec: DeviceOp) -> Kernel:
    """The kernel call of an op table entry's `DeviceOp`."""
    fn = _resolve(spec.fn)
    if spec.arg == "matrix":
        return _affine(fn)
    if spec.arg == "int":
        return _int(fn)
    if spec.arg == "float":
        return _float(fn, _resolve(spec.convert)) if spec.convert else _float(fn)
    return _plain(fn)


# Each auto-augment op (by timm name) that has a kernel, from the op table.
KERNELS: dict[str, Kernel] = {n: _kernel(op.device) for n, op in OPS.items() if op.device}
# torchvision's ColorJitter on a PIL image is ImageEnhance too (brightness, contrast,
# saturation = Color); hue (id 3) goes through Pillow's HSV conversion, left to the host.
JITTER = {0: enhance.brightness, 1: enhance.contrast, 2: enhance.color}
for _id, _fn in JITTER.items():
    KERNELS[f"jitter:{_id}"] = Kernel(lambda x, s, fn=_fn: fn(x, s.args))
KERNELS["affine"] = Kernel(_run_affine)  # a round's affine ops with one filter, together


def covered(p: ViewParams) -> bool:
    """Whether the kernels render every step of this view (else the host renders it)."""
    return (
        p.augmix is None
        and all(op.name in KERNELS for op in p.ops)
        and all(fn in JITTER for fn, _ in p.jitter)
    )


def _sequence(p: ViewParams) -> list[tuple[tuple[str, int], AugOp | float]]:
    """A view's steps in order as (group key, item): its ops, then its jitter factors."""
    seq = []
    for op in p.ops:  # every affine op with one filter shares a call; the others ignore it
        seq.append((("affine", op.resample) if OPS[op.name].affine else (op.name, -1), op))
    seq += [((f"jitter:{fn}", -1), factor) for fn, factor in p.jitter]
    return seq


def steps_of(params: list[ViewParams]) -> list[Step]:
    """The kernel calls of a batch of covered views (rows in `params`' order), round by
    round; host tensors, to move to the device with the batch."""
    seqs = [_sequence(p) for p in params]
    steps = []
    for k in range(max((len(s) for s in seqs), default=0)):
        groups: dict[tuple[str, int], list[int]] = {}
        for i, seq in enumerate(seqs):
            if k < len(seq):
                groups.setdefault(seq[k][0], []).append(i)
        for (name, filt), rows in groups.items():
            steps.append(_step(name, filt, rows, [seqs[i][k][1] for i in rows], params))
    return steps


def _step(name: str, filt: int, rows: list[int], items: list, params: list) -> Step:
    index = torch.tensor(rows, dtype=torch.int64)
    if name.startswith("jitter:"):
        return Step(name, index, torch.tensor(items, dtype=torch.float64))
    kernel = KERNELS[items[0].name]
    if kernel.arg is None:
        return Step(name, index)
    sizes = [params[i].size for i in rows]  # (h, w) of the resized view
    args = [KERNELS[op.name].arg(op, w, h) for op, (h, w) in zip(items, sizes, strict=True)]
    args_t = torch.from_numpy(np.asarray(args, dtype=np.float64)).to(kernel.dtype)
    if name != "affine":
        return Step(name, index, args_t)
    fill = torch.tensor([_fill(op.fill) for op in items], dtype=torch.uint8)
    return Step(name, index, args_t, filt, fill.reshape(len(rows), -1))


@functools.lru_cache(maxsize=64)
def _fill(fill: tuple) -> tuple:
    return affine.fill_color(fill)


def run_steps(x: torch.Tensor, steps: list[Step]) -> torch.Tensor:
    """Apply a batch's steps to its rendered views `x` (uint8 [n, H, W, C]) on x's
    device: host tensors move without waiting, nothing is read back."""
    dev = x.device

    def move(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(dev, non_blocking=True)

    for s in steps:
        s = s._replace(index=move(s.index), args=move(s.args), fill=move(s.fill))
        x[s.index] = KERNELS[s.kernel].run(x[s.index], s)
    return x
