"""P7-host and P7-cpu: the host's share of a 224² training view when the device renders.

On the same generated ImageNet-sized JPEGs as `render_bench.py`, DeiT recipe, all in one
run: timm's prefetcher transform (decode + Pillow stage, one core: the reference); the host
work of `--render host` (decode + draws + Pillow + fingerprint); the loader worker's work of
`--render device` (decode + draws + crop, then the batch's collation: resize taps and
padding); and the consumer's `realize` of a prepared batch (the kernels, read-back,
fingerprints) per view, on the CPU at batch 128 and on CUDA at batch 256 when there is one
(the device named). P7-host = loader ÷ timm; P7-cpu = (loader + realize on the CPU) ÷ timm.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from render_bench import _timm_transform, make_jpegs  # noqa: E402
from report import record_section  # noqa: E402

from deit_pipe.data import open_source  # noqa: E402
from deit_pipe.data.device_render import defer, prepare, realize  # noqa: E402
from deit_pipe.data.recipe import PRESETS  # noqa: E402
from deit_pipe.data.viewparams import ViewDrawer  # noqa: E402
from deit_pipe.data.views import render, train_transform  # noqa: E402

TITLE = "## The device renders: host ms per view with `--render device` (P7-host, P7-cpu)"


def _per_view(fn, n: int, rounds: int) -> float:
    """Median over rounds of ms per view of `fn()`, which handles n views."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000 / n)
    return float(np.median(times))


def _batch(prepared: dict, boxes: list) -> dict:
    n = prepared["count"]
    return {
        "device_views": prepared,
        "erase": torch.from_numpy(np.stack(boxes)),
        "mix": torch.zeros(n, dtype=torch.int64),
        "lam": torch.ones(n, 2, dtype=torch.float32),
        "box": torch.zeros(n, 4, dtype=torch.int32),
        "seed": torch.arange(n, dtype=torch.int64),
    }


def _consumer_ms(views, boxes, device: torch.device, batch: int, rounds: int) -> dict:
    """ms per view at `batch` (views repeated to fill it) of `prepare` (the loader worker's
    collation: taps, padding) and of `realize` on a prepared batch (synchronised)."""
    views = (views * (batch // len(views) + 1))[:batch]
    boxes = (boxes * (batch // len(boxes) + 1))[:batch]
    prepared = prepare(views)

    def go():
        realize(_batch(dict(prepared), boxes), device)
        if device.type == "cuda":
            torch.cuda.synchronize()

    go()  # warm-up: kernels, allocator
    return {
        "prepare": _per_view(lambda: prepare(views), batch, rounds),
        "realize": _per_view(go, batch, rounds),
    }


def run_bench(images: int = 64, rounds: int = 5) -> dict:
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-p7d-"))
    try:
        paths = make_jpegs(root, images)
        source = open_source(f"imagefolder:{root}")
        cfg = PRESETS["deit"].recipe(source, input_size=224, repeats=1).view
        timm = _timm_transform(cfg, True)
        drawer = ViewDrawer(train_transform(cfg))
        n = len(paths)

        def decode(p):
            return Image.open(p).convert("RGB")

        ms = {
            "timm prefetcher (decode + Pillow)": _per_view(
                lambda: [timm(decode(p)) for p in paths], n, rounds
            ),
            "--render host: decode + draws + Pillow": _per_view(
                lambda: [render(decode(p), i, drawer, cfg) for i, p in enumerate(paths)],
                n,
                rounds,
            ),
            "--render device, loader: decode + draws + crop": _per_view(
                lambda: [defer(decode(p), i, drawer, cfg) for i, p in enumerate(paths)],
                n,
                rounds,
            ),
        }
        deferred = [defer(decode(p), i, drawer, cfg) for i, p in enumerate(paths)]
        views, boxes = [v for v, _ in deferred], [b for _, b in deferred]
        cpu = _consumer_ms(views, boxes, torch.device("cpu"), 128, max(2, rounds // 2))
        ms["--render device, loader: collate (taps, padding; batch 128)"] = cpu["prepare"]
        ms["--render device, realize on the CPU (batch 128)"] = cpu["realize"]
        device = None
        if torch.cuda.is_available():
            device = torch.cuda.get_device_name()
            cuda = _consumer_ms(views, boxes, torch.device("cuda"), 256, rounds)
            ms["--render device, realize on CUDA (batch 256)"] = cuda["realize"]
        return {"images": n, "rounds": rounds, "ms_per_view": ms, "cuda_device": device}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def summary(r: dict) -> str:
    ms = r["ms_per_view"]
    timm = ms["timm prefetcher (decode + Pillow)"]
    worker = ms["--render device, loader: decode + draws + crop"]
    worker += ms["--render device, loader: collate (taps, padding; batch 128)"]
    lines = [
        f"One thread, 224², {r['images']} generated JPEGs (as P7), DeiT recipe; medians of "
        f"{r['rounds']} rounds, one run. CUDA: {r['cuda_device'] or 'none here'}.",
        "",
        "| per view | ms | ÷ timm |",
        "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} | {v / timm:.2f} |" for k, v in ms.items()]
    cpu = ms["--render device, realize on the CPU (batch 128)"]
    lines += [
        "",
        f"**P7-host** (the loader's share: decode, draws, crop, collation) = "
        f"{worker / timm:.2f} (target ≤ 0.30; decode alone is most of it).",
        f"**P7-cpu** (loader + realize on the CPU) = {(worker + cpu) / timm:.2f}: on a CPU "
        f"the kernels lose to Pillow, so `--render auto` renders on the host there "
        f"(P7 = {ms['--render host: decode + draws + Pillow'] / timm:.2f}).",
    ]
    cuda = ms.get("--render device, realize on CUDA (batch 256)")
    if cuda is not None:
        lines.append(
            f"On CUDA, realize costs {cuda:.3f} ms a view in the consuming process (the kernels "
            "and the read-back for fingerprints; target ≤ 0.05)."
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
