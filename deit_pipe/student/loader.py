"""The replay loader (`deit_pipe.ReplayLoader`): one rank's batches of a run, as the student
consumes them — finished images on the device, mixed label targets, the teacher's targets
for exactly those views, their slots — for `deit-pipe train` and any other training loop.

One loader serves a whole run (every epoch, from any step): its DataLoader's workers persist
and prefetch across epoch boundaries, a batch's views are rendered by the host (Pillow) or
by the device's kernels (the same bytes), and every view's fingerprint is checked against
the store's before the batch is used (`ReplayError` otherwise). Its position is a step
(`state_dict`/`load_state_dict`, torchdata's convention): a loader restarted at step s
yields the very batches s, s+1, … it would have yielded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import cached_property, partial

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from deit_pipe.data import Source, ViewConfig, collate_views, finish, open_checked
from deit_pipe.data.device.render import device_pixels, fingerprints, render_mode
from deit_pipe.data.loaders.blocks import BlockRun, block_loader, merge_parts
from deit_pipe.data.loaders.dataset import ReplayDataset, RunSampler
from deit_pipe.data.plan.epoch import steps_per_epoch
from deit_pipe.data.plan.recipe import Recipe, schedule_of
from deit_pipe.data.sources.cache import DataCache
from deit_pipe.data.views.batch import ViewBatch
from deit_pipe.device import resolve_device
from deit_pipe.errors import DeitPipeError
from deit_pipe.student.losses import PAPER_ALPHA_TAU, alpha_tau, mixed_label_targets
from deit_pipe.student.store import Store
from deit_pipe.student.targets import NoTeacher, OnlineTeacher, StoredTeacher, TeacherTargets

STATE_VERSION = 1


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of a training step's own randomness (drop-path), as `deit-pipe train`
    seeds it: a function of (seed, step, rank), so a run resumed at any step continues
    exactly. Call `torch.manual_seed(step_seed(seed, batch.step, batch.rank))` before the
    forward pass.

    Args:
        seed: the run's training seed (`--train-seed`).
        step: the global step (`Batch.step`).
        rank: this process's rank (`Batch.rank`).

    Returns:
        A non-negative 63-bit integer for `torch.manual_seed`.
    """
    return int(
        np.random.SeedSequence([seed, step, rank, 0x5EED]).generate_state(1, np.uint64)[0] >> 1
    )


@dataclass
class TopK:
    """The stored teacher's top-k for a batch's views: logits (descending), class ids and the
    log-sum-exp of all logits at each stored temperature."""

    values: torch.Tensor  # [n, k] float32 logits
    indices: torch.Tensor  # [n, k] int64 class ids
    lse: torch.Tensor  # [n, T] float32
    temperatures: tuple[float, ...]


@dataclass
class Batch:
    """One step's batch for one rank, on the loader's device.

    `images` are the finished views (normalised, erased, mixed; float32, channels_last);
    `label_targets` the mixed, smoothed labels; `teacher_soft` the teacher's distribution at
    τ (soft distillation), `teacher_hard` its top-1 class. Call `check()` before the
    optimiser steps when the loader was made with `check_before_yield=False`."""

    images: torch.Tensor
    label_targets: torch.Tensor
    teacher_soft: torch.Tensor | None
    teacher_hard: torch.Tensor | None
    slots: np.ndarray  # [n] the views' slots in their epoch's plan
    step: int  # the global step (every rank's batch of a step has the same one)
    epoch: int  # the training epoch
    rank: int
    waited: bool = False  # whether the step waited for a precompute still filling the store
    _check: Callable[[], None] | None = field(default=None, repr=False)
    _topk: Callable[[], TopK | None] = field(default=lambda: None, repr=False)

    @cached_property
    def teacher_topk(self) -> TopK | None:
        """A single stored teacher's raw top-k of these views, else None: gathered when first
        asked for, so a loop that never reads it (`deit-pipe train`) never pays for it."""
        return self._topk()

    def check(self) -> None:
        """Raise `ReplayError` unless every view is the one its targets were made from."""
        if self._check is not None:
            check, self._check = self._check, None
            check()

    def __len__(self) -> int:
        return len(self.slots)


class ReplayLoader:
    """One rank's batches of a training run replayed from a store (or, with `teacher`, a
    teacher run online on the same views).

    Args:
        store: the `Store` (`open_store`); None with `data` for online or plain training.
        batch_size: the global batch (every rank takes `batch_size / world_size` views).
        epochs: training epochs [default: the store's preset schedule's].
        data: a dataset spec or `Source` [default: the store's dataset].
        recipe: the views' `Recipe` without a store [default: DeiT's for the dataset].
        teacher: a teacher model to run online on the views instead of reading targets.
        distill: `hard`, `soft` or `none`: which teacher targets a batch carries.
        tau: the soft targets' temperature [default: 3 for soft, else 1, the paper's].
        smoothing: label smoothing [default: the store's preset schedule's].
        device: where batches go [default: CUDA when there is one, else the CPU].
        render: `host` (Pillow), `device` (kernels, the same bytes) or `auto`.
        order: `global` or `blocks:W` without a store [default: the recipe's]; a store
            replays in its own order only.
        loader_workers: DataLoader worker processes.
        data_options, data_cache, data_cache_size: how a remote dataset is reached.
        cycle_epochs: replay stored epoch e mod E past the store's E epochs.
        follow: wait for each epoch's shards of a store still being filled (`on_wait`
            hears of each wait, `follow_timeout` seconds without progress give up).
        rank, world_size: [default: `torch.distributed`'s when initialised, else 0, 1].
        start_step: the first step to yield (see `state_dict`).
        max_steps: stop after this step.
        check_before_yield: check fingerprints before a batch is yielded; False leaves
            `batch.check()` to the caller (`deit-pipe train` checks after the backward
            pass, so that the device hashes while it computes).

    Raises:
        StoreError, DataError, ReplayError, DeitPipeError: one line naming the culprit.
    """

    def __init__(
        self,
        store: Store | None = None,
        *,
        batch_size: int,
        epochs: int | None = None,
        data: str | Source | None = None,
        recipe: Recipe | None = None,
        teacher: nn.Module | TeacherTargets | None = None,
        distill: str = "hard",
        tau: float | None = None,
        smoothing: float | None = None,
        device: str | torch.device | None = None,
        render: str = "host",
        order: str | None = None,
        loader_workers: int = 0,
        data_options: dict | None = None,
        data_cache: str | os.PathLike | DataCache | None = None,
        data_cache_size: int | None = None,
        cycle_epochs: bool = False,
        follow: bool = False,
        follow_timeout: float = 1800.0,
        on_wait: Callable[[int, int, int], None] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        start_step: int = 0,
        max_steps: int | None = None,
        check_before_yield: bool = True,
    ):
        _check_distill(store, distill, teacher)
        self.store, self.distill = store, distill
        self.tau = alpha_tau(distill, None, tau)[1]
        self.rank, self.world_size = _layout(rank, world_size)
        self.device = torch.device(device) if device is not None else resolve_device("auto")
        self.source = _open_source(store, data, data_options, data_cache, data_cache_size)
        self.recipe = _replayed_recipe(store, self.source, recipe, order)
        schedule = schedule_of(self.recipe.name)
        self.epochs = epochs or schedule.epochs
        self.smoothing = schedule.smoothing if smoothing is None else smoothing
        self.batch_size, self.loader_workers = batch_size, loader_workers
        self.cycle_epochs, self.follow = cycle_epochs, follow
        self.follow_timeout, self.on_wait = follow_timeout, on_wait
        split = self.source.split("train")
        self.per_epoch = _steps_per_epoch(len(split), batch_size)
        self.total_steps = self.per_epoch * self.epochs
        self.end = min(self.total_steps, max_steps or self.total_steps)
        if store is not None:
            store.targets.check_run(epochs=self.epochs, cycle_epochs=cycle_epochs, follow=follow)
        self.teacher = _teacher_targets(
            teacher, store, distill, self.tau, self.source, cycle_epochs, self.device
        )
        self.labels = torch.as_tensor(np.asarray(split.labels)).to(self.device)
        self.render = render_mode(render, self.device)
        self.step, self.check_before_yield = start_step, check_before_yield
        self.host_rendered = 0  # views the device path left to Pillow (ops no kernel covers)
        self._epoch, self._inner, self._dataset = -1, None, None

    # -- position ---------------------------------------------------------------------------

    def __len__(self) -> int:
        """Steps left to yield."""
        return max(self.end - self.step, 0)

    def state_dict(self) -> dict:
        """The loader's position: the next step it yields (and what the steps mean)."""
        return {"version": STATE_VERSION, "step": self.step, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a `state_dict()`: the next batch is the one that followed it."""
        if state.get("batch_size") != self.batch_size:
            raise DeitPipeError(
                f"the loader's state is of global batch {state.get('batch_size')}, not "
                f"{self.batch_size}: a step holds other slots"
            )
        self.step = int(state["step"])
        self._drop_inner()

    def set_render(self, render: str) -> None:
        """Render from the next step with `render` (`host` or `device`): the same bytes."""
        render = render_mode(render, self.device)
        if render != self.render:
            self.render = render
            self._drop_inner()

    # -- iteration ----------------------------------------------------------------------------

    def __iter__(self) -> ReplayLoader:
        return self

    def __next__(self) -> Batch:
        if self.step >= self.end:
            self._drop_inner()
            raise StopIteration
        if self._inner is None:
            self._inner = self._open_inner()
        try:
            raw = next(self._inner)
            epoch = self.step // self.per_epoch
            waited = self._start_epoch(epoch) if epoch != self._epoch else False
            batch = self._batch(raw, epoch, waited)
        except BaseException:
            self._drop_inner()  # the next call starts again at this step
            raise
        self.step += 1
        return batch

    def close(self) -> None:
        """Stop the DataLoader's workers (they also stop when the loader is dropped)."""
        self._drop_inner()

    def epoch_plan(self, epoch: int):
        """The plan of the views training epoch `epoch` replays."""
        return self._replay().epoch_plan(epoch)

    def _replay(self) -> ReplayDataset:
        if self._dataset is None or self._dataset.render != self.render:
            cycle = self.store.epochs if self.store is not None and self.cycle_epochs else None
            split = self.source.split("train")
            self._dataset = ReplayDataset(split, self.recipe, cycle, self.render)
        return self._dataset

    def _open_inner(self) -> Iterable[dict]:
        """A DataLoader from the current step to the end (in the block order, its workers
        split the blocks between them: `data.loaders.blocks`)."""
        dataset, workers = self._replay(), self.loader_workers
        pin = self.device.type == "cuda"
        if self.recipe.window:
            layout = {"world_size": self.world_size, "rank": self.rank, "start_step": self.step}
            run = BlockRun(dataset, self.batch_size, self.end, **layout)
            return iter(block_loader(run, workers, pin_memory=pin))
        sampler = RunSampler(
            len(dataset.split), self.batch_size, self.end, self.world_size, self.rank, self.step
        )
        loader = DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate_views,
            num_workers=workers,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
            pin_memory=pin,
        )
        return iter(loader)

    def _drop_inner(self) -> None:
        inner, self._inner = self._inner, None
        if hasattr(inner, "close"):  # block order's generator: its DataLoader goes with it
            inner.close()
        del inner  # a DataLoader's persistent workers stop when it goes

    def _start_epoch(self, epoch: int) -> bool:
        """Before an epoch's first batch: wait for its targets (`follow`), load them."""
        waited = False
        if self.follow and self.store is not None:
            stored = self._replay().view_epoch(epoch)
            self.store.targets.wait_for_epoch(
                stored, stall_timeout=self.follow_timeout, on_wait=self.on_wait or _quiet
            )
            if self.world_size > 1:  # ranks leave the wait together
                dist.barrier()
            waited = True
        self.teacher.start_epoch(epoch, self.epochs, self.epoch_plan(epoch))
        self._epoch = epoch
        return waited

    def _batch(self, raw: ViewBatch | list[ViewBatch], epoch: int, waited: bool) -> Batch:
        raw = _device_stage(raw, self.device)
        if self.render == "device":  # views the kernels left to Pillow
            self.host_rendered += raw.host_rendered
        plan = self.epoch_plan(epoch)
        slots = raw.slot.numpy()
        dev = self.device
        lam = torch.as_tensor(plan.lam[slots // 2], dtype=torch.float32).to(dev)
        own = torch.from_numpy(plan.sample[slots]).to(dev)
        other = torch.from_numpy(plan.sample[plan.partner(slots)]).to(dev)
        labels = mixed_label_targets(
            self.labels[own], self.labels[other], lam, self.source.num_classes, self.smoothing
        )
        images = finish(raw, self.recipe.view, dev).contiguous(memory_format=torch.channels_last)
        soft, hard = self.teacher.targets(slots, images)
        teacher = self.teacher

        def check() -> None:
            teacher.check(slots, fingerprints(raw).numpy())

        batch = Batch(
            images=images,
            label_targets=labels,
            teacher_soft=soft,
            teacher_hard=hard,
            slots=slots,
            step=self.step,
            epoch=epoch,
            rank=self.rank,
            _topk=_topk_of(self.teacher, slots, dev),
            waited=waited,
            _check=check,
        )
        if self.check_before_yield:
            batch.check()
        return batch


def _check_distill(store: Store | None, distill: str, teacher) -> None:
    """Refuse an unknown distillation mode, and soft distillation from a store of the
    teacher's top-1 class only (unless a teacher runs online)."""
    if distill not in PAPER_ALPHA_TAU:
        raise DeitPipeError(f"distill must be one of none, soft, hard, got {distill!r}")
    if distill == "soft" and store is not None and store.kind == "hard" and teacher is None:
        raise DeitPipeError(
            f"{store.url} holds the teacher's top-1 class only (precompute --targets "
            "hard): soft distillation needs --targets soft; use --distill hard or none"
        )


def _open_source(store: Store | None, data, data_options, data_cache, data_cache_size) -> Source:
    """The dataset the views replay from: `data` as given (a `Source`), else the store's
    (or `data` checked against it), else the dataset spec `data`."""
    if isinstance(data, Source):
        return data
    if store is not None:
        return store.open_data(
            data,
            data_options=data_options,
            data_cache=data_cache,
            data_cache_size=data_cache_size,
        )
    if data is None:
        raise DeitPipeError("a replay loader needs a store, or data (a dataset spec)")
    cache = DataCache.of(data_cache, data_cache_size)
    return open_checked(data, data_options=data_options, data_cache=cache)


def _replayed_recipe(
    store: Store | None, source: Source, recipe: Recipe | None, order: str | None
) -> Recipe:
    """The store's recipe (which replays in its own order only), else `recipe` (default:
    DeiT's for the dataset) in `order` where given."""
    if store is not None:
        held = store.recipe
        if order is not None and order != held.order:
            raise DeitPipeError(
                f"order {order!r}: {store.url} holds views of the {held.order} order, "
                "and a store replays only in its own order (drop it, or precompute a store "
                "in that order)"
            )
        return held
    recipe = recipe if recipe is not None else Recipe(view=ViewConfig.for_source(source))
    return recipe if order is None else replace(recipe, order=order)


def _steps_per_epoch(views: int, batch_size: int) -> int:
    """Steps of an epoch of `views` training views; refused where not even one fits."""
    per_epoch = steps_per_epoch(views, batch_size)
    if per_epoch == 0:
        raise DeitPipeError(f"global batch {batch_size} exceeds the {views} views of an epoch")
    return per_epoch


def _teacher_targets(
    teacher: nn.Module | TeacherTargets | None,
    store: Store | None,
    distill: str,
    tau: float,
    source: Source,
    cycle_epochs: bool,
    device: torch.device,
) -> TeacherTargets:
    """Where a batch's teacher targets come from: a model run online on the views, targets
    given as such, none, or the store."""
    if isinstance(teacher, nn.Module):
        model = teacher.to(device, memory_format=torch.channels_last)
        return OnlineTeacher(model, tau, device)
    if teacher is not None:
        return teacher
    if distill == "none":
        return NoTeacher()
    if store is None:
        raise DeitPipeError(f"--distill {distill} needs --store or --teacher-model")
    return StoredTeacher(
        store.targets,
        tau,
        source.split("train"),
        source.data,
        cycle_epochs=cycle_epochs,
        soft=distill == "soft",
        device=device,
    )


def _device_stage(raw: ViewBatch | list[ViewBatch], device: torch.device) -> ViewBatch:
    """A batch whose views the kernels render, rendered on the device (queued)."""
    if isinstance(raw, list):  # block order: each loader worker's share of the step
        return merge_parts(raw, device, partial(device_pixels, wait=False))
    return device_pixels(raw, device, wait=False)


def _topk_of(
    teacher: TeacherTargets, slots: np.ndarray, device: torch.device
) -> Callable[[], TopK | None]:
    """What gathers the batch's raw top-k from this epoch's slice (None: not stored)."""
    current = getattr(teacher, "current", None)
    if getattr(current, "values", None) is None or getattr(current, "lse", None) is None:
        return lambda: None
    return lambda: TopK(
        torch.from_numpy(current.values[slots].astype(np.float32)).to(device),
        torch.from_numpy(current.indices[slots].astype(np.int64)).to(device),
        torch.from_numpy(current.lse[slots].astype(np.float32)).to(device),
        tuple(current.temperatures),
    )


def _layout(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): as given, else torch.distributed's when it is initialised."""
    initialised = dist.is_available() and dist.is_initialized()
    if rank is None:
        rank = dist.get_rank() if initialised else 0
    if world_size is None:
        world_size = dist.get_world_size() if initialised else 1
    if not 0 <= rank < world_size:
        raise DeitPipeError(f"rank {rank} is not in a world of {world_size}")
    return rank, world_size


def _quiet(epoch: int, done: int, total: int) -> None:
    pass


__all__ = ["Batch", "ReplayLoader", "TopK", "step_seed"]
