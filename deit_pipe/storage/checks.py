"""Whether a store can serve a run, and whether what it holds is what was written: the
dataset, recipe and epochs a run needs (`check_run`), each done shard's checksums
(`shard_problems`) and the Parquet files its metadata records. A part of `TargetStore`
(it uses the store's `url`, `spec`, `meta` and reads), kept apart so each reads on a screen.
"""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from deit_pipe.errors import StoreCorruptError, StoreIncompleteError, StoreMismatchError
from deit_pipe.storage.ensemble import teacher_choice
from deit_pipe.storage.format import (
    CHECKSUM,
    FILES,
    MANIFEST,
    SKIPPED,
    file_checksum,
    shard_checksum,
)
from deit_pipe.storage.seal import ShardProblem, split_salt

log = logging.getLogger(__name__)


class StoreChecks:
    """`TargetStore`'s checks: what a run needs of it, and proof of what it holds."""

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
            from deit_pipe.data.sources.identity import dataset_problem

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
        if done is None:
            done = self._done_row_of(split, epoch, prefix)
        sums = self._read(split, CHECKSUM, epoch, prefix)
        salt = self._salt(split, prefix)
        length, views = self.spec.layout(split)[0], self.spec.views(split)
        where = f"{prefix}{split}"
        if arrays is None:
            try:  # the epoch in one read; shard by shard only where a chunk fails to decode
                arrays = self.read_arrays(epoch, split, prefix)
            except StoreCorruptError:
                arrays = None
        problems = []
        for shard in (int(s) for s in np.flatnonzero(done)):
            rows = slice(shard * length, min((shard + 1) * length, views))
            for a, name in enumerate(self.spec.arrays):
                try:  # shard by shard: a chunk that fails to decode names its own shard
                    data = (
                        arrays[name][rows]
                        if arrays
                        else self._read(split, name, (epoch, rows), prefix)
                    )
                except StoreCorruptError as exc:
                    why = str(exc).rpartition("): ")[2].split(";")[0]
                    problems.append(ShardProblem(self.url, where, epoch, shard, name, why))
                    continue
                if shard_checksum(data, salt) != sums[shard, a]:
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
        fs, base = self.place.fs, self.place.base
        with self.place.errors():
            if not fs.exists(f"{base}/{key}"):
                return f"its chunk file {key} is missing"
        return "its bytes differ from the checksum"

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
        fs, base = self.place.fs, self.place.base
        recorded = (self.meta.get(FILES) or {}).get(name)
        try:
            with self.place.errors():
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
