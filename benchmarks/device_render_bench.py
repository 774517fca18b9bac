"""P7-host and P7-cpu: the host's share of a 224² training view when the device renders.

On the same generated ImageNet-sized JPEGs as `render_bench.py`, DeiT recipe, all in one
run: timm's loader (open, decode, `convert("RGB")`, its prefetcher transform; one core: the
reference); the training loader's item with `--render host` (open the header, draw, decode
the crop's region, Pillow stage); with `--render device` (open, draw, decode the crop's
region), then the batch's collation (resize taps, padding); both again with JPEGs decoded
whole (`DEIT_PIPE_JPEG_REGION=0`); and the consumer's `realize` of a prepared batch (the
kernels, read-back, fingerprints) per view, on the CPU at batch 128 and on CUDA at batch
256 when there is one (the device named). P7-host = loader ÷ timm; P7-cpu = (loader +
realize on the CPU) ÷ timm.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).parent))

from render_bench import _timm_transform, make_jpegs  # noqa: E402
from report import record_section  # noqa: E402

from deit_pipe.data import open_source  # noqa: E402
from deit_pipe.data.decode import jpeg  # noqa: E402
from deit_pipe.data.device import jpegblocks  # noqa: E402
from deit_pipe.data.device.kernels import affine  # noqa: E402
from deit_pipe.data.device.render import _kernels, defer, prepare, realize  # noqa: E402
from deit_pipe.data.plan.recipe import PRESETS  # noqa: E402
from deit_pipe.data.views.batch import ViewBatch  # noqa: E402
from deit_pipe.data.views.host import render, train_transform  # noqa: E402
from deit_pipe.data.views.params import ViewDrawer  # noqa: E402

HOST = "--render host, loader: open + draws + Pillow"
DEVICE = "--render device, loader: open + draws"
COLLATE = "--render device, loader: collate (JPEG crops to DCT blocks, taps; batch 128)"
WHOLE = " [whole decode]"
PIXELS = " [pixel crops]"
KERNELS_CPU = "--render device, its kernels alone on the CPU (no read-back, no fingerprints)"
KERNELS_CUDA = "--render device, its kernels alone on CUDA (batch 256)"
H200_IMG_S = 4600  # DeiT-S⚗ offline on one H200 (BENCHMARKS.md, 2026-11-28)
TITLE = "## The device renders: host ms per view with `--render device` (P7-host, P7-cpu)"


def _per_view(fn, n: int, rounds: int) -> float:
    """Median over rounds of ms per view of `fn()`, which handles n views."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000 / n)
    return float(np.median(times))


def _batch(prepared: dict, boxes: list) -> ViewBatch:
    n = prepared["count"]
    return ViewBatch(
        slot=torch.arange(n, dtype=torch.int64),
        seed=torch.arange(n, dtype=torch.int64),
        erase=torch.from_numpy(np.stack(boxes)),
        mix=torch.zeros(n, dtype=torch.int64),
        lam=torch.ones(n, 2, dtype=torch.float32),
        box=torch.zeros(n, 4, dtype=torch.int32),
        device_views=prepared,
    )


def _deferred(split, drawer, cfg) -> tuple[list, list]:
    deferred = [defer(split.open(i), i, drawer, cfg) for i in range(len(split))]
    return [v for v, _ in deferred], [b for _, b in deferred]


def _consumer_ms(views, boxes, device: torch.device | None, batch: int, rounds: int) -> dict:
    """ms per view at `batch` (views repeated to fill it) of `prepare` (the loader worker's
    collation: taps, padding) and of `realize` on a prepared batch (synchronised)."""
    views = (views * (batch // len(views) + 1))[:batch]
    boxes = (boxes * (batch // len(boxes) + 1))[:batch]
    prepared = prepare(views)
    if device is None:  # the collation alone
        return {"prepare": _per_view(lambda: prepare(views), batch, rounds)}

    def go():
        realize(_batch(dict(prepared), boxes), device)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def kernels():  # the Pillow stage alone: no read-back, no fingerprints
        for wave in prepared["waves"]:
            _kernels(wave, device)
        if device.type == "cuda":
            torch.cuda.synchronize()

    go()  # warm-up: kernels, allocator
    return {
        "prepare": _per_view(lambda: prepare(views), batch, rounds),
        "realize": _per_view(go, batch, rounds),
        "kernels": _per_view(kernels, batch, rounds),
    }


class _Ops(TorchDispatchMode):
    """Counts the ATen ops a block dispatches, and of them those that launch a kernel on
    CUDA (not views: ops whose result aliases an input without writing it)."""

    def __init__(self):
        super().__init__()
        self.count = self.launches = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        returns = func._schema.returns
        alias = returns[0].alias_info if returns else None
        view = (alias is not None and not alias.is_write) or func.__name__.startswith(
            "_unsafe_view"
        )
        self.launches += not view
        return func(*args, **(kwargs or {}))


def _ops_per_batch(views, batch: int) -> tuple[int, int]:
    """ATen ops `_kernels` dispatches for one batch of `batch` views, and the kernels among
    them, with CUDA's chunking (counted on the CPU: the same calls, the same Python)."""
    views = (views * (batch // len(views) + 1))[:batch]
    prepared = prepare(views)
    saved = dict(affine._CHUNK_PIXELS)
    affine._CHUNK_PIXELS["cpu"] = affine._CHUNK_PIXELS["cuda"]
    try:
        with _Ops() as ops:
            for wave in prepared["waves"]:
                _kernels(wave, torch.device("cpu"))
    finally:
        affine._CHUNK_PIXELS.update(saved)
    return ops.count, ops.launches


@contextmanager
def _env(name: str, cached) -> Iterator[None]:
    """`name`=0 for the block, with `cached`'s answer recomputed on entry and on exit."""
    os.environ[name] = "0"
    cached.cache_clear()
    try:
        yield
    finally:
        del os.environ[name]
        cached.cache_clear()


def _pixel_crops():
    """JPEG crops decoded to pixels in the loader (the region decoder, no DCT blocks)."""
    return _env("DEIT_PIPE_JPEG_DCT", jpegblocks.enabled)


def _whole_decodes():
    """JPEGs decoded whole by Pillow (the loader before region decoding), for comparison."""
    return _env("DEIT_PIPE_JPEG_REGION", jpeg._bound)


def run_bench(images: int = 64, rounds: int = 5) -> dict:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-p7d-"))
    try:
        make_jpegs(root, images)
        source = open_source(f"imagefolder:{root}")
        split = source.split("train")
        cfg = PRESETS["deit"].recipe(source, input_size=224, repeats=1).view
        timm = _timm_transform(cfg, True)
        drawer = ViewDrawer(train_transform(cfg))
        n = len(split)
        assert jpeg._bound() is not None, "the region decoder is not built (make setup)"

        def timm_loader():  # timm's ImageFolder: open, convert("RGB"), transform
            for i in range(n):
                timm(Image.open(split.root / split.paths[i]).convert("RGB"))

        def host():  # the training loader's `--render host` item: open, draws, Pillow
            for i in range(n):
                render(split.open(i), i, drawer, cfg)

        def device():  # its `--render device` item: open, draws (a JPEG crop: at collation)
            for i in range(n):
                defer(split.open(i), i, drawer, cfg)

        ms = {"timm prefetcher (decode + Pillow)": _per_view(timm_loader, n, rounds)}
        ms[HOST] = _per_view(host, n, rounds)
        ms[DEVICE] = _per_view(device, n, rounds)
        views, boxes = _deferred(split, drawer, cfg)
        cpu = _consumer_ms(views, boxes, torch.device("cpu"), 128, max(2, rounds // 2))
        ms[COLLATE] = cpu["prepare"]
        ops = _ops_per_batch(views, 256)
        with _pixel_crops():
            pixel = _consumer_ms(views, boxes, torch.device("cpu"), 128, max(2, rounds // 2))
            ms[COLLATE + PIXELS] = pixel["prepare"]
        with _whole_decodes():
            ms[HOST + WHOLE] = _per_view(host, n, rounds)
            ms[DEVICE + WHOLE] = _per_view(device, n, rounds)
            whole, _ = _deferred(split, drawer, cfg)
            ms[COLLATE + WHOLE] = _consumer_ms(whole, boxes, None, 128, max(2, rounds // 2))[
                "prepare"
            ]
        ms["--render device, realize on the CPU (batch 128)"] = cpu["realize"]
        ms["--render device, realize on the CPU (batch 128)" + PIXELS] = pixel["realize"]
        ms[KERNELS_CPU] = cpu["kernels"]
        device_name = None
        if torch.cuda.is_available():
            device_name = torch.cuda.get_device_name()
            cuda = _consumer_ms(views, boxes, torch.device("cuda"), 256, rounds)
            ms["--render device, realize on CUDA (batch 256)"] = cuda["realize"]
            ms[KERNELS_CUDA] = cuda["kernels"]
        return {
            "images": n,
            "rounds": rounds,
            "ms_per_view": ms,
            "cuda_device": device_name,
            "ops_per_batch_256": ops[0],
            "kernels_per_batch_256": ops[1],
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summary(r: dict) -> str:
    ms = r["ms_per_view"]
    timm = ms["timm prefetcher (decode + Pillow)"]
    worker = ms[DEVICE] + ms[COLLATE]
    pixels = ms[DEVICE] + ms[COLLATE + PIXELS]
    whole = ms[DEVICE + WHOLE] + ms[COLLATE + WHOLE]
    lines = [
        f"One thread, 224², {r['images']} generated JPEGs (as P7), DeiT recipe; medians of "
        f"{r['rounds']} rounds, one run. CUDA: {r['cuda_device'] or 'none here'}.",
        "",
        "| per view | ms | ÷ timm |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} | {v / timm:.2f} |" for k, v in ms.items()]
    lines += [
        "",
        "[pixel crops]: `DEIT_PIPE_JPEG_DCT=0`, the loader before DCT blocks: the collation "
        "decodes each JPEG crop's region to pixels on the host, into the batch. "
        "[whole decode]: `DEIT_PIPE_JPEG_REGION=0`, the loader before region decoding: the "
        "item decodes the whole image (and, for the device, copies the crop out), and the "
        "collation copies the crops into the batch.",
    ]
    cpu = ms["--render device, realize on the CPU (batch 128)"]
    lines += [
        "",
        f"**P7-host** (the loader's share: open, draws, the crop's decode, collation) = "
        f"{worker / timm:.2f} (target ≤ 0.30; {pixels / timm:.2f} with pixel crops, "
        f"{whole / timm:.2f} decoding whole images).",
        f"**P7-cpu** (loader + realize on the CPU) = {(worker + cpu) / timm:.2f}: on a CPU "
        f"the kernels lose to Pillow, so `--render auto` renders on the host there "
        f"(P7 = {ms[HOST] / timm:.2f}; {ms[HOST + WHOLE] / timm:.2f} decoding whole images).",
    ]
    lines += [
        "",
        f"Loader cores to feed DeiT-S⚗ at {H200_IMG_S:,} img/s (offline, measured on an H200, "
        "BENCHMARKS' GPU section), at this machine's per-core speed:",
        "",
        "| loader | ms a view | cores |",
        "|---|---|---|",
    ]
    for name, cost in (
        ("timm", timm),
        ("--render host", ms[HOST]),
        ("--render host [whole decode]", ms[HOST + WHOLE]),
        ("--render device (loader's share)", worker),
        ("--render device [pixel crops]", pixels),
        ("--render device [whole decode]", whole),
    ):
        lines.append(f"| {name} | {cost:.3f} | {H200_IMG_S * cost / 1000:.1f} |")
    lines += [
        "",
        f"The device stage of a batch of 256 dispatches {r['ops_per_batch_256']:,} ATen ops "
        f"with CUDA's chunking (counted on the CPU), of which {r['kernels_per_batch_256']:,} "
        "launch a kernel (the rest are views), and none of them waits for the device: "
        "no read-back, no blocking host copy (`tests/test_device_render.py`). The one copy "
        "back is the fingerprints', which training hashes after launching its backward pass.",
    ]
    cuda = ms.get("--render device, realize on CUDA (batch 256)")
    if cuda is not None:
        lines.append(
            f"On CUDA, realize costs {cuda:.3f} ms a view in the consuming process (target "
            f"≤ 0.05): the kernels {ms[KERNELS_CUDA]:.3f}, the rest the "
            "read-back and the fingerprints (xxh3 on the host)."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    result = run_bench(a.images, a.rounds)
    (Path(__file__).parent / "device_render.json").write_text(json.dumps(result, indent=2))
    text = summary(result)
    record_section("device-render", f"{TITLE}\n\n{text}")
    print(text)
