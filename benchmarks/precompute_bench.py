"""P3 precompute ÷ raw teacher forward, and P6 dask 2 workers × 1 thread ÷ 1 worker × 2 threads.

The raw forward runs the same teacher on pre-rendered tensors; precompute renders, runs the
teacher, computes top-k/logsumexp and writes the store. Dask clusters are started and warmed
(teacher loaded on every worker) before the clock starts. Prints one JSON object.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from deit_pipe.data import PairDataset, ViewConfig, collate_views, finish, open_source
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.pipeline.precompute import pending, prepare_store, run
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job
from deit_pipe.teacher import TeacherConfig, build_teacher, teacher_logits


def make_job(url: str, data: str, teacher: str, size: int, batch: int, threads: int) -> Job:
    recipe = Recipe(view=ViewConfig.for_source(open_source(data), input_size=size))
    return Job(
        url=url,
        data=data,
        recipe=recipe,
        batch_size=batch,
        threads=threads,
        teacher=TeacherConfig(teacher, random_init=True),
    )


def raw_forward(job: Job, batches: int = 4) -> float:
    torch.set_num_threads(job.threads)
    recipe = job.recipe
    source = open_source(job.data)
    split = source.split("train")
    dataset = PairDataset(split, recipe.epoch_plan(0, split), recipe.view)
    images = finish(
        collate_views([dataset[p] for p in range(job.batch_size // 2)]),
        recipe.view,
        torch.device("cpu"),
    )
    model, _ = build_teacher(job.teacher, source.num_classes)
    teacher_logits(model, images, torch.device("cpu"))  # warm-up
    start = time.perf_counter()
    for _ in range(batches):
        teacher_logits(model, images, torch.device("cpu"))
    return batches * len(images) / (time.perf_counter() - start)


def timed_precompute(job: Job, shard_views: int, **run_kw) -> float:
    writer = prepare_store(
        job, StoreRequest(epochs=1, splits=("train",), shard_views=shard_views), overwrite=True
    )
    summary = run(job, pending(writer), **run_kw)
    return summary.views / summary.seconds


def dask_rate(job: Job, shard_views: int, workers: int, threads: int, root: Path) -> float:
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        address = cluster.scheduler_address
        warm = replace(job, url=str(root / f"warm{workers}.zarr"), threads=threads)
        timed_precompute(warm, shard_views, scheduler=address)
        client.run(lambda: None)
        timed = replace(job, url=str(root / f"dask{workers}.zarr"), threads=threads)
        return timed_precompute(timed, shard_views, scheduler=address)


def run_bench(
    teacher: str = "regnety_032", size: int = 224, views: int = 192, batch: int = 32
) -> dict:
    root = Path(tempfile.mkdtemp(prefix="deit-pipe-precompute-bench-"))
    try:
        data = f"fake:{views}:256"
        job = make_job(str(root / "p3.zarr"), data, teacher, size, batch, threads=2)
        raw = raw_forward(job)
        precompute_rate = timed_precompute(job, shard_views=batch * 2, workers=0)
        p6_job = make_job("", f"fake:{views}:256", "regnety_008", size, batch, threads=1)
        two = dask_rate(p6_job, batch * 2, workers=2, threads=1, root=root)
        one = dask_rate(p6_job, batch * 2, workers=1, threads=2, root=root)
        return {
            "teacher": teacher,
            "input_size": size,
            "views": views,
            "batch": batch,
            "raw_forward_img_per_s": raw,
            "precompute_views_per_s": precompute_rate,
            "p3_ratio": precompute_rate / raw,
            "p6_teacher": "regnety_008",
            "dask_2x1_views_per_s": two,
            "dask_1x2_views_per_s": one,
            "p6_ratio": two / one,
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    args = sys.argv[1:]
    print(json.dumps(run_bench(*(args[:1])), indent=2))
