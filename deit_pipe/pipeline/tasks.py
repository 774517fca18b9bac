"""One precompute task = one (split, epoch, shard): render its views, run the teacher, write it.

Tasks are idempotent (same views, same logits, same bytes) and keep their expensive state
(dataset, teacher, render processes) in a per-process cache, so a dask worker loads the
teacher and starts its renderers once, not once per task.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from deit_pipe.data import Source, finish, open_checked
from deit_pipe.data.device.render import device_pixels, render_mode
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.data.sources.cache import DataCache
from deit_pipe.pipeline.render import RenderPool, shard_batches
from deit_pipe.place import Place
from deit_pipe.storage import StoreWriter
from deit_pipe.teacher import TeacherConfig, build_teacher, teacher_logits

_CACHE: dict[tuple, object] = {}


@dataclass(frozen=True)
class Job:
    """Everything a task needs; small and picklable. `url`: the store (a `Place`, or a path
    or URL without options); `data_options`: fsspec options for a dataset behind a URL."""

    url: Place
    data: str
    recipe: Recipe
    teacher: TeacherConfig
    skip_bad: bool = False
    batch_size: int = 256
    loader_workers: int = 0
    threads: int = 1
    device: str = "auto"  # auto | cpu | cuda
    render: str = "auto"  # who renders the training views: host | device (same bytes)
    compile: bool = False  # torch.compile the teacher
    data_options: dict | None = field(default=None, hash=False)
    data_cache: DataCache | None = field(default=None, hash=False, compare=False)
    teacher_name: str | None = None  # its name in the store [default: the model's]

    def __post_init__(self) -> None:
        object.__setattr__(self, "url", Place.of(self.url))

    @property
    def store_teacher(self) -> str:
        return self.teacher_name or self.teacher.name


@dataclass(frozen=True)
class TaskResult:
    split: str
    epoch: int
    shard: int
    views: int
    seconds: float
    forward_seconds: float
    device: str
    kernel_views: int = 0  # views whose Pillow stage the kernels ran on `device` (--render)


def _cached(key: tuple, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def render_pool(job: Job) -> RenderPool:
    """This process's render processes for the job's dataset (made once, then reused)."""
    key = ("render-pool", job.data, job.skip_bad, job.loader_workers)
    opened = {"data_options": job.data_options, "data_cache": job.data_cache}
    return _cached(key, lambda: RenderPool(job.data, job.skip_bad, job.loader_workers, **opened))


def job_source(job: Job) -> Source:
    """The job's dataset (a URL root opens with the job's storage options, as its store)."""
    return open_checked(
        job.data,
        skip_bad=job.skip_bad,
        data_options=job.data_options,
        data_cache=job.data_cache,
    )


def task_device(job: Job) -> torch.device:
    """One GPU per dask worker (by worker index), or the CPU."""
    if job.device == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    index = 0
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) if str(name).isdigit() else 0
    except (ImportError, ValueError):
        pass
    return torch.device("cuda", index % torch.cuda.device_count())


def _teacher(job: Job, num_classes: int, device: torch.device) -> torch.nn.Module:
    def make():
        model, _ = build_teacher(job.teacher, num_classes)
        model = model.to(device, memory_format=torch.channels_last)
        return torch.compile(model) if job.compile else model

    ckpt = job.teacher.checkpoint
    stamp = (
        (os.stat(ckpt).st_mtime_ns, os.stat(ckpt).st_size)
        if ckpt and os.path.exists(ckpt)
        else None
    )
    return _cached(("teacher", job.teacher, job.compile, stamp, num_classes, str(device)), make)


def run_task(job: Job, split: str, epoch: int, shard: int) -> TaskResult:
    """Render shard `shard` of `split`/`epoch`, run the teacher, write the shard, mark it done."""
    start = time.perf_counter()
    if torch.get_num_threads() != job.threads:
        torch.set_num_threads(job.threads)
    # Cheap to open, and a cached writer could hold metadata another job has since grown.
    writer = StoreWriter(job.url, teacher=job.store_teacher)
    source = _cached(("source", job.data, job.skip_bad), lambda: job_source(job))
    rows = writer.shard_range(split, shard)
    device = task_device(job)
    model = _teacher(job, writer.spec.num_classes, device)
    pool = render_pool(job) if job.loader_workers else None
    render = render_mode(job.render, device)
    batches = shard_batches(source, job.recipe, split, epoch, rows, job.batch_size, pool, render)
    values, indices, lse, fps, slots = [], [], [], [], []
    forward, kernel_views = 0.0, 0
    k, temps = writer.spec.k, writer.spec.temperatures
    for batch in batches:
        t0 = time.perf_counter()
        if device.type == "cuda" and batch.image is not None:  # uint8: a quarter of float32's
            batch.image = batch.image.pin_memory()  # host→device traffic
        batch = device_pixels(batch, device)  # the kernels on the teacher's device, or not
        kernel_views += len(batch) - batch.host_rendered
        logits = teacher_logits(model, finish(batch, job.recipe.view, device), device)
        top = logits.topk(k, dim=1, sorted=True)
        values.append(top.values.cpu().numpy())
        indices.append(top.indices.cpu().numpy())
        if temps:
            lse.append(
                torch.stack([torch.logsumexp(logits / t, 1) for t in temps], 1).cpu().numpy()
            )
        forward += time.perf_counter() - t0
        fps.append(batch.fingerprint.numpy().view(np.uint64))
        slots.append(batch.slot.numpy())
    if not np.array_equal(np.concatenate(slots), np.arange(rows.start, rows.stop)):
        raise RuntimeError(f"{split} epoch {epoch} shard {shard}: rendered slots out of order")
    soft = writer.spec.targets == "soft"
    writer.write_shard(
        split,
        epoch,
        shard,
        np.concatenate(values) if soft else None,
        np.concatenate(indices),
        np.concatenate(lse) if soft else None,
        np.concatenate(fps),
    )
    seconds = time.perf_counter() - start
    return TaskResult(split, epoch, shard, len(rows), seconds, forward, str(device), kernel_views)
