"""P4 bytes/view on disk and P5 epoch-slice read rate of the target store (plus random gathers).

ImageNet-like teacher logits: C = 1000, k = 10, τ ∈ {1, 3}, float16 values, one 65,536-view
shard per task; then the store size of a hard-target store at the same scale and of
small-dataset stores (digits- and CIFAR-10-sized epochs) with default options. Prints one
JSON object.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deit_pipe.data import mismatches
from deit_pipe.data.plan.recipe import PLAN_VERSION
from deit_pipe.storage import StoreSpec, TargetStore, create_store
from deit_pipe.student.targets import stored_batch


def teacher_like_logits(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    """A confident convnet: one class well above a broad background."""
    z = rng.normal(0.0, 1.5, (n, classes)).astype(np.float32)
    z[np.arange(n), rng.integers(0, classes, n)] += rng.uniform(4, 14, n).astype(np.float32)
    return z


def payload(rng, n, classes, k, temperatures):
    z = teacher_like_logits(rng, n, classes)
    part = np.argpartition(-z, k - 1, axis=1)[:, :k]  # the k largest, any order
    order = np.argsort(-np.take_along_axis(z, part, 1), axis=1)
    idx = np.take_along_axis(part, order, 1)
    values = np.take_along_axis(z, idx, 1)
    zd = z.astype(np.float64)
    lse = np.stack([np.logaddexp.reduce(zd / t, axis=1) for t in temperatures], 1)
    fps = rng.integers(0, 2**64, n, np.uint64, endpoint=False)
    return values, idx, lse, fps


def spec_for(views: int, classes: int, epochs: int, **options) -> StoreSpec:
    return StoreSpec(
        dataset={
            "spec": f"fake:{views}",
            "fingerprint": "0" * 32,
            "classes": [str(c) for c in range(classes)],
            "num_samples": {"train": views},
        },
        teacher={"name": "synthetic"},
        recipe={"plan_version": PLAN_VERSION, "seed": 0},
        epochs=epochs,
        splits=("train",),
        **options,
    )


def bytes_per_view(views: int, classes: int, epochs: int = 2, **options) -> float:
    """Bytes/view of the train arrays of a filled store (`options`: StoreSpec fields)."""
    spec = spec_for(views, classes, epochs, **options)
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-store-size-"))
    try:
        writer = create_store(str(root / "s.zarr"), spec)
        rng = np.random.default_rng(0)
        temperatures = spec.temperatures or (1.0,)
        for epoch in range(epochs):
            for shard in range(spec.num_shards("train")):
                rows = writer.shard_range("train", shard)
                values, idx, lse, fps = payload(rng, len(rows), classes, spec.k, temperatures)
                if spec.targets == "hard":
                    values = lse = None
                writer.write_shard("train", epoch, shard, values, idx, lse, fps)
        files = (root / "s.zarr" / "train").rglob("*")
        return sum(p.stat().st_size for p in files if p.is_file()) / (epochs * views)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def sizes() -> dict:
    """Store bytes/view beyond P4: hard targets at ImageNet scale; small datasets."""
    return {
        "hard_imagenet": bytes_per_view(
            262_144, 1000, epochs=1, targets="hard", k=1, temperatures=()
        ),
        "digits_default": bytes_per_view(1437, 10, k=10),
        "digits_4096_chunks": bytes_per_view(1437, 10, k=10, shard_views=65536),
        "cifar10_default": bytes_per_view(50_000, 10, k=10),
        "cifar10_4096_chunks": bytes_per_view(50_000, 10, k=10, shard_views=65536),
    }


def run(
    shards: int = 4, shard_views: int = 65536, classes: int = 1000, k: int = 10, repeats: int = 3
) -> dict:
    temperatures = (1.0, 3.0)
    views = shards * shard_views
    spec = spec_for(views, classes, 1, k=k, temperatures=temperatures, shard_views=shard_views)
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-store-bench-"))
    try:
        url = str(root / "bench.zarr")
        writer = create_store(url, spec)
        rng = np.random.default_rng(0)
        write_s = 0.0
        for s in range(shards):
            data = payload(rng, shard_views, classes, k, temperatures)
            t0 = time.perf_counter()
            writer.write_shard("train", 0, s, *data)
            write_s += time.perf_counter() - t0
        per_array = {
            d.name: sum(p.stat().st_size for p in d.rglob("*") if p.is_file()) / views
            for d in (root / "bench.zarr" / "train").iterdir()
        }
        array_bytes = sum(per_array.values()) * views
        store = TargetStore(url)
        reads = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            store.read_epoch(0)
            reads.append(time.perf_counter() - t0)
        arr = store.group["train"]["topk_values"]
        rows = np.sort(np.random.default_rng(1).choice(views, 4096, replace=False))
        t0 = time.perf_counter()
        arr.get_orthogonal_selection((0, rows, slice(None)))
        gather_s = time.perf_counter() - t0
        epoch = store.read_epoch(0)
        cpu = torch.device("cpu")
        t0 = time.perf_counter()
        for start in range(0, views, 1024):  # what a training step reads: check, then targets
            slots = np.arange(start, start + 1024)
            mismatches(epoch.fingerprint, slots, epoch.fingerprint[slots].view(np.int64))
            stored_batch(epoch, slots, 3.0, True, cpu)
        targets_s = time.perf_counter() - t0
        read_s = float(np.median(reads))
        return {
            "views": views,
            "classes": classes,
            "k": k,
            "temperatures": list(temperatures),
            "bytes_per_view": array_bytes / views,
            "bytes_per_view_by_array": per_array,
            "epoch_read_views_per_s": views / read_s,
            "random_gather_views_per_s": len(rows) / gather_s,
            "dense_targets_views_per_s": views / targets_s,
            "write_views_per_s": views / write_s,
            "sizes": sizes(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    shards = int(sys.argv[1]) if len(sys.argv) > 1 else 4
    print(json.dumps(run(shards), indent=2))
