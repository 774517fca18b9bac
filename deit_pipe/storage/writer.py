"""Create a target store and fill it one whole shard at a time.

A shard write touches only that shard's objects of each array and then its own `done`
cell, so concurrent writers of different shards are safe (zarr's partial-shard writes are
read-modify-write and would not be), and re-running a shard rewrites identical bytes.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from deit_pipe.data.sources.source import Source
from deit_pipe.errors import StoreCorruptError, StoreError, StoreFormatError, StoreMismatchError
from deit_pipe.place import Place
from deit_pipe.storage.done import Progress, read_progress
from deit_pipe.storage.format import (
    ATTR_KEY,
    CHECKSUM,
    CREATING_KEY,
    FILES,
    GROWING,
    MANIFEST,
    SEAL,
    SKIPPED,
    SPLITS,
    StoreSpec,
    compressors,
    file_checksum,
    job_identity,
    library_versions,
    meta_checksum,
    shard_checksum,
    teacher_name,
    teacher_seal,
)
from deit_pipe.storage.io import open_group, open_store, read_meta
from deit_pipe.storage.overwrite import (
    clear_store,
    probe,
    refuse_foreign,
    refuse_unusable,
    store_paths,
    write_root,
)
from deit_pipe.storage.seal import split_salt


class StoreWriter:
    """Writes shards of an existing store (see `create_store`)."""

    def __init__(self, place: Place | str, teacher: str | None = None):
        self.place = place = Place.of(place)
        self.url = url = place.url
        self.group, self.meta, self.spec = open_store(place, "r+")
        self.teacher = teacher or self.spec.teacher_names[0]
        if self.teacher not in self.spec.teacher_names:
            raise StoreError(f"{url} holds no teacher {self.teacher!r}")
        self.prefix = self.spec.prefix(self.teacher)  # where this teacher's arrays live
        self._salts: dict[str, int] = {}  # split → its seal's checksum salt

    def progress(self) -> Progress:
        """Which shards of every split are done (for this writer's teacher), read once."""
        return read_progress(self.group, self.spec, self.url, self.prefix)

    def mark_undone(self, split: str, epoch: int, shard: int) -> None:
        """Make a damaged shard pending again (its data is rewritten before it is done)."""
        with self.place.errors():
            self.group[self.prefix + split]["done"][epoch, shard] = False

    def mark_done(self, split: str, epoch: int, shard: int) -> None:
        """Rewrite the done flag of a shard whose chunks match their checksum records (a
        damaged flag's chunk: `--repair`)."""
        with self.place.errors():
            self.group[self.prefix + split]["done"][epoch, shard] = True

    def shard_range(self, split: str, shard: int) -> range:
        views, length = self.spec.views(split), self.spec.layout(split)[0]
        lo = shard * length
        if not 0 <= lo < views:
            raise StoreError(f"{split} has no shard {shard} (views {views})")
        return range(lo, min(lo + length, views))

    def write_shard(
        self,
        split: str,
        epoch: int,
        shard: int,
        values: np.ndarray | None,
        indices: np.ndarray,
        lse: np.ndarray | None,
        fingerprints: np.ndarray,
    ) -> int:
        """Write one whole shard of every array, then mark it done; returns views written.

        A hard-target store takes `indices` [n, 1] and `fingerprints`; `values`/`lse` None."""
        spec, rows = self.spec, self.shard_range(split, shard)
        if not 0 <= epoch < spec.split_epochs(split):
            raise StoreError(f"{split} has no epoch {epoch} (epochs {spec.split_epochs(split)})")
        n, k, t = len(rows), spec.k, len(spec.temperatures)
        expected = {
            "topk_values": (n, k),
            "topk_indices": (n, k),
            "logsumexp": (n, t),
            "fingerprint": (n,),
        }
        given = {
            "topk_values": values,
            "topk_indices": indices,
            "logsumexp": lse,
            "fingerprint": fingerprints,
        }
        arrays = {name: given[name] for name in spec.arrays}
        with self.place.errors():
            self._write(split, epoch, shard, rows, arrays, expected)
        return n

    def _write(self, split, epoch, shard, rows, arrays, expected) -> None:
        spec, group = self.spec, self.group[self.prefix + split]
        if split not in self._salts:  # refuses a group sealed for another teacher
            self._salts[split] = split_salt(self.group, spec, self.url, self.teacher, split)
        sums = []
        for name, data in arrays.items():
            data = np.asarray(data)
            if data.shape != expected[name]:
                raise StoreError(
                    f"{split}/{name} shard {shard}: shape {data.shape}, expected {expected[name]}"
                )
            target = group[name]
            if name == "topk_indices" and (data.min() < 0 or data.max() >= spec.num_classes):
                raise StoreError(f"{split}/{name} shard {shard}: class index out of range")
            stored = np.ascontiguousarray(data.astype(target.dtype, copy=False))
            try:
                target[epoch, rows.start : rows.stop] = stored
            except (ValueError, RuntimeError):
                # A short shard is written read-modify-write, and an unfinished earlier write
                # (this shard is not done) left bytes that do not decode: they are not data.
                self._remove_shard_object(split, name, epoch, shard)
                target[epoch, rows.start : rows.stop] = stored
            sums.append(shard_checksum(stored, self._salts[split]))
        group[CHECKSUM][epoch, shard] = np.array(sums, dtype=np.uint64)  # what a reader checks
        group["done_at"][epoch, shard] = time.time()
        group["done"][epoch, shard] = True  # last: a shard is done only once all is written

    def _remove_shard_object(self, split: str, name: str, epoch: int, shard: int) -> None:
        """Delete one not-done shard's object of one array (Zarr then reads it as empty)."""
        key = f"{self.prefix}{split}/{name}/c/{epoch}/{shard}" + (
            "" if name == "fingerprint" else "/0"
        )
        fs, path = self.place.fs, self.place.path(key)
        if fs.exists(path):
            fs.rm(path)


def create_store(place: Place | str, spec: StoreSpec, *, overwrite: bool = False) -> StoreWriter:
    """Create the store, reopen it to resume the same job, or grow it for this one.

    A store holding the same job with fewer training epochs, or without a split this job
    asks for, grows to hold both (`_grow`); one holding more is reopened as it is. A store is
    made only where nothing is, or in an empty directory; `overwrite` replaces a deit-pipe
    store holding another job, and nothing else (`storage.overwrite`). The caller holds the
    store's writer lock (`storage.overwrite.store_lock`) when other jobs may run.
    """
    meta = spec.to_meta(library_versions())
    place = Place.of(place)
    url = place.url
    found = probe(place)
    refuse_unusable(url, found)
    # With overwrite, `clear_store` below refuses anything deit-pipe did not write.
    if found.state == "store" and not overwrite:
        try:
            existing = read_meta(open_group(place, "r"), url)
        except StoreFormatError as exc:  # an old or edited store is never replaced silently
            raise StoreMismatchError(f"{exc}; pass --overwrite to replace it") from None
        except StoreCorruptError as exc:
            raise StoreCorruptError(f"{exc}; pass --overwrite to replace it") from None
        held = StoreSpec.from_meta(existing)
        _refuse_other_teacher_of_that_name(url, held, spec)
        union = _union(held, spec)
        differ = _differences(job_identity(existing), job_identity(union.to_meta({})))
        if any(not key.startswith(_GROWS) for key in differ):
            asked = _differences(job_identity(existing), job_identity(meta))
            raise StoreMismatchError(
                f"{url} holds a different job (differs in "
                f"{', '.join(k for k in asked if not k.startswith(_GROWS))}); "
                "pass --overwrite to replace it"
            )
        if differ:
            _grow(place, existing, union)
        return StoreWriter(place, teacher_name(spec.teacher))
    if found.state != "absent":
        clear_store(place)  # an empty folder, an interrupted creation, or --overwrite
    else:
        write_root(place, {CREATING_KEY: {"since": meta["created"]}})
    root = open_group(place, "r+")
    with place.errors():
        for split in spec.splits:
            _create_split(root, split, spec, spec.teacher_names[0])
    write_root(place, {ATTR_KEY: meta})  # last: the store exists from here on
    return StoreWriter(place, teacher_name(spec.teacher))


# What a store may gain without becoming another job: training epochs, splits, teachers.
_GROWS = ("plan.epochs", "splits", "dataset.num_samples.", "layout.", "more_teachers")


def _refuse_other_teacher_of_that_name(url: str, held: StoreSpec, asked: StoreSpec) -> None:
    name = teacher_name(asked.teacher)
    if name in held.teacher_names and held.teacher_info(name) != asked.teacher:
        theirs = held.teacher_info(name)
        raise StoreMismatchError(
            f"{url} holds another teacher named {name!r} ({theirs.get('name')}, checkpoint "
            f"{(theirs.get('checkpoint_sha256') or 'random init')[:12]}); add this one "
            "under another --teacher-name, or pass --overwrite to replace the store"
        )


def _union(held: StoreSpec, asked: StoreSpec) -> StoreSpec:
    """`asked`, holding also the epochs, splits and teachers `held` holds (its other fields
    decide whether the two are one job)."""
    splits = tuple(s for s in SPLITS if s in held.splits or s in asked.splits)
    samples = {**held.dataset["num_samples"], **asked.dataset["num_samples"]}
    name = teacher_name(asked.teacher)
    added = {} if name in held.teacher_names else {name: asked.teacher}
    dataset = {**asked.dataset, "num_samples": {s: samples[s] for s in splits}}
    if "content" not in held.dataset:  # made before content fingerprints: stays without
        dataset.pop("content", None)
    return replace(
        asked,
        teacher=held.teacher,
        more_teachers={**held.more_teachers, **added},
        epochs=max(held.epochs, asked.epochs),
        splits=splits,
        dataset=dataset,
    )


def _grow(place: Place, existing: dict, union: StoreSpec) -> None:
    """Give a store more training epochs and/or a new split without rewriting anything it
    holds (more epochs are new chunk objects). The metadata first says how far the store is
    growing, then the arrays grow, then the metadata is replaced: an interrupted growth is
    the store as it was, its arrays perhaps longer (as far as its metadata allows), which a
    rerun finishes."""
    held = StoreSpec.from_meta(existing)
    added = [t for t in union.teacher_names if t not in held.teacher_names]
    made = [  # (teacher, split) groups the growth creates: all of an added teacher's splits
        (t, split)
        for t in union.teacher_names
        for split in union.splits
        if t in added or split not in held.splits
    ]
    # Zarr's create_group(overwrite=True) empties what is there (an interrupted growth's
    # groups): refuse first if a user put anything there.
    for t, split in made:
        group = union.prefix(t) + split
        foreign = store_paths(place, union.teacher_names, group)[2]
        refuse_foreign(place, foreign, f"deit-pipe makes {group} there")
    growing = {"epochs": union.epochs, "teachers": added}  # whose folders are the store's
    _write_meta(place, {**existing, GROWING: growing})
    root = open_group(place, "r+")
    with place.errors():
        for teacher in held.teacher_names:
            prefix = union.prefix(teacher)
            if union.epochs > held.epochs and "train" in held.splits:
                for name, (shape, _) in union.array_shapes("train").items():
                    root[f"{prefix}train/{name}"].resize(shape)
        for teacher, split in made:
            _create_split(root, split, union, teacher)
    meta = union.to_meta(existing["versions"])
    _write_meta(place, {**meta, "created": existing["created"]})  # the same store


def _write_meta(place: Place, meta: dict) -> None:
    """Replace the store's metadata, signed anew."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    write_root(place, {ATTR_KEY: {**body, "checksum": meta_checksum(body)}})


def _create_split(root: zarr.Group, split: str, spec: StoreSpec, teacher: str) -> None:
    shard, chunk = spec.layout(split)
    # overwrite: an interrupted growth may have begun it
    seal = teacher_seal(teacher, spec.teacher_info(teacher))  # whose arrays these are
    group = root.create_group(spec.prefix(teacher) + split, overwrite=True, attributes={SEAL: seal})
    for name, (shape, dtype) in spec.array_shapes(split).items():
        tail = shape[2:]
        if name in spec.arrays:  # V-indexed: one task owns whole shard objects of each
            chunks, shards, dims = (1, chunk, *tail), (1, shard, *tail), ("epoch", "view", "k")
        else:  # one object per (epoch, shard) cell: writers of different shards never share
            chunks, shards, dims = (1, 1, *tail), None, ("epoch", "shard", "array")
        group.create_array(
            name,
            shape=shape,
            chunks=chunks,
            shards=shards,
            dtype=dtype,
            compressors=compressors(dtype, cell=name not in spec.arrays),
            fill_value=False if dtype == "bool" else 0,  # 0 is never a checksum (2³² + crc)
            dimension_names=dims[: len(shape)],
            config={"write_empty_chunks": True},
            overwrite=True,
        )


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}")
    return out


def write_manifest(writer: StoreWriter, source: Source) -> None:
    """`manifest.parquet` (one row per sample) and `skipped.parquet` (files left out, why)."""
    rows: dict[str, list] = {"split": [], "index": [], "path": [], "label": [], "bytes": []}
    for split_name in writer.spec.splits:
        split = source.split(split_name)
        n = len(split)
        rows["split"] += [split_name] * n
        rows["index"] += list(range(n))
        rows["path"] += list(split.paths) if split.paths is not None else [None] * n
        rows["label"] += split.labels.tolist()
        rows["bytes"] += list(split.sizes) if split.sizes is not None else [None] * n
    schema = pa.schema(
        [
            ("split", pa.string()),
            ("index", pa.int64()),
            ("path", pa.string()),
            ("label", pa.int64()),
            ("bytes", pa.int64()),
        ]
    )
    skipped = pa.table(
        {"path": [p for p, _ in source.skipped], "reason": [r for _, r in source.skipped]},
        schema=pa.schema([("path", pa.string()), ("reason", pa.string())]),
    )
    sums = {}
    for name, table in ((MANIFEST, pa.table(rows, schema=schema)), (SKIPPED, skipped)):
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        data = sink.getvalue().to_pybytes()
        writer.place.write_atomic(name, data)  # never in place: a full disk keeps the old
        sums[name] = file_checksum(data)
    # then their checksums, signed with the metadata: readers refuse another dataset's
    # manifest or edited labels (a kill in between: the rerun writes both again)
    meta = read_meta(open_group(writer.place, "r"), writer.url)
    if meta.get(FILES) != sums:
        _write_meta(writer.place, {**meta, FILES: sums})
