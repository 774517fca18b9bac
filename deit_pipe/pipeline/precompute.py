"""Stage one: fill a target store with the teacher's outputs on every planned view, on dask.

`precompute()` prepares (or reopens, to resume) the store, lists the shards not yet done and
runs one task per shard: in this process (`workers=0`), on a LocalCluster of worker processes
(one per visible GPU, or `workers` CPU processes) or on an existing cluster (`scheduler`).
Worker deaths are survived: dask reruns a lost task elsewhere, and a task is idempotent.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from deit_pipe.data import Source
from deit_pipe.data.plan.order import sorted_blocks_warning
from deit_pipe.data.sources.identity import dataset_record
from deit_pipe.device import resolve_device
from deit_pipe.errors import DeitPipeError, check
from deit_pipe.limits import (
    MAX_BATCH,
    MAX_EPOCHS,
    MAX_SHARD_VIEWS,
    MAX_WORKERS,
    check_at_most,
    check_batch_fits,
)
from deit_pipe.pipeline.request import StoreRequest
from deit_pipe.pipeline.tasks import Job, TaskResult, job_source, run_task
from deit_pipe.pipeline.verify import damaged_shards
from deit_pipe.storage import StoreSpec, StoreWriter, create_store, write_manifest
from deit_pipe.storage.claims import Claim, take_claim
from deit_pipe.storage.format import teacher_name_problem
from deit_pipe.storage.io import file_sizes
from deit_pipe.storage.lock import WriterLock
from deit_pipe.storage.overwrite import PREPARING, probe, refuse_unusable, store_lock
from deit_pipe.teacher import build_teacher, check_normalization

log = logging.getLogger(__name__)
Task = tuple[str, int, int]  # (split, epoch, shard)


@dataclass(frozen=True)
class Summary:
    tasks: int
    views: int
    seconds: float
    bytes_on_disk: int
    kernel_views: int = 0  # views the kernels rendered (--render device); Pillow the rest

    @property
    def views_per_second(self) -> float:
        return self.views / self.seconds if self.seconds else 0.0


def check_job(job: Job, request: StoreRequest) -> None:
    """Every number of the job in range, before a teacher, a batch or a store is made (the
    dry run's measurement allocates a batch too)."""
    check(job.batch_size >= 1, f"--batch-size must be at least 1, got {job.batch_size}")
    check_at_most(job.batch_size, MAX_BATCH, "--batch-size")
    check(job.loader_workers >= 0, f"--loader-workers must be ≥ 0, got {job.loader_workers}")
    check_at_most(job.loader_workers, MAX_WORKERS, "--loader-workers")
    check(job.threads >= 1, f"--threads-per-worker must be at least 1, got {job.threads}")
    check_at_most(job.threads, MAX_WORKERS, "--threads-per-worker")
    check(
        0 <= request.first_epoch < request.epochs,
        f"--epochs-range {request.first_epoch}:{request.epochs} is empty: its start must be "
        "below its end",
    )
    check_at_most(request.epochs, MAX_EPOCHS, "--epochs")
    check_at_most(request.shard_views, MAX_SHARD_VIEWS, "--shard-views")
    check_batch_fits(job.batch_size, job.recipe.view.input_size)


def store_spec(job: Job, request: StoreRequest) -> tuple[StoreSpec, Source]:
    """Check dataset, teacher, plan and store options agree, writing nothing; the spec of the
    store they make, and the opened dataset."""
    check_job(job, request)
    source = job_source(job)
    recipe = job.recipe
    problem = teacher_name_problem(job.store_teacher)
    check(problem is None, str(problem))
    _, teacher = build_teacher(job.teacher, source.num_classes)
    check_normalization(teacher, recipe.view.mean, recipe.view.std)
    if job.store_teacher != teacher["name"]:
        teacher = {**teacher, "label": job.store_teacher}
    warning = sorted_blocks_warning(recipe.order, source.split("train"))
    if warning:
        log.warning("%s: %s", source.data, warning)
    r = request.resolved()
    spec = StoreSpec(
        dataset=dataset_record(source, r.splits, recipe.order),
        teacher=teacher,
        recipe=job.recipe.to_dict(),
        epochs=r.epochs,
        splits=r.splits,
        k=r.k,
        temperatures=tuple(float(t) for t in r.temperatures),
        value_dtype=r.value_dtype,
        shard_views=r.shard_views,
        targets=r.targets,
    )
    return spec, source


def prepare_store(job: Job, request: StoreRequest, *, overwrite: bool = False) -> StoreWriter:
    """`store_spec`, then create the store (or reopen the same job) and write its manifest,
    under the store's lock."""
    spec, source = store_spec(job, request)
    return _prepare_locked(job, spec, source, overwrite=overwrite)[0]


def _prepare_locked(
    job: Job,
    spec: StoreSpec,
    source: Source,
    *,
    overwrite: bool = False,
    claim: Claim | None = None,
    repair: bool = False,
) -> tuple[StoreWriter, WriterLock | None]:
    """Under the store's lock: take `claim` (the caller releases it), create the store (or
    reopen the same job), write its manifest and, with `repair`, mark its damaged shards
    undone. The lock is free again on return: jobs on other epochs may start beside this one."""
    claimed = None
    with store_lock(job.url, f"precompute {PREPARING}"):
        if claim is not None:
            claimed = take_claim(job.url, claim, f"precompute of {claim}")
        try:
            writer = create_store(job.url, spec, overwrite=overwrite)
            write_manifest(writer, source)
            if repair:
                damaged, rebuilt = damaged_shards(job.url, job.store_teacher)
                for split, epoch, shard in damaged:
                    log.warning("recomputing %s epoch %d shard %d (damaged)", split, epoch, shard)
                    writer.mark_undone(split, epoch, shard)
                for split, epoch, shard in rebuilt:
                    log.warning(
                        "%s epoch %d shard %d: its damaged done flag is rebuilt (its chunks "
                        "match their checksums)",
                        split,
                        epoch,
                        shard,
                    )
                    writer.mark_done(split, epoch, shard)
        except BaseException:
            if claimed is not None:
                claimed.release()
            raise
    return writer, claimed


def pending(writer: StoreWriter, request: StoreRequest | None = None) -> list[Task]:
    """Shards not marked done (of the splits and training epochs `request` asks for, when
    given): val first, then epoch-major, so a student following the store (`train
    --follow`) gets whole epochs as early as possible."""
    done = writer.progress().done
    tasks = [
        (s, int(e), int(sh))
        for s in writer.spec.splits
        for e, sh in zip(*(~done[s]).nonzero(), strict=True)
    ]
    if request is not None:
        tasks = [
            t for t in tasks
            if t[0] in request.splits
            and (t[0] == "val" or request.first_epoch <= t[1] < request.epochs)
        ]  # fmt: skip
    return sorted(tasks, key=lambda t: (_order(t[0], t[1]), t[2]))


def epoch_window(workers: int, shards_per_epoch: int) -> int:
    """How many epochs ahead of the oldest unfinished one tasks may be in flight.

    Enough epochs to keep every worker busy twice over, at least 2: a slow shard of epoch e
    then holds the others at most W − 1 epochs ahead, instead of letting them race to the
    end while a follower waits for e.
    """
    return max(2, -(-2 * workers // max(shards_per_epoch, 1)))


def run(
    job: Job,
    tasks: list[Task],
    *,
    workers: int | None = None,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    retries: int = 2,
    progress: Callable[[TaskResult], None] | None = None,
    task_fn: Callable[..., TaskResult] = run_task,
) -> Summary:
    """Run `tasks`; `workers=0` runs them here, otherwise on dask.distributed."""
    start = time.perf_counter()
    views = kernel_views = 0
    if workers == 0 and scheduler is None:
        threads = torch.get_num_threads()  # tasks set the job's thread count; give it back
        try:
            for task in tasks:
                result = task_fn(job, *task)
                views += result.views
                kernel_views += result.kernel_views
                if progress:
                    progress(result)
        finally:
            torch.set_num_threads(threads)
    else:
        for result in _run_dask(
            job, tasks, workers, threads_per_worker, scheduler, retries, task_fn
        ):
            views += result.views
            kernel_views += result.kernel_views
            if progress:
                progress(result)
    seconds = time.perf_counter() - start
    sizes = file_sizes(job.url.fs, job.url.base)
    return Summary(len(tasks), views, seconds, sum(sizes.values()), kernel_views)


def _run_dask(job, tasks, workers, threads_per_worker, scheduler, retries, task_fn):
    import dask
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler is None:
        gpus = torch.cuda.device_count() if job.device != "cpu" else 0
        # DataLoader workers are child processes: dask's daemonic workers may not have any.
        # dask's default worker environment also sets MALLOC_TRIM_THRESHOLD_, which pins
        # glibc's mmap threshold: every tensor over 128 KiB is then mapped and unmapped per op
        # (measured: twice the kernel time, 10% slower precompute on digits, BENCHMARKS.md).
        worker_env = {k: threads_per_worker for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        settings = {
            "distributed.worker.daemon": job.loader_workers == 0,
            "distributed.nanny.pre-spawn-environ": worker_env,
        }
        with dask.config.set(settings):
            cluster = LocalCluster(
                n_workers=workers or gpus or 1,
                threads_per_worker=threads_per_worker,
                processes=True,
                resources={"GPU": 1} if gpus else None,
                dashboard_address=None,
                silence_logs=logging.CRITICAL,  # a failed task reaches the user once: its error
            )
        resources = {"GPU": 1} if gpus else None
    try:
        client = Client(cluster if cluster is not None else scheduler)
    except OSError as exc:
        raise DeitPipeError(f"cannot reach the dask scheduler at {scheduler}: {exc}") from None
    try:
        if scheduler is not None:
            resources = _cluster_resources(client, scheduler, job.device)
        yield from _windowed(client, job, tasks, resources, retries, task_fn, as_completed)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _order(split: str, epoch: int) -> int:
    """A task's place in the epoch order: val counts as epoch −1, so it runs first."""
    return -1 if split == "val" else epoch


def _settled(task_fn, job: Job, *task) -> TaskResult | DeitPipeError:
    """Run a task on a dask worker, returning (not raising) a DeitPipeError: such an error
    (a full disk, an unreadable image) is deterministic, so dask's retries would only repeat
    it; the client raises it, once. Other exceptions are retried."""
    try:
        return task_fn(job, *task)
    except DeitPipeError as exc:
        return exc


def _windowed(client, job, tasks, resources, retries, task_fn, as_completed):
    """Submit `tasks` in order, keeping in flight only epochs below the oldest unfinished
    epoch + `epoch_window`."""
    queue = list(tasks)
    unfinished: dict[int, int] = {}
    for split, epoch, _ in queue:
        unfinished[_order(split, epoch)] = unfinished.get(_order(split, epoch), 0) + 1
    per_epoch = max(unfinished.values(), default=1)

    def submit(task):
        key = f"deit-pipe-{task[0]}-{task[1]}-{task[2]}"
        return client.submit(
            _settled, task_fn, job, *task, key=key, pure=False, retries=retries,
            resources=resources,
        )  # fmt: skip

    def admit(done_pool) -> None:
        window = epoch_window(len(client.scheduler_info()["workers"]) or 1, per_epoch)
        oldest = min(unfinished, default=0)
        while queue and _order(*queue[0][:2]) < oldest + window:
            done_pool.add(submit(queue.pop(0)))

    pool = as_completed([])
    admit(pool)
    try:
        for future in pool:
            result = future.result()
            if isinstance(result, DeitPipeError):
                raise result
            key = _order(result.split, result.epoch)
            unfinished[key] -= 1
            if not unfinished[key]:
                del unfinished[key]
            admit(pool)
            yield result
    except BaseException:
        client.cancel(list(pool.futures))
        raise


def visible_gpus() -> int:
    """CUDA devices this process sees (run on each dask worker)."""
    return torch.cuda.device_count()


def _cluster_resources(client, scheduler: str, device: str) -> dict | None:
    """Task resources on an existing cluster, from what its workers declare and see.

    A GPU task asks for the `GPU` resource so each GPU runs one task at a time; on a cluster
    whose workers declare none, such a task would wait forever, so that is refused here.
    """
    if not client.scheduler_info()["workers"]:
        log.warning("waiting for a dask worker to join %s", scheduler)
        client.wait_for_workers(1)
    workers = client.scheduler_info()["workers"]
    declared = {a for a, w in workers.items() if w.get("resources", {}).get("GPU")}
    if device == "cpu":
        return None
    if declared:
        return {"GPU": 1}
    seen = {a: n for a, n in client.run(visible_gpus).items() if n} if device == "auto" else {}
    if device == "cuda" or seen:
        where = f"; {next(iter(seen))} sees {next(iter(seen.values()))} GPU(s)" if seen else ""
        raise DeitPipeError(
            f"none of the {len(workers)} dask workers at {scheduler} declares the GPU "
            f"resource{where}: start one worker per GPU with `dask worker {scheduler} "
            "--resources GPU=1` (CUDA_VISIBLE_DEVICES set per worker), or pass --device cpu"
        )
    return None


def precompute(
    job: Job,
    request: StoreRequest,
    *,
    workers: int | None = None,
    threads_per_worker: int = 1,
    scheduler: str | None = None,
    progress: Callable[[TaskResult], None] | None = None,
    on_plan: Callable[[list[Task], StoreWriter], None] | None = None,
    overwrite: bool = False,
    repair: bool = False,
) -> Summary:
    """Prepare the store and run every shard not yet done (resume = call again).

    Every argument is checked before anything is written. The store's lock is held while
    the store is created or grown; the job's epochs (`request.claim`) are claimed for the
    whole job, so a job on overlapping epochs is refused naming this one, and jobs on
    disjoint epochs (`--epochs-range`) fill one store side by side.
    `repair` first re-checks every done shard against its checksums and recomputes those
    that differ.
    """
    check(workers is None or workers >= 0, f"--dask-workers must be ≥ 0, got {workers}")
    check_at_most(workers, MAX_WORKERS, "--dask-workers")
    if scheduler is None:  # an existing cluster's workers have their own devices
        resolve_device(job.device)
    spec, source = store_spec(job, request)
    refuse_unusable(job.url, probe(job.url))
    # Everything for a job that may remove or redo any shard; its own epochs otherwise.
    asked = request.resolved()
    claim = asked.claim(job.store_teacher)
    if overwrite or repair:  # repair reads the whole store too
        claim = Claim(val=True, teacher=None if overwrite else job.store_teacher)
    with ExitStack() as held:
        writer, claimed = _prepare_locked(
            job, spec, source, overwrite=overwrite, claim=claim, repair=repair
        )
        held.callback(claimed.release)
        tasks = pending(writer, None if repair else asked)
        if on_plan:
            on_plan(tasks, writer)
        log.info("%d shards to compute", len(tasks))
        return run(
            job,
            tasks,
            workers=workers,
            threads_per_worker=threads_per_worker,
            scheduler=scheduler,
            progress=progress,
        )
