"""Read a target store: open it, check it serves a run, load epoch slices (with prefetch).

The parts a reader needs live beside it: `epoch.py` (an epoch's targets in memory and the
soft/hard targets from them), `done.py` (which shards are done), `seal.py` (what proves a
teacher's arrays are its own and as written) and `follow.py` (a store still being filled).

Training reads a whole epoch slice into memory (random per-row gathers from zarr are
17× slower even for sorted rows, BENCHMARKS.md) and a background thread loads the next
epoch while this one trains.
"""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from deit_pipe.errors import (
    StoreCorruptError,
    StoreError,
    StoreIncompleteError,
    StoreNotFoundError,
)
from deit_pipe.place import Place
from deit_pipe.storage.checks import StoreChecks
from deit_pipe.storage.done import DoneFlagError, Progress, read_done, read_progress
from deit_pipe.storage.ensemble import EnsembleTargets, choose_teachers
from deit_pipe.storage.epoch import EpochTargets, StoredTargets
from deit_pipe.storage.follow import FollowStore
from deit_pipe.storage.io import open_store
from deit_pipe.storage.seal import split_salt

log = logging.getLogger(__name__)


class TargetStore(StoreChecks, FollowStore):
    """A store opened for reading. Validate with `check_run` before training on it."""

    def __init__(self, place: Place | str, *, teacher: str | None = None, partial: bool = False):
        """`partial` (inspect's): a split group missing an array opens, named in
        `self.missing` (its group → the line) and left unread, instead of refusing."""
        self.place = Place.of(place)
        self.url = url = self.place.url
        self.missing: dict[str, str] = {}
        self.group, self.meta, self.spec = open_store(
            self.place, "r", self.missing if partial else None
        )
        # The teacher(s) read: one by name, or an ensemble "A,B" / "A=0.7,B=0.3".
        self.teachers = choose_teachers(teacher, self.spec.teacher_names, url)
        self.prefix = self.spec.prefix(next(iter(self.teachers)))
        self._salts = {  # each teacher read must hold its own arrays (their seals)
            (self.spec.prefix(t), s): split_salt(self.group, self.spec, url, t, s)
            for t in self.teachers
            for s in self.spec.splits
            if self.spec.prefix(t) + s not in self.missing
        }
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="store-prefetch")
        self._pending: dict[tuple[str, int], Future] = {}
        self._cycle_noted = False

    def _require_split(self, split: str) -> None:
        if split not in self.spec.splits:
            hint = " (make it with `deit-pipe precompute --split val`)" if split == "val" else ""
            raise StoreIncompleteError(f"{self.url} has no {split}/ split{hint}")

    def progress(self) -> Progress:
        """Which shards of every split are done, read once."""
        return read_progress(self.group, self.spec, self.url, *self._prefixes())

    def _prefixes(self) -> list[str]:
        return [self.spec.prefix(t) for t in self.teachers]

    def _done_row(self, split: str, epoch: int) -> np.ndarray:
        """Epoch `epoch`'s done flags: done for every teacher read."""
        rows = [self._done_row_of(split, epoch, p) for p in self._prefixes()]
        return np.logical_and.reduce(rows)

    def _done_row_of(self, split: str, epoch: int, prefix: str) -> np.ndarray:
        """One teacher's done flags of `epoch`; a damaged flag is a `DoneFlagError`."""
        try:
            with self.place.errors():
                done, damaged = read_done(self.group, prefix + split, slice(epoch, epoch + 1))
        except StoreError:
            raise
        except Exception:  # the group is gone: `_read` names a moved store in one line
            return self._read(split, "done", epoch, prefix)
        if damaged:
            raise DoneFlagError(self.url, damaged)
        return done[0]

    def read_epoch(self, epoch: int, split: str = "train") -> StoredTargets:
        """Load one whole epoch slice (of each teacher read); refuses an epoch with shards not
        marked done, or whose bytes differ from their write-time checksums."""
        self._require_split(split)
        done = self._done_row(split, epoch)
        if not done.all():
            raise StoreIncompleteError(
                f"{self.url} {split} epoch {epoch} has unfinished shards "
                f"{np.flatnonzero(~done).tolist()[:5]}; re-run precompute to finish them"
            )
        members = []
        for prefix in self._prefixes():
            arrays = self.read_arrays(epoch, split, prefix)
            problems = self.shard_problems(split, epoch, arrays, done, prefix)
            if problems:
                raise StoreCorruptError(str(problems[0]))
            members.append(
                EpochTargets(
                    epoch=epoch,
                    values=arrays.get("topk_values"),
                    indices=arrays["topk_indices"],
                    lse=arrays.get("logsumexp"),
                    fingerprint=arrays["fingerprint"],
                    temperatures=self.spec.temperatures,
                    num_classes=self.spec.num_classes,
                )
            )
        if len(members) == 1:
            return members[0]
        return EnsembleTargets.of(members, list(self.teachers.values()), self.url)

    def read_arrays(
        self, epoch: int, split: str = "train", prefix: str | None = None
    ) -> dict[str, np.ndarray]:
        """Every stored array of one epoch (of the first teacher read, or the one whose
        arrays live at `prefix`), unchecked (rows of unfinished shards are zero): pair with
        `shard_problems` before trusting a value."""
        self._require_split(split)
        return {name: self._read(split, name, epoch, prefix) for name in self.spec.arrays}

    def done_times(self, split: str = "train") -> np.ndarray:
        """[E, S] Unix time each shard completed (0 where not done)."""
        self._require_split(split)
        times = [
            self._read(split, "done_at", slice(0, self.spec.split_epochs(split)), p)
            for p in self._prefixes()
        ]
        return np.maximum.reduce(times)

    def epoch(self, epoch: int, split: str = "train", prefetch: int | None = None) -> StoredTargets:
        """`read_epoch`, served from the prefetch thread when ready; then prefetch `prefetch`
        if all its shards are done (an epoch still being filled is read when it is)."""
        future = self._pending.pop((split, epoch), None)
        result = future.result() if future is not None else self.read_epoch(epoch, split)
        if prefetch is not None and (
            prefetch >= self.spec.split_epochs(split)  # not (yet) in a growing store
            or not self._done_row(split, prefetch).all()
        ):
            return result
        if prefetch is not None and (split, prefetch) not in self._pending:
            self._pending[(split, prefetch)] = self._prefetcher.submit(
                self.read_epoch, prefetch, split
            )
        return result

    def _read(self, split: str, name: str, index, prefix: str | None = None) -> np.ndarray:
        prefix = self.prefix if prefix is None else prefix
        try:
            with self.place.errors():
                return np.asarray(self.group[prefix + split][name][index])
        except StoreError:
            raise
        except Exception as exc:  # zarr raises ValueError/RuntimeError on bad checksums or codecs
            if self._gone():  # a moved store fails its reads too: not a damaged one
                raise StoreNotFoundError(
                    f"{self.url} was moved or removed while this job read it (its zarr.json is "
                    "gone): put it back, or point --store at where it is now"
                ) from None
            # the array's own path: teachers/B/train/… for a second teacher's damage
            raise StoreCorruptError(
                f"corrupted data in {self.url}/{prefix}{split}/{name} (epoch "
                f"{index[0] if isinstance(index, tuple) else index}): {_chunk_failure(exc)}"
            ) from None

    def _gone(self) -> bool:
        """Whether the store's root metadata is no longer where it was opened."""
        fs, base = self.place.fs, self.place.base
        try:
            return not fs.exists(f"{base}/zarr.json")
        except Exception:  # an unreachable backend says nothing about where the store is
            return False

    def close(self) -> None:
        self._prefetcher.shutdown(wait=False, cancel_futures=True)


def _chunk_failure(exc: Exception) -> str:
    """Zarr's failure on a chunk in words (its message holds the raw checksum bytes)."""
    text = str(exc)
    if "checksum" in text.lower():
        return "a chunk fails its crc32c checksum; rerun the precompute command with --repair"
    return " ".join(text.split())[:200]
