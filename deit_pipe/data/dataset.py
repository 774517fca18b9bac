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

from deit_pipe.data.finish import mix_params
from deit_pipe.data.plan import EpochPlan, step_slots, steps_per_epoch
from deit_pipe.data.recipe import Recipe
from deit_pipe.data.sources import Source, Split
from deit_pipe.data.views import (
    ViewConfig,
    as_int64,
    eval_transform,
    fingerprint,
    hwc,
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
        seeds = [int(self.plan.view_seed[s]) for s in slots]
        rendered = [
            render(self.split.load(int(self.plan.sample[s])), seed, self.transform, self.cfg)
            for s, seed in zip(slots, seeds, strict=True)
        ]
        mix = _NO_MIX  # a lone last slot (odd epoch) has no partner to mix with
        if len(slots) == 2:
            mix = mix_params(self.plan.mix_op[pair], self.plan.lam[pair], self.plan.box[pair])
        return _item(rendered, slots, seeds, mix)


class EvalDataset(Dataset):
    """Clean eval views (resize + center crop), one per sample, in index order."""

    def __init__(self, split: Split, cfg: ViewConfig):
        self.split, self.cfg = split, cfg
        self.transform = eval_transform(cfg)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        pixels = hwc(self.transform(self.split.load(index)))
        boxes = np.zeros((self.cfg.re_count, 4), dtype=np.int32)  # eval views are not erased
        return _item([(pixels, boxes)], [index], [0], _NO_MIX)


_NO_MIX = mix_params(0, 1.0, (0, 0, 0, 0))


def _item(rendered, slots: list[int], seeds: list[int], mix) -> dict[str, torch.Tensor]:
    """Rendered views and everything `finish` needs, fingerprinted together."""
    op, lams, box = mix
    seed_bits = np.array(seeds, dtype=np.uint64)
    fps = []
    for (pixels, boxes), seed in zip(rendered, seed_bits, strict=True):
        params = np.concatenate(
            [boxes.ravel().view(np.uint32), np.array([op], np.uint32), lams.view(np.uint32),
             box.view(np.uint32), np.array([seed], "<u8").view(np.uint32)]
        )  # fmt: skip
        fps.append(as_int64(fingerprint(pixels, params)))
    n = len(slots)
    return {
        "image": torch.stack([pixels for pixels, _ in rendered]),
        "erase": torch.from_numpy(np.stack([boxes for _, boxes in rendered])),
        "seed": torch.from_numpy(seed_bits.view(np.int64)),
        "mix": torch.full((n,), op, dtype=torch.int64),
        "lam": torch.from_numpy(np.tile(lams, (n, 1))),
        "box": torch.from_numpy(np.tile(box, (n, 1))),
        "slot": torch.tensor(slots, dtype=torch.int64),
        "fingerprint": torch.tensor(fps, dtype=torch.int64),
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
