"""Read a target store: validate it for a run, load epoch slices, build soft/hard targets.

Training reads a whole epoch slice into memory (random per-row gathers from zarr are
17× slower even for sorted rows, BENCHMARKS.md) and a background thread loads the next
epoch while this one trains.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from deit_pipe.errors import (
    StoreCorruptError,
    StoreError,
    StoreIncompleteError,
    StoreMismatchError,
    StoreNotFoundError,
)
from deit_pipe.storage.ensemble import EnsembleTargets, choose_teachers, teacher_choice
from deit_pipe.storage.format import (
    CHECKSUM,
    FILES,
    MANIFEST,
    SEAL,
    SKIPPED,
    file_checksum,
    seal_salt,
    shard_checksum,
    teacher_seal,
)
from deit_pipe.storage.io import file_system, open_store, storage_errors

log = logging.getLogger(__name__)


@dataclass
class EpochTargets:
    """One epoch slice of a split, in memory."""

    epoch: int
    values: np.ndarray | None  # [V, k] stored dtype, sorted descending (None: hard store)
    indices: np.ndarray  # [V, k] uint16|uint32
    lse: np.ndarray | None  # [V, T] float32 (None: hard store)
    fingerprint: np.ndarray  # [V] uint64
    temperatures: tuple[float, ...]
    num_classes: int

    def __len__(self) -> int:
        return len(self.fingerprint)

    def _tau_index(self, tau: float) -> int:
        for i, t in enumerate(self.temperatures):
            if abs(t - tau) < 1e-9:
                return i
        stored = ", ".join(f"{t:g}" for t in self.temperatures)
        raise StoreMismatchError(
            f"temperature τ={tau:g} is not stored (store has τ = {stored}); "
            "precompute with --temperatures including it"
        )

    def topk_probs(self, slots: np.ndarray, tau: float) -> np.ndarray:
        """p(c) = exp(z_c/τ − logsumexp(z/τ)) for the k stored classes, float64 [n, k]."""
        if self.values is None:
            raise StoreMismatchError(
                "this store holds the teacher's top-1 class only (precompute --targets hard): "
                "train with --distill hard or none, or precompute soft targets"
            )
        z = self.values[slots].astype(np.float64)
        lse = self.lse[slots, self._tau_index(tau)].astype(np.float64)
        return np.exp(z / tau - lse[:, None])

    def soft_parts(
        self, slots: np.ndarray, tau: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(top-k probabilities, their class ids, tail mass): what `dense_soft` needs, k + k + 1
        numbers a view instead of C, so a trainer can build the dense targets on its device."""
        slots = np.asarray(slots)
        top = self.topk_probs(slots, tau)
        tail = np.clip(1.0 - top.sum(axis=1), 0.0, 1.0)
        return (
            torch.from_numpy(top.astype(np.float32)),
            torch.from_numpy(self.indices[slots].astype(np.int64)),
            torch.from_numpy(tail.astype(np.float32)),
        )

    def soft(self, slots: np.ndarray, tau: float) -> torch.Tensor:
        """Dense teacher distribution: exact on the top-k, the exact tail mass spread evenly."""
        return dense_soft(*self.soft_parts(slots, tau), self.num_classes)

    def hard(self, slots: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.indices[np.asarray(slots), 0].astype(np.int64))

    def topk_mass(self, tau: float = 1.0) -> np.ndarray:
        """Probability mass the stored top-k capture, per view."""
        return self.topk_probs(np.arange(len(self)), tau).sum(axis=1)


@dataclass(frozen=True)
class Progress:
    """Which shards are done, per split: one snapshot of each split's `done` flags (on an
    object store, one request per (epoch, shard) cell, so read it once and ask it)."""

    done: dict[str, np.ndarray]  # split → [E, S] bool
    # split → (array path, epoch, shard) of done flags whose chunk does not decode (read as
    # not done); only a tolerant read (`--repair`) returns any
    damaged: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)

    def missing(self, split: str = "train") -> list[tuple[int, int]]:
        """(epoch, shard) not done."""
        return [(int(e), int(s)) for e, s in np.argwhere(~self.done[split])]

    def complete_epochs(self, split: str = "train") -> list[int]:
        return [int(e) for e in np.flatnonzero(self.done[split].all(axis=1))]


class DoneFlagError(StoreCorruptError):
    """A shard's `done` flag chunk does not decode: `precompute --repair` rebuilds it."""

    def __init__(self, url: str, damaged: list[tuple[str, int, int]]):
        where, epoch, shard = damaged[0]
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        super().__init__(
            f"{url}: the done flag of {where} epoch {epoch} shard {shard} is damaged (its chunk "
            f"{where}/done/c/{epoch}/{shard} fails its checksum){more}; rerun the precompute "
            "command with --repair: it rebuilds the flags from the shards' checksums"
        )
        self.damaged = damaged


def read_done(group, where: str, epochs: slice) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """The `done` flags of `epochs` of the split group at `where` (`teachers/B/train`), and
    the (where, epoch, shard) cells whose chunk does not decode, read as not done. One read
    of the rows; cell by cell only when that fails."""
    flags = group[where]["done"]
    try:
        return np.asarray(flags[epochs]), []
    except StoreError:
        raise
    except Exception:  # zarr raises ValueError/RuntimeError on a bad checksum or codec
        rows = range(*epochs.indices(flags.shape[0]))
        done, damaged = np.zeros((len(rows), flags.shape[1]), bool), []
        for i, e in enumerate(rows):
            for s in range(flags.shape[1]):
                try:
                    done[i, s] = bool(flags[e, s])
                except StoreError:
                    raise
                except Exception:
                    damaged.append((where, e, s))
        return done, damaged


def read_progress(group, spec, url: str, *prefixes: str, tolerant: bool = False) -> Progress:
    """The `done` flags of the epochs the metadata holds (a growing store's arrays may
    already hold more): of one teacher's arrays (`prefixes`: where they live), or of
    several (a shard is done when it is done for each). A damaged flag is a `DoneFlagError`
    naming it, unless `tolerant` (`--repair`): then it reads as not done and is listed."""
    done, damaged = {}, {}
    with storage_errors(url):
        for s in spec.splits:
            rows = [read_done(group, p + s, slice(0, spec.split_epochs(s))) for p in prefixes]
            done[s] = np.logical_and.reduce([r[0] for r in rows])
            damaged[s] = [cell for r in rows for cell in r[1]]
    bad = [cell for cells in damaged.values() for cell in cells]
    if bad and not tolerant:
        raise DoneFlagError(url, bad)
    return Progress(done, damaged)


class TeacherSealError(StoreCorruptError):
    """A teacher's split group holds arrays sealed for another teacher (copied there)."""


def split_salt(group, spec, url: str, teacher: str, split: str) -> int:
    """The checksum salt of `teacher`'s `split` arrays, from the group's seal, which must be
    this teacher's as the metadata describes it; 0 for a group made before seals."""
    where = spec.prefix(teacher) + split
    with storage_errors(url):
        seal = group[where].attrs.get(SEAL)
    if seal is None:  # made before seals: the teacher is unproved, as it always was
        return 0
    expected = teacher_seal(teacher, spec.teacher_info(teacher))
    if not isinstance(seal, dict) or seal != expected:
        held = seal.get("name") if isinstance(seal, dict) else seal
        whose = (
            f"another teacher named {held!r} (other provenance)"
            if held == teacher
            else f"teacher {held!r}"
        )
        raise TeacherSealError(
            f"{url}: {where} holds the arrays of {whose}, not of {teacher!r}: they were copied "
            f"there; put {teacher}'s own arrays back, or precompute the store again with "
            "--overwrite"
        )
    return seal_salt(seal)


@dataclass(frozen=True)
class ShardProblem:
    """A shard marked done whose array no longer matches its write-time checksum."""

    url: str
    split: str
    epoch: int
    shard: int
    array: str
    why: str

    def __str__(self) -> str:
        return (
            f"{self.url}: {self.split}/{self.array} epoch {self.epoch} shard {self.shard} is "
            f"not what was written ({self.why}); its values cannot be trusted: recompute it "
            "with the precompute command plus --repair"
        )


def dense_soft(
    top: torch.Tensor, indices: torch.Tensor, tail: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """[n, C] distribution from `EpochTargets.soft_parts`, on the inputs' device."""
    k = top.shape[1]
    fill = tail / max(num_classes - k, 1) if num_classes > k else torch.zeros_like(tail)
    dense = fill[:, None].expand(len(top), num_classes).contiguous()
    return dense.scatter_(1, indices, top)


class TargetStore:
    """A store opened for reading. Validate with `check_run` before training on it."""

    def __init__(self, url: str, storage_options: dict | None = None, teacher: str | None = None):
        self.url, self.storage_options = url, storage_options
        self.group, self.meta, self.spec = open_store(url, "r", storage_options)
        # The teacher(s) read: one by name, or an ensemble "A,B" / "A=0.7,B=0.3".
        self.teachers = choose_teachers(teacher, self.spec.teacher_names, url)
        self.prefix = self.spec.prefix(next(iter(self.teachers)))
        self._salts = {  # each teacher read must hold its own arrays (their seals)
            (self.spec.prefix(t), s): split_salt(self.group, self.spec, url, t, s)
            for t in self.teachers
            for s in self.spec.splits
        }
        self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix="store-prefetch")
        self._pending: dict[tuple[str, int], Future] = {}
        self._cycle_noted = False

    @property
    def identity(self) -> dict:
        """What a run records to tie itself to this store (and to its teacher or teachers)."""
        shas = [self.spec.teacher_info(t).get("checkpoint_sha256") for t in self.teachers]
        return {
            "url": self.url,
            "created": self.meta["created"],
            "dataset_fingerprint": self.spec.dataset["fingerprint"],
            "teacher": teacher_choice(self.teachers),
            "teacher_checkpoint_sha256": shas[0] if len(shas) == 1 else shas,
        }

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
            with storage_errors(self.url):
                done, damaged = read_done(self.group, prefix + split, slice(epoch, epoch + 1))
        except StoreError:
            raise
        except Exception:  # the group is gone: `_read` names a moved store in one line
            return self._read(split, "done", epoch, prefix)
        if damaged:
            raise DoneFlagError(self.url, damaged)
        return done[0]

    def check_run(
        self,
        *,
        source=None,
        recipe: dict | None = None,
        epochs: int | None = None,
        cycle_epochs: bool = False,
        follow: bool = False,
    ) -> None:
        """Refuse, with one line naming what differs, a store that cannot serve this run.

        With `follow`, epochs still being filled, or not yet added by a job extending the
        store, are accepted (the run waits for them)."""
        if source is not None:  # a data.Source: the same images, and the same blocks
            from deit_pipe.data.identity import dataset_problem

            problem = dataset_problem(self.spec.dataset, source, self.url)
            if problem:
                raise StoreMismatchError(problem)
        if recipe is not None:
            differ = [
                k
                for k in sorted(set(recipe) | set(self.spec.recipe))
                if recipe.get(k) != self.spec.recipe.get(k)
            ]
            if differ:
                k = differ[0]
                raise StoreMismatchError(
                    f"{self.url} recipe differs from this run's in {', '.join(differ)}: "
                    f"{k} = {self.spec.recipe.get(k)!r} in the store, {recipe.get(k)!r} here"
                )
        stored = self.spec.epochs
        if epochs is not None and epochs > stored and not (cycle_epochs or follow):
            raise StoreIncompleteError(
                f"{self.url} holds {stored} training epochs but this run needs {epochs}; "
                f"precompute more or pass --cycle-epochs to reuse epoch e mod {stored}"
            )
        if follow:
            return
        needed = range(min(epochs if epochs is not None else stored, stored))
        self._require_split("train")
        done = self.progress().done["train"]
        for e in needed:
            if not done[e].all():
                missing = np.flatnonzero(~done[e])
                raise StoreIncompleteError(
                    f"{self.url} epoch {e} is incomplete: {len(missing)} of {done.shape[1]} "
                    f"shards missing (first: {missing[0]}); re-run precompute to finish it"
                )

    def stored_epoch(self, epoch: int, cycle_epochs: bool = False) -> int:
        """The stored epoch that serves training epoch `epoch`."""
        stored = self.spec.epochs
        if epoch < stored:
            return epoch
        if not cycle_epochs:
            raise StoreIncompleteError(
                f"{self.url} has no epoch {epoch} (holds {stored}); "
                "pass --cycle-epochs to reuse epoch e mod E"
            )
        if not self._cycle_noted:  # once per run, not per epoch
            self._cycle_noted = True
            msg = "training epochs %d and on replay stored epoch e mod %d (--cycle-epochs)"
            log.warning(msg, stored, stored)
        return epoch % stored

    def read_epoch(self, epoch: int, split: str = "train") -> EpochTargets | EnsembleTargets:
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

    def shard_problems(
        self,
        split: str,
        epoch: int,
        arrays: dict[str, np.ndarray] | None = None,
        done: np.ndarray | None = None,
        prefix: str | None = None,
    ) -> list[ShardProblem]:
        """One per (shard marked done, array) of `epoch` whose bytes differ from the
        checksum recorded when it was written: a lost chunk reads as Zarr's fill value, which
        only this record tells from data. `arrays`, `done`: the epoch's, if already read."""
        self._require_split(split)
        prefix = self.prefix if prefix is None else prefix
        if arrays is None:
            arrays = self.read_arrays(epoch, split, prefix)
        if done is None:
            done = self._done_row_of(split, epoch, prefix)
        sums = self._read(split, CHECKSUM, epoch, prefix)
        salt = self._salt(split, prefix)
        length, views = self.spec.layout(split)[0], self.spec.views(split)
        problems = []
        for shard in (int(s) for s in np.flatnonzero(done)):
            rows = slice(shard * length, min((shard + 1) * length, views))
            for a, name in enumerate(self.spec.arrays):
                if shard_checksum(arrays[name][rows], salt) != sums[shard, a]:
                    where = f"{prefix}{split}"
                    why = self._why_differs(where, name, epoch, shard, int(sums[shard, a]))
                    problems.append(ShardProblem(self.url, where, epoch, shard, name, why))
        return problems

    def _salt(self, split: str, prefix: str) -> int:
        """The checksum salt of the teacher at `prefix` (checked once: `split_salt`)."""
        if (prefix, split) not in self._salts:
            teacher = next(t for t in self.spec.teacher_names if self.spec.prefix(t) == prefix)
            self._salts[prefix, split] = split_salt(self.group, self.spec, self.url, teacher, split)
        return self._salts[prefix, split]

    def _why_differs(self, split: str, name: str, epoch: int, shard: int, recorded: int) -> str:
        if recorded == 0:
            return "its checksum record is missing"
        key = f"{split}/{name}/c/{epoch}/{shard}" + ("" if name == "fingerprint" else "/0")
        fs, base = file_system(self.url, self.storage_options)
        with storage_errors(self.url):
            if not fs.exists(f"{base}/{key}"):
                return f"its chunk file {key} is missing"
        return "its bytes differ from the checksum"

    def done_times(self, split: str = "train") -> np.ndarray:
        """[E, S] Unix time each shard completed (0 where not done)."""
        self._require_split(split)
        times = [
            self._read(split, "done_at", slice(0, self.spec.split_epochs(split)), p)
            for p in self._prefixes()
        ]
        return np.maximum.reduce(times)

    def wait_for_epoch(
        self,
        epoch: int,
        split: str = "train",
        *,
        stall_timeout: float = 1800.0,
        poll: float = 2.0,
        on_wait: Callable[[int, int, int], None] | None = None,
    ) -> None:
        """Block until every shard of `epoch` is done, polling only its `done` row.

        Gives up when no further shard completes for `stall_timeout` seconds (the teacher
        stopped), with the counts and how to continue; `on_wait(epoch, done, total)` is
        called at each poll while waiting.
        """
        last_count, last_change = -1, time.monotonic()
        while True:
            if epoch >= self.spec.split_epochs(split):
                self.refresh()  # another job may be extending the store to this epoch
            grown = epoch < self.spec.split_epochs(split)
            done = self._done_row(split, epoch) if grown else np.zeros(0, bool)
            count = int(done.sum()) if grown else -1
            if grown and count == len(done):
                return
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > stall_timeout:
                state = f"{count}/{len(done)} done" if grown else "not in the store yet"
                raise StoreIncompleteError(
                    f"{self.url} {split} epoch {epoch}: no shard completed for "
                    f"{stall_timeout:g} s ({state}); is the precompute "
                    "running? Restart it, then continue with --resume --follow"
                )
            if on_wait:
                on_wait(epoch, max(count, 0), len(done))
            time.sleep(poll)

    def refresh(self) -> None:
        """Re-read the metadata of a store that other jobs are extending (more epochs, a new
        split); a store replaced by another job meanwhile is refused."""
        group, meta, spec = open_store(self.url, "r", self.storage_options)
        if meta["created"] != self.meta["created"]:
            raise StoreMismatchError(
                f"{self.url} was replaced by another job (created {meta['created']}) while "
                "this run read it"
            )
        self.group, self.meta, self.spec = group, meta, spec

    def epoch(self, epoch: int, split: str = "train", prefetch: int | None = None) -> EpochTargets:
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
            with storage_errors(self.url):
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
                f"corrupted data in {self.url}/{prefix}{split}/{name} (epoch {index}): {exc}"
            ) from None

    def _gone(self) -> bool:
        """Whether the store's root metadata is no longer where it was opened."""
        fs, base = file_system(self.url, self.storage_options)
        try:
            return not fs.exists(f"{base}/zarr.json")
        except Exception:  # an unreachable backend says nothing about where the store is
            return False

    def manifest(self) -> pa.Table:
        return self._parquet(MANIFEST)

    def skipped(self) -> pa.Table:
        return self._parquet(SKIPPED)

    def check_files(self) -> None:
        """Refuse, in one line, a manifest or skipped-files table that is not the one this
        store's metadata records (another dataset's, edited labels); a store made before
        those records is read as it always was."""
        for name in self.meta.get(FILES) or {}:
            self._parquet(name)

    def _parquet(self, name: str) -> pa.Table:
        fs, base = file_system(self.url, self.storage_options)
        recorded = (self.meta.get(FILES) or {}).get(name)
        try:
            with storage_errors(self.url):
                data = fs.cat_file(f"{base}/{name}")
            table = pq.read_table(pa.BufferReader(data))  # one that does not parse: damaged
            if recorded is not None and file_checksum(data) != recorded:
                raise StoreCorruptError(
                    f"{self.url}/{name} is not the one this store was written with (its "
                    "sha256 differs from the store's record: another dataset's, or edited); "
                    "restore it, or run the precompute command again to rewrite it"
                )
            return table
        except FileNotFoundError:
            raise StoreIncompleteError(
                f"{self.url} has no {name}; run the precompute command again to write it"
            ) from None
        except (pa.ArrowException, OSError) as exc:
            reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
            raise StoreCorruptError(
                f"{self.url}/{name} is damaged ({reason}); run the precompute command again "
                "to rewrite it"
            ) from None

    def close(self) -> None:
        self._prefetcher.shutdown(wait=False, cancel_futures=True)
