"""A run's training views in block order, each block read by one loader worker once per window.

With the block order (`data.plan.epoch`), a step's views come from the W blocks of a window. A
`DataLoader` that hands whole steps to its workers in turn would make every worker read
every block. Here every worker walks all the steps but renders only the slots whose block
it owns (block b belongs to worker b mod N), reads each of its blocks whole on first use
and releases it after the block's last step. Each worker yields one part per step (empty
when it owns none of the step's slots); the DataLoader returns parts in worker order, so
N consecutive parts are one step, which `merge_parts` puts back in slot order on the
consuming device. Which views a step holds never depends on N, the ranks or a resume.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import fields

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from deit_pipe.data.device.render import Later, fingerprints
from deit_pipe.data.loaders.dataset import ReplayDataset, RunSampler, collate_views
from deit_pipe.data.plan.epoch import block_of, step_slots
from deit_pipe.data.views.batch import ViewBatch


class BlockRun(IterableDataset):
    """This rank's steps [start_step, end_step) of a run, as one part per step per worker."""

    def __init__(self, replay: ReplayDataset, global_batch: int, end_step: int, **layout):
        """`layout`: `RunSampler`'s world_size, rank and start_step (the same steps)."""
        self.replay = replay
        self.steps = RunSampler(len(replay.split), global_batch, end_step, **layout)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[ViewBatch]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        split = self.replay.split
        if hasattr(split, "read_whole_blocks"):
            split.read_whole_blocks()
        blocks = split.blocks()
        run, epoch, owner, last_step = self.steps, -1, None, None
        for step in range(run.start_step, run.end_step):
            if step // run.per_epoch != epoch:
                epoch = step // run.per_epoch
                owner, last_step = self._epoch_blocks(epoch, blocks)
            slots = step_slots(step % run.per_epoch, run.global_batch, run.world_size, run.rank)
            mine = [s for s in slots if owner[s] % workers == worker]
            items = [self.replay.slot_view(epoch, s) for s in mine]
            yield collate_views(items) if items else ViewBatch.empty()
            # Blocks whose last slot this epoch was in this step: their window has passed.
            sample = self.replay.epoch_plan(epoch).sample
            for s in mine:
                if last_step[owner[s]] == step % run.per_epoch:
                    split.release(int(sample[s]))

    def _epoch_blocks(self, epoch: int, blocks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each slot's block, and the last in-epoch step at which each block is used."""
        sample = self.replay.epoch_plan(epoch).sample
        owner = block_of(blocks, sample)
        last = np.full(len(blocks), -1, dtype=np.int64)
        np.maximum.at(last, owner, np.arange(len(sample)) // self.steps.global_batch)
        return owner, last


def block_loader(run: BlockRun, workers: int, pin_memory: bool = False) -> Iterator[list]:
    """Steps of `run`, each a list of `ViewBatch` parts: one per loader worker (see the
    module)."""
    loader = DataLoader(
        run,
        batch_size=None,
        num_workers=workers,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
        pin_memory=pin_memory,
    )
    parts: list[ViewBatch] = []
    for part in loader:
        parts.append(part)
        if len(parts) == max(workers, 1):
            yield parts
            parts = []


# What `pixels` makes of a part, merged on the device below (the rest is host data per view).
_PIXELS = ("image", "fingerprint", "device_views", "host_rendered")


def merge_parts(
    parts: list[ViewBatch],
    device: torch.device,
    pixels: Callable[[ViewBatch, torch.device], ViewBatch],
) -> ViewBatch:
    """One step's parts as one batch in slot order: each part's pixels made (`pixels`:
    `device.render.device_pixels`), the views moved to `device` and concatenated there,
    everything sorted by slot (pending fingerprints stay pending: see `fingerprints`)."""
    parts = [pixels(p, device) for p in parts if len(p)]
    order = torch.argsort(torch.cat([p.slot for p in parts]))
    merged = {}
    for name in (f.name for f in fields(ViewBatch) if f.name not in _PIXELS):
        if getattr(parts[0], name) is not None:
            merged[name] = torch.cat([getattr(p, name) for p in parts])[order]
    views = torch.cat([p.image.to(device, non_blocking=True) for p in parts])
    merged["image"] = views[order.to(device, non_blocking=True)]
    if any(isinstance(p.fingerprint, Later) for p in parts):
        merged["fingerprint"] = Later(lambda: torch.cat([fingerprints(p) for p in parts])[order])
    else:
        merged["fingerprint"] = torch.cat([p.fingerprint for p in parts])[order]
    return ViewBatch(**merged, host_rendered=sum(p.host_rendered for p in parts))
