"""A target store as a training loop opens it (`deit_pipe.open_store`): what it describes —
the dataset, the recipe, the epochs, the teachers, the classes, the schedule its preset
trains with — and the dataset its views replay from, checked against the store.

`deit-pipe train` opens its store here too, so a user's loop and the CLI refuse the same
stores with the same lines.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from deit_pipe.data import Source, open_source
from deit_pipe.data.plan.recipe import Recipe, Schedule, schedule_of
from deit_pipe.data.sources.cache import DataCache
from deit_pipe.place import Place
from deit_pipe.storage import TargetStore

log = logging.getLogger(__name__)


class Store:
    """A target store opened for reading: the teacher's targets for every view of its plan.

    Args:
        targets: the opened `TargetStore` (one teacher, or an ensemble `A,B`).
    """

    def __init__(self, targets: TargetStore):
        self.targets = targets
        # Facts fixed when the store is opened (a store another job replaces is refused, not
        # re-read): plain attributes. What grows while it is filled (epochs, teachers) stays
        # a property that reads the current metadata.
        self.url: str = targets.url
        """Where the store lives (a path or an fsspec URL)."""
        self.dataset: str = targets.spec.dataset["spec"]
        """The dataset spec the store was made from (`digits`, `parquet:s3://…`, …)."""
        self.teacher: str = ",".join(targets.teachers)
        """The teacher (or ensemble, `A,B`) this handle reads."""

    @property
    def recipe(self) -> Recipe:
        """Everything that decides the views: their size, augmentation, mixing and plan seed."""
        return Recipe.from_dict(self.targets.spec.recipe)

    @property
    def epochs(self) -> int:
        """How many training epochs of views and targets the store holds."""
        return self.targets.spec.epochs

    @property
    def teachers(self) -> list[str]:
        """The names of every teacher the store holds (the first is the default)."""
        return list(self.targets.spec.teacher_names)

    @property
    def classes(self) -> list[str]:
        """Class names, by label id."""
        return list(self.targets.spec.dataset["classes"])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def kind(self) -> str:
        """`soft` (top-k logits and log-sum-exp) or `hard` (the teacher's top-1 class only)."""
        return self.targets.spec.targets

    @property
    def top_k(self) -> int:
        """Classes stored per view (soft stores)."""
        return self.targets.spec.k

    @property
    def schedule(self) -> Schedule:
        """The optimisation defaults of the store's recipe preset (lr per 512 images, warmup,
        weight decay, drop-path, label smoothing, epochs): `deit-pipe train`'s defaults."""
        return schedule_of(self.recipe.name)

    def open_data(
        self,
        data: str | None = None,
        *,
        data_options: dict | None = None,
        data_cache: str | os.PathLike | DataCache | None = None,
        data_cache_size: int | None = None,
    ) -> Source:
        """The dataset the store's views replay from, checked against the store.

        Args:
            data: a dataset spec holding the same images (another path or layout); default:
                the one the store was made from.
            data_options: fsspec options for a dataset behind a URL.
            data_cache: a folder for local copies of a remote dataset's files (or a
                `DataCache`); `data_cache_size` caps it in bytes.

        Returns:
            The `Source`, its skipped files (`precompute --skip-bad`) left out as the teacher
            left them out.

        Raises:
            StoreMismatchError: the dataset is not the one the store was made from.
        """
        self.targets.check_files()
        made_from = self.dataset
        if data and data != made_from:
            log.info("dataset %s given; the store was made from %s", data, made_from)
        skip = {r["path"]: r["reason"] for r in self.targets.skipped().to_pylist()}
        cache = DataCache.of(data_cache, data_cache_size)
        source = open_source(
            data or made_from, skip=skip, data_options=data_options, data_cache=cache
        )
        self.targets.check_run(source=source, recipe=None, follow=True)
        return source

    def close(self) -> None:
        """Stop the background reader (the store closes with the process too)."""
        self.targets.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Store({self.url!r}, dataset={self.dataset!r}, epochs={self.epochs}, "
            f"teacher={self.teacher!r}, kind={self.kind!r})"
        )


def open_store(
    url: str | os.PathLike,
    *,
    storage_options: dict | None = None,
    teacher: str | None = None,
) -> Store:
    """Open a target store for reading.

    Args:
        url: the store's path or fsspec URL (`s3://bucket/store.zarr`, …).
        storage_options: fsspec options for a URL (credentials, endpoint).
        teacher: which teacher to read, or an ensemble (`A,B` or `A=0.7,B=0.3`); default:
            the store's first.

    Returns:
        A `Store`: what the store describes, and `open_data()` for its dataset.

    Raises:
        StoreError: not a deit-pipe store, damaged, or unreachable (one line naming it).
    """
    text = str(url) if isinstance(url, Path) else os.fspath(url)
    return Store(TargetStore(Place(text, storage_options), teacher=teacher))
