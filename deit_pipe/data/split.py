"""One split of a dataset: images by index, labels, and what identifies its content."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod

import numpy as np
from PIL import Image

from deit_pipe.data.files import Root, decode_image
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


class ShardSplit(Split):
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
        self._pid = -1
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
        for index in np.unique(np.linspace(0, len(self) - 1, IDENTITY_SAMPLES).astype(int)):
            if len(self):
                h.update(self.raw(int(index)))

    def _fresh(self) -> bool:
        """Whether this process must open its own state (first use, or after a fork)."""
        if self._pid == os.getpid():
            return False
        self._pid = os.getpid()
        return True

    def __getstate__(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items() if not k.startswith("_")}, "_pid": -1}
