"""One split of a dataset: images by index, labels, and what identifies its content."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
from PIL import Image

from deit_pipe.data.decode.jpeg import EncodedJpeg, open_image
from deit_pipe.data.decode.pillow import decode_image
from deit_pipe.data.sources.files import Root
from deit_pipe.errors import DataError
from deit_pipe.place import PerProcess

IDENTITY_SAMPLES = 8  # encoded images hashed into a sharded split's identity (see `identity`)
RUN = 100  # samples per block where the data has no read unit of its own (files, a tar's members)
# Per process: what a loader worker keeps of the blocks it reads. The block order's window
# is sized so that the blocks alive at once fit (see `data.plan.order`).
CACHE = 256 << 20


class Split(ABC):
    """One split of a source: `len`, `labels`, `load(i)` → RGB PIL image, `open(i)` → its
    header (the pixels a crop needs are decoded by `crop`)."""

    labels: np.ndarray
    paths: list[str] | None = None  # names of the samples (relative paths, SHARD:KEY)
    sizes: list[int] | None = None  # encoded bytes per sample, where known without reading

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def load(self, index: int) -> Image.Image: ...

    def open(self, index: int) -> Image.Image | EncodedJpeg:
        """Sample `index` for a training view: `.size`, and `.crop(box)` with the pixels of
        `load(index).crop(box)`; a JPEG decodes only the crop's region (`data.decode.jpeg`)."""
        return self.load(index)

    @abstractmethod
    def identity(self, h) -> None:
        """Feed what identifies this split's images (beyond its labels) into hash `h`."""

    def content(self, h) -> None:
        """Feed what identifies the images whatever holds them (see `data.sources.identity`)."""
        self.identity(h)

    def blocks(self) -> np.ndarray:
        """Each block's first sample, ascending from 0: the units the block order permutes
        and a loader reads whole. Here runs of `RUN` samples; sharded splits use their
        row groups or runs of a tar's members."""
        return np.arange(0, len(self), RUN, dtype=np.int64)

    block_unit = f"runs of {RUN} samples"

    def block_bytes(self) -> float:
        """Mean encoded bytes of a block (what reading one costs)."""
        return float(sum(self.sizes or [0])) / max(len(self.blocks()), 1)

    def release(self, index: int) -> None:  # noqa: B027 — most splits keep nothing
        """Drop what this process keeps of the block holding sample `index` (its window
        has passed); a split that keeps nothing ignores it."""


class BlockCache:
    """Blocks read whole (a row group's image column, a tar's member range), kept until
    released or, least recently used first, until they would pass `limit` bytes. Counts
    the bytes read from storage (`bytes_read`, for the benchmarks)."""

    def __init__(self, limit: int = CACHE):
        self.limit, self.bytes_read = limit, 0
        self._blocks: OrderedDict = OrderedDict()
        self._lock = threading.Lock()  # `scan` reads from threads

    def get(self, key, read: Callable[[], tuple[object, int]]):
        with self._lock:
            if key in self._blocks:
                self._blocks.move_to_end(key)
                return self._blocks[key][0]
            value, size = read()
            self.bytes_read += size
            self._blocks[key] = (value, size)
            while len(self._blocks) > 1 and sum(n for _, n in self._blocks.values()) > self.limit:
                self._blocks.popitem(last=False)
            return value

    def drop(self, key) -> None:
        with self._lock:
            self._blocks.pop(key, None)


class ShardSplit(PerProcess, Split):
    """Samples stored inside shard files (Parquet, tar), possibly remote, named `SHARD:KEY`.

    `rows` maps a sample to its place among all the shards' samples, so skipping bad ones
    keeps every other's place. Per-process state (open files, caches) starts with `_` and
    is not pickled: each loader or dask worker opens its own.
    """

    root: Root
    rows: np.ndarray

    def __init__(self, root: Root, names: list[str], labels: np.ndarray, skip: dict, sizes=None):
        self.root = root
        self.rows = np.array([i for i, n in enumerate(names) if n not in skip], dtype=np.int64)
        self.paths = [names[i] for i in self.rows]
        self.labels = np.asarray(labels, dtype=np.int64)[self.rows]
        self.sizes = None if sizes is None else [int(sizes[i]) for i in self.rows]
        if len(self.labels) and self.labels.min() < 0:
            bad = self.paths[int(np.argmin(self.labels))]
            raise DataError(f"negative label at {root.location}/{bad} (an unlabelled split?)")

    @abstractmethod
    def raw(self, index: int) -> bytes:
        """Sample `index`'s encoded image."""

    @abstractmethod
    def block_rows(self) -> np.ndarray:
        """The first row (among all the shards' rows, skipped ones included) of each block."""

    def blocks(self) -> np.ndarray:
        # Blocks are fixed in row space, so skipping a bad sample never moves another block.
        starts = np.unique(np.searchsorted(self.rows, self.block_rows()))
        return starts[starts < len(self)].astype(np.int64)

    def _local(self) -> None:
        """This process's open shards and blocks (made again after a fork). `_whole`: read
        a block whole on its first sample (a loader in block order) rather than per sample."""
        if self._fresh():
            self._cache, self._shards, self._whole = BlockCache(), {}, False

    @property
    def cache(self) -> BlockCache:
        self._local()
        return self._cache

    def read_whole_blocks(self) -> None:
        """This process reads in block order: one request per block, kept until released."""
        self._local()
        self._whole = True

    def _block_key(self, index: int) -> int:
        """The block (in `block_rows` numbering) holding sample `index`."""
        return int(np.searchsorted(self.block_rows(), self.rows[index], side="right")) - 1

    def release(self, index: int) -> None:
        self.cache.drop(self._block_key(index))

    def load(self, index: int) -> Image.Image:
        return decode_image(self.raw(index), self._name(index))

    def open(self, index: int) -> Image.Image | EncodedJpeg:
        return open_image(self.raw(index), self._name(index))

    def _name(self, index: int) -> str:
        return f"{self.root.location}/{self.paths[index]}"

    def identity(self, h) -> None:
        """The sample count, sizes where known, and the bytes of a few images spread over the
        split: the same images in the same order anywhere (another folder, a bucket) are the
        same dataset. A changed image the sample misses is still caught, view by view, by
        the replay's fingerprints."""
        h.update(f"{len(self)}\n".encode())
        if self.sizes is not None:
            h.update(np.asarray(self.sizes, dtype=np.int64).tobytes())
        sample_bytes(self, h)

    def content(self, h) -> None:
        h.update(f"{len(self)}\n".encode())
        sample_bytes(self, h)


def sample_bytes(split, h) -> None:
    """The encoded bytes (`split.raw`) of a few images spread over the split, into `h`."""
    spread = np.linspace(0, len(split) - 1, IDENTITY_SAMPLES) if len(split) else []
    for index in np.unique(np.asarray(spread, dtype=int)):
        h.update(split.raw(int(index)))


def class_list(named: list[str] | None, splits: dict, location: str, namer: str) -> list[str]:
    """A sharded source's classes: the names its files give (`namer` says which file),
    refused if a label lies past them, else the label ids 0…max."""
    count = max(int(s.labels.max(initial=-1)) for s in splits.values()) + 1
    if named is not None and count > len(named):
        raise DataError(f"{location}: label {count - 1} but {namer} names {len(named)} classes")
    return named or [str(c) for c in range(count)]
