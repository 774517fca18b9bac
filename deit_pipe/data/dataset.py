"""torch Datasets over an epoch plan (pairs of training views) and over clean eval views.

Item p of `PairDataset` renders slots 2p and 2p+1 and mixes them, so one rendering of each
image serves both halves. `collate_views` concatenates items, so a batch of b pairs is 2b
views in slot order. `ReplayDataset` (items: (epoch, pair)) + `RunSampler` (per step of a run,
the pairs one rank consumes) serve a whole training run, so one DataLoader (and its worker
processes) serves every epoch and prefetches across epoch boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from deit_pipe.data.plan import EpochPlan, step_slots, steps_per_epoch
from deit_pipe.data.recipe import Recipe
from deit_pipe.data.sources import Source, Split
from deit_pipe.data.views import (
    ViewConfig,
    as_int64,
    eval_transform,
    fingerprint,
    mix_pair,
    render,
    train_transform,
)


class PairDataset(Dataset):
    """Mixed training views of one epoch, a pair of slots per item."""

    def __init__(self, split: Split, epoch_plan: EpochPlan, cfg: ViewConfig):
        self.split, self.plan, self.cfg = split, epoch_plan, cfg
        self.transform = train_transform(cfg)

    def __len__(self) -> int:
        return self.plan.num_pairs

    def __getitem__(self, pair: int) -> dict[str, torch.Tensor]:
        slots = list(self.plan.pair_slots(pair))
        views = [
            render(
                self.split.load(int(self.plan.sample[s])),
                int(self.plan.view_seed[s]),
                self.transform,
            )
            for s in slots
        ]
        if len(views) == 2:
            op, lam, box = self.plan.mix_op[pair], self.plan.lam[pair], self.plan.box[pair]
            views = list(mix_pair(views[0], views[1], int(op), float(lam), box))
        return _item(views, slots)


class EvalDataset(Dataset):
    """Clean eval views (resize + center crop), one per sample, in index order."""

    def __init__(self, split: Split, cfg: ViewConfig):
        self.split, self.cfg = split, cfg
        self.transform = eval_transform(cfg)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        view = self.transform(self.split.load(index)).to(torch.float32).contiguous()
        return _item([view], [index])


def _item(views: list[torch.Tensor], slots: list[int]) -> dict[str, torch.Tensor]:
    return {
        "image": torch.stack(views),
        "slot": torch.tensor(slots, dtype=torch.int64),
        "fingerprint": torch.tensor([as_int64(fingerprint(v)) for v in views], dtype=torch.int64),
    }


def collate_views(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Concatenate items along the view axis (items hold 1 or 2 views)."""
    return {key: torch.cat([it[key] for it in items]) for key in items[0]}


class ReplayDataset(Dataset):
    """The training views of a run: item (epoch, pair) is pair `pair` of the views training
    epoch `epoch` replays — its own, or stored epoch e mod `cycle` past a store's end."""

    def __init__(self, split: Split, recipe: Recipe, cycle: int | None = None):
        self.split, self.recipe, self.cycle = split, recipe, cycle
        self._epoch, self._pairs = -1, None  # one epoch's dataset at a time, per process

    def view_epoch(self, epoch: int) -> int:
        return epoch % self.cycle if self.cycle else epoch

    def epoch_plan(self, epoch: int) -> EpochPlan:
        return self._dataset(epoch).plan

    def _dataset(self, epoch: int) -> PairDataset:
        if epoch != self._epoch:
            plan = self.recipe.epoch_plan(self.view_epoch(epoch), len(self.split))
            self._epoch, self._pairs = epoch, PairDataset(self.split, plan, self.recipe.view)
        return self._pairs

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        epoch, pair = item
        views = self._dataset(epoch)[pair]
        return {**views, "epoch": torch.full_like(views["slot"], epoch)}


class RunSampler(Sampler[list[tuple[int, int]]]):
    """Batch sampler for a run: per global step in [start_step, end_step), this rank's pairs
    tagged with their epoch (an epoch is `steps_per_epoch(num_slots, global_batch)` steps)."""

    def __init__(
        self,
        num_slots: int,
        global_batch: int,
        end_step: int,
        world_size: int = 1,
        rank: int = 0,
        start_step: int = 0,
    ):
        step_slots(0, global_batch, world_size, rank)  # validates the layout up front
        self.per_epoch = steps_per_epoch(num_slots, global_batch)
        self.global_batch, self.world_size, self.rank = global_batch, world_size, rank
        self.start_step, self.end_step = start_step, end_step

    def __len__(self) -> int:
        return max(self.end_step - self.start_step, 0)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.end_step):
            epoch, in_epoch = divmod(step, self.per_epoch)
            slots = step_slots(in_epoch, self.global_batch, self.world_size, self.rank)
            yield [(epoch, p) for p in range(slots.start // 2, slots.stop // 2)]


def stored_views(source: Source, recipe: Recipe, split: str, epoch: int) -> Dataset:
    """The views a store holds for `split`/`epoch`, as the teacher saw them: the epoch plan's
    mixed training pairs (item p = slots 2p, 2p+1), or the clean val views (item = slot)."""
    data = source.split(split)
    if split == "train":
        return PairDataset(data, recipe.epoch_plan(epoch, len(data)), recipe.view)
    return EvalDataset(data, recipe.view)


def mismatches(stored: np.ndarray, slots, fingerprints) -> np.ndarray:
    """Positions in `slots` whose replayed fingerprint (int64 bits) differs from the stored
    one (uint64): the one comparison every replay makes."""
    replayed = np.asarray(fingerprints).view(np.int64)
    return np.flatnonzero(stored[np.asarray(slots)].view(np.int64) != replayed)
