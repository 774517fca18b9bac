"""`precompute --dry-run`: what a job will cost before it starts — views, store bytes, time.

Bytes per view come from the store benchmark (`benchmarks/store_bench.py`, ImageNet-like
logits at C = 1000, byte-shuffled zstd): per stored value, index and logsumexp, plus the
8-byte fingerprint. The teacher's throughput is measured on a few random batches on this
machine's device unless given; the render cost on a few of the job's own training views, on
one thread, as one loader worker renders them: the two give the loader workers a device
needs to keep its teacher busy.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from deit_pipe.data import Source, collate_views, stored_views
from deit_pipe.errors import check
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job, job_source, task_device
from deit_pipe.storage.io import EMPTY_STORE
from deit_pipe.storage.overwrite import probe, refuse_unusable
from deit_pipe.teacher import build_teacher, teacher_logits

# Measured bytes per stored element (benchmarks/store_bench.py; BENCHMARKS.md, P4).
BYTES_PER = {"float16": 1.21, "float32": 2.9, "index": 1.3, "top1": 1.3, "lse": 2.9}
FINGERPRINT_BYTES = 8.0


@dataclass(frozen=True)
class Cost:
    views: dict[str, int]  # per split, over all its epochs
    bytes_per_view: float
    views_per_second: float
    measured: bool  # throughput measured here (else given)
    device: str
    render_views_per_second: float  # one loader worker (one thread), measured here
    memory: dict[str, int] | None = None  # bytes a device holds: `job_memory`

    @property
    def loader_workers(self) -> int:
        """Render workers per device for the teacher never to wait on views."""
        return max(1, math.ceil(self.views_per_second / self.render_views_per_second))

    @property
    def total_views(self) -> int:
        return sum(self.views.values())

    @property
    def store_bytes(self) -> float:
        return self.total_views * self.bytes_per_view

    @property
    def seconds(self) -> float:
        return self.total_views / self.views_per_second


def bytes_per_view(targets: str, k: int, temperatures: int, value_dtype: str) -> float:
    if targets == "hard":
        return BYTES_PER["top1"] + FINGERPRINT_BYTES
    stored = k * (BYTES_PER[value_dtype] + BYTES_PER["index"]) + temperatures * BYTES_PER["lse"]
    return stored + FINGERPRINT_BYTES


def teacher_throughput(job: Job, num_classes: int, input_size: int, batches: int = 3) -> float:
    """Views/s of the bare teacher forward on random inputs (after one warm-up batch)."""
    model, _ = build_teacher(job.teacher, num_classes)
    device = task_device(job)
    model = model.to(device, memory_format=torch.channels_last)
    images = torch.randn(job.batch_size, 3, input_size, input_size)
    teacher_logits(model, images, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(batches):
        teacher_logits(model, images, device).cpu()
    return batches * job.batch_size / (time.perf_counter() - start)


def job_memory(job: Job, num_classes: int, input_size: int) -> dict[str, int] | None:
    """Bytes a teacher device holds at once: the teacher's weights, a batch's views (uint8 as
    rendered, float32 finished) and its activations — twice the largest layer output, what
    an inference forward keeps alive — from a forward on the meta device (no memory, no
    weights loaded). None where timm cannot build the model there."""
    import timm

    outputs: list[int] = []
    try:
        with torch.device("meta"):
            model = timm.create_model(
                job.teacher.name, num_classes=num_classes, **dict(job.teacher.model_kwargs)
            )
            hooks = [
                m.register_forward_hook(lambda m, i, o: outputs.append(o.numel()))
                for m in model.modules()
                if not list(m.children())
            ]
            with torch.no_grad():
                model.eval()(torch.empty(1, 3, input_size, input_size))
    except Exception:  # a model timm builds only on a real device: no estimate
        return None
    for hook in hooks:
        hook.remove()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    views = job.batch_size * 3 * input_size * input_size * (1 + 4)
    activations = 2 * max(outputs, default=0) * 4 * job.batch_size
    return {"weights": weights, "views": views, "activations": activations}


def render_throughput(job: Job, source: Source, pairs: int = 8) -> float:
    """Views/s one loader worker renders of this job's training views (after a warm-up)."""
    views = stored_views(source, job.recipe, "train", 0)
    pairs = min(pairs, len(views))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        collate_views([views[0]])
        start = time.perf_counter()
        batch = collate_views([views[p] for p in range(pairs)])
        return len(batch) / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)


def estimate(job: Job, request: StoreRequest, *, throughput: float | None = None) -> Cost:
    """Views, store size and teacher time of a job, writing nothing."""
    from deit_pipe.pipeline.precompute import check_job

    check_job(job, request)  # before the measurement allocates a batch
    check(bool(job.url.url.strip()), EMPTY_STORE)  # the real run refuses it when it opens the store
    r = request.resolved()
    source = job_source(job)
    # the store's spec refuses this when it is made; a dry run makes none, and would price it
    check(
        r.k <= source.num_classes,
        f"--top-k {r.k} exceeds the dataset's {source.num_classes} classes",
    )
    # the real run refuses a user's file or folder at --out when it opens it
    refuse_unusable(job.url, probe(job.url))
    epochs = r.epochs - r.first_epoch
    views = {s: len(source.split(s)) * (epochs if s == "train" else 1) for s in r.splits}
    size = job.recipe.view.input_size
    measured = throughput is None
    if measured:
        throughput = teacher_throughput(job, source.num_classes, size)
    return Cost(
        views=views,
        bytes_per_view=bytes_per_view(r.targets, r.k, len(r.temperatures), r.value_dtype),
        views_per_second=float(throughput),
        measured=measured,
        device=str(task_device(job)),
        render_views_per_second=render_throughput(job, source),
        memory=job_memory(job, source.num_classes, size),
    )
