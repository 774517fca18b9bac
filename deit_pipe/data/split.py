"""One split of a dataset: images by index, labels, and what identifies its content."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from PIL import Image

from deit_pipe.data.files import PerProcess, Root, decode_image
from deit_pipe.errors import DataError

IDENTITY_SAMPLES = 8  # encoded images hashed into a sharded split's identity (see `identity`)


class Split(ABC):
    """One split of a source: `len`, `labels`, `load(i)` → RGB PIL image."""

    labels: np.ndarray
    paths: list[str] | None = None  # names of the samples (relative paths, SHARD:KEY)
    sizes: list[int] | None = None  # encoded bytes per sample, where known without reading

    def __len__(self) -> int:
        return len(self.labels)

    @abstractmethod
    def load(self, index: int) -> Image.Image: ...

    @abstractmethod
    def identity(self, h) -> None:
        """Feed what identifies this split's images (beyond its labels) into hash `h`."""


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

    def load(self, index: int) -> Image.Image:
        return decode_image(self.raw(index), f"{self.root.location}/{self.paths[index]}")

    def identity(self, h) -> None:
        """The sample count, sizes where known, and the bytes of a few images spread over the
        split: the same images in the same order anywhere (another folder, a bucket) are the
        same dataset. A changed image the sample misses is still caught, view by view, by
        the replay's fingerprints."""
        h.update(f"{len(self)}\n".encode())
        if self.sizes is not None:
            h.update(np.asarray(self.sizes, dtype=np.int64).tobytes())
        spread = np.linspace(0, len(self) - 1, IDENTITY_SAMPLES) if len(self) else []
        for index in np.unique(np.asarray(spread, dtype=int)):
            h.update(self.raw(int(index)))


def class_list(named: list[str] | None, splits: dict, location: str, namer: str) -> list[str]:
    """A sharded source's classes: the names its files give (`namer` says which file),
    refused if a label lies past them, else the label ids 0…max."""
    count = max(int(s.labels.max(initial=-1)) for s in splits.values()) + 1
    if named is not None and count > len(named):
        raise DataError(f"{location}: label {count - 1} but {namer} names {len(named)} classes")
    return named or [str(c) for c in range(count)]
