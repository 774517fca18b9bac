"""Rendering a shard's views for the teacher, in the task's thread or in render processes.

With `--loader-workers N` a process (a dask worker, or the precompute itself) keeps one pool
of N render processes for its whole life: a new shard reuses them instead of forking fresh
DataLoader workers and re-opening the dataset every time. Batches come back in slot order
through shared memory (torch's multiprocessing reductions, as a DataLoader's do), at most
2·N chunks in flight, so fast rendering never piles a shard up in memory.
"""

from __future__ import annotations

import atexit
import json
from collections import deque
from collections.abc import Iterator

import torch
import torch.multiprocessing as torch_mp

from deit_pipe.data import Source, collate_views, open_checked, stored_views
from deit_pipe.data.plan.recipe import Recipe
from deit_pipe.data.sources.cache import DataCache

_STATE: dict = {}  # this process's dataset for the (recipe, split, epoch) it renders now


def _dataset(source: Source, recipe_json: str, split: str, epoch: int, render: str = "host"):
    key = (source.data, recipe_json, split, epoch, render)
    if _STATE.get("key") != key:  # one epoch's plan at a time: 300 cached plans would not fit
        recipe = Recipe.from_dict(json.loads(recipe_json))
        views = stored_views(source, recipe, split, epoch, render)
        if recipe.window and split == "train" and hasattr(views.split, "read_whole_blocks"):
            # Block order: a pair's views come from the window's blocks, which this
            # process's block cache holds (≤ 2 windows), each read whole once.
            views.split.read_whole_blocks()
        _STATE.update(key=key, dataset=views)
    return _STATE["dataset"]


def render_items(
    source: Source, recipe_json: str, split: str, epoch: int, items, render: str = "host"
) -> dict:
    """Items (train: pairs, val: samples) rendered and collated, in order (with
    `render="device"`, training views are prepared for `device_render.realize`)."""
    dataset = _dataset(source, recipe_json, split, epoch, render)
    return collate_views([dataset[i] for i in items])


def _start_renderer(data: str, skip_bad: bool, opened: dict) -> None:
    torch.set_num_threads(1)  # as DataLoader workers: N renderers must not oversubscribe
    _STATE.update(source=open_checked(data, skip_bad=skip_bad, **opened))


def _render_chunk(chunk: tuple) -> dict:
    return render_items(_STATE["source"], *chunk)


class RenderPool:
    """N render processes for one dataset, kept for the life of this process."""

    def __init__(
        self,
        data: str,
        skip_bad: bool,
        workers: int,
        data_options: dict | None = None,
        data_cache: DataCache | None = None,
    ):
        context = torch_mp.get_context("fork")
        self.workers = workers
        start = (data, skip_bad, {"data_options": data_options, "data_cache": data_cache})
        self.pool = context.Pool(workers, initializer=_start_renderer, initargs=start)
        atexit.register(self.pool.terminate)

    @property
    def pids(self) -> list[int]:
        return sorted(p.pid for p in self.pool._pool)

    def stream(self, chunks: list[tuple]) -> Iterator[dict]:
        """Results of `chunks` in order, with at most 2·workers of them in flight."""
        todo, pending = iter(chunks), deque()
        for chunk in todo:
            pending.append(self.pool.apply_async(_render_chunk, (chunk,)))
            if len(pending) >= 2 * self.workers:
                break
        while pending:
            result = pending.popleft().get()
            chunk = next(todo, None)
            if chunk is not None:
                pending.append(self.pool.apply_async(_render_chunk, (chunk,)))
            yield result


def shard_batches(
    source: Source,
    recipe: Recipe,
    split: str,
    epoch: int,
    rows: range,
    batch_size: int,
    pool: RenderPool | None = None,
    render: str = "host",
) -> Iterator[dict]:
    """The rendered views of one shard (`rows` of the split), batch by batch, in slot order."""
    if split == "train":  # a pair renders two slots; shards never split a pair
        items, per_batch = range(rows.start // 2, (rows.stop + 1) // 2), max(batch_size // 2, 1)
    else:
        items, per_batch = rows, batch_size
    recipe_json = json.dumps(recipe.to_dict(), sort_keys=True)
    chunks = [
        (recipe_json, split, epoch, list(items[i : i + per_batch]), render)
        for i in range(0, len(items), per_batch)
    ]
    if pool is None:
        for chunk in chunks:
            yield render_items(source, *chunk)
    else:
        yield from pool.stream(chunks)
