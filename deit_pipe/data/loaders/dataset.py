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

from deit_pipe.choices import RENDERERS
from deit_pipe.data.device.finish import mix_params
from deit_pipe.data.device.render import DeviceView, batch_tensor, defer, defer_eval, prepare
from deit_pipe.data.plan.epoch import EpochPlan, step_slots, steps_per_epoch
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.data.sources.source import Source, Split
from deit_pipe.data.views.batch import ViewBatch
from deit_pipe.data.views.host import (
    ViewConfig,
    eval_transform,
    hwc,
    render,
    train_transform,
    view_fingerprint,
)
from deit_pipe.data.views.params import ViewDrawer


class PairDataset(Dataset):
    """Mixed training views of one epoch, a pair of slots per item. With `render="device"`
    an item carries its views' source crops and parameters, for `device_render.realize`."""

    def __init__(self, split: Split, epoch_plan: EpochPlan, cfg: ViewConfig, render: str = "host"):
        if render not in RENDERERS:
            raise ValueError(f"render must be one of {RENDERERS}, got {render!r}")
        self.split, self.plan, self.cfg = split, epoch_plan, cfg
        self.drawer = ViewDrawer(train_transform(cfg))
        self._render = defer if render == "device" else _render_host

    def __len__(self) -> int:
        return self.plan.num_pairs

    def __getitem__(self, pair: int) -> dict:
        slots = list(self.plan.pair_slots(pair))
        seeds = [int(self.plan.view_seed[s]) for s in slots]
        rendered = [
            self._render(self.split.open(int(self.plan.sample[s])), seed, self.drawer, self.cfg)
            for s, seed in zip(slots, seeds, strict=True)
        ]
        mix = _NO_MIX  # a lone last slot (odd epoch) has no partner to mix with
        if len(slots) == 2:
            mix = mix_params(self.plan.mix_op[pair], self.plan.lam[pair], self.plan.box[pair])
        return _item(rendered, slots, seeds, mix)

    def view(self, slot: int) -> dict:
        """Slot `slot` alone, with its pair's mix parameters: the same bytes and fields as
        its half of the pair's item (a loader in block order renders a pair's two slots in
        whichever workers read their blocks)."""
        pair = slot // 2
        mix = _NO_MIX
        if len(self.plan.pair_slots(pair)) == 2:
            mix = mix_params(self.plan.mix_op[pair], self.plan.lam[pair], self.plan.box[pair])
        seed = int(self.plan.view_seed[slot])
        img = self.split.open(int(self.plan.sample[slot]))
        return _item([self._render(img, seed, self.drawer, self.cfg)], [slot], [seed], mix)


class EvalDataset(Dataset):
    """Clean eval views (resize + center crop), one per sample, in index order; with
    `render="device"` each item carries its image and resize taps for `realize`."""

    def __init__(self, split: Split, cfg: ViewConfig, render: str = "host"):
        if render not in RENDERERS:
            raise ValueError(f"render must be one of {RENDERERS}, got {render!r}")
        self.split, self.cfg, self.render = split, cfg, render
        self.transform = eval_transform(cfg)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> dict:
        img = self.split.load(index)
        device = self.render == "device"
        view = defer_eval(img, self.cfg) if device else hwc(self.transform(img))
        boxes = np.zeros((self.cfg.re_count, 4), dtype=np.int32)  # eval views are not erased
        return _item([(view, boxes)], [index], [0], _NO_MIX)


_NO_MIX = mix_params(0, 1.0, (0, 0, 0, 0))
_render_host = render


def _item(rendered, slots: list[int], seeds: list[int], mix) -> dict:
    """Rendered views and everything `finish` needs, fingerprinted together. The pixels stay
    one tensor per view and the rest NumPy, so `collate_views` copies each view once. A view
    left to the device (`render="device"`) carries its source crop and parameters instead of
    pixels; `device_render.realize` renders and fingerprints it on the consuming device."""
    op, lams, box = mix
    seed_bits = np.array(seeds, dtype="<u8")
    n = len(slots)
    item = {
        "erase": np.stack([boxes for _, boxes in rendered]),
        "seed": seed_bits.view(np.int64),
        "mix": np.full(n, op, dtype=np.int64),
        "lam": np.tile(lams, (n, 1)),
        "box": np.tile(box, (n, 1)),
        "slot": np.array(slots, dtype=np.int64),
    }
    if isinstance(rendered[0][0], DeviceView):  # fingerprinted once rendered
        return {**item, "device_views": [view for view, _ in rendered]}
    fps = [
        view_fingerprint(pixels, boxes, op, lams, box, seed)
        for (pixels, boxes), seed in zip(rendered, seed_bits, strict=True)
    ]
    fps = np.array(fps, dtype=np.uint64).view(np.int64)
    return {**item, "image": [pixels for pixels, _ in rendered], "fingerprint": fps}


def collate_views(items: list[dict]) -> ViewBatch:
    """A batch of items (1 or 2 views each), concatenated along the view axis. Views left
    to the device are `prepare`d here (in the loader worker) for `realize`."""
    batch = {}
    for key in items[0]:
        if key == "image":
            views = [view for item in items for view in item[key]]
            out = batch_tensor((len(views), *views[0].shape), views[0].dtype)
            batch[key] = torch.stack(views, out=out)
        elif key == "device_views":  # the host side of device rendering, in the worker
            batch[key] = prepare([view for item in items for view in item[key]])
        else:
            batch[key] = torch.from_numpy(np.concatenate([item[key] for item in items]))
    return ViewBatch(**batch)


class ReplayDataset(Dataset):
    """The training views of a run: item (epoch, pair) is pair `pair` of the views training
    epoch `epoch` replays — its own, or stored epoch e mod `cycle` past a store's end."""

    def __init__(
        self, split: Split, recipe: Recipe, cycle: int | None = None, render: str = "host"
    ):
        self.split, self.recipe, self.cycle, self.render = split, recipe, cycle, render
        self._epoch, self._pairs = -1, None  # one epoch's dataset at a time, per process

    def view_epoch(self, epoch: int) -> int:
        return epoch % self.cycle if self.cycle else epoch

    def epoch_plan(self, epoch: int) -> EpochPlan:
        return self._dataset(epoch).plan

    def _dataset(self, epoch: int) -> PairDataset:
        if epoch != self._epoch:
            plan = self.recipe.epoch_plan(self.view_epoch(epoch), self.split)
            pairs = PairDataset(self.split, plan, self.recipe.view, self.render)
            self._epoch, self._pairs = epoch, pairs
        return self._pairs

    def __getitem__(self, item: tuple[int, int]) -> dict:
        epoch, pair = item
        views = self._dataset(epoch)[pair]
        return {**views, "epoch": np.full(len(views["slot"]), epoch, dtype=np.int64)}

    def slot_view(self, epoch: int, slot: int) -> dict:
        """Slot `slot` of the views training epoch `epoch` replays, alone."""
        view = self._dataset(epoch).view(slot)
        return {**view, "epoch": np.full(1, epoch, dtype=np.int64)}


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


def stored_views(
    source: Source, recipe: Recipe, split: str, epoch: int, render: str = "host"
) -> Dataset:
    """The views a store holds for `split`/`epoch`, as the teacher saw them: the epoch plan's
    mixed training pairs (item p = slots 2p, 2p+1), or the clean val views (item = slot)."""
    data = source.split(split)
    if split == "train":
        return PairDataset(data, recipe.epoch_plan(epoch, data), recipe.view, render)
    return EvalDataset(data, recipe.view, render)


def mismatches(stored: np.ndarray, slots, fingerprints) -> np.ndarray:
    """Positions in `slots` whose replayed fingerprint (int64 bits) differs from the stored
    one (uint64): the one comparison every replay makes."""
    replayed = np.asarray(fingerprints).view(np.int64)
    return np.flatnonzero(stored[np.asarray(slots)].view(np.int64) != replayed)
