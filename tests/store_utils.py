"""Deterministic random teacher logits, shard by shard, for store tests and benchmarks; a
store's data files and edits of its metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deit_pipe.data.plan.recipe import PLAN_VERSION
from deit_pipe.storage import StoreSpec, create_store
from deit_pipe.storage.writer import StoreWriter


def make_spec(
    classes=20, k=5, train=100, val=30, epochs=2, dtype="float32", shard=32, temperatures=(1.0, 3.0)
) -> StoreSpec:
    return StoreSpec(
        dataset={
            "spec": "fake:test",
            "fingerprint": "f" * 32,
            "classes": [f"c{i}" for i in range(classes)],
            "num_samples": {"train": train, "val": val},
        },
        teacher={"name": "test-teacher", "checkpoint_sha256": None, "num_classes": classes},
        recipe={"plan_version": PLAN_VERSION, "seed": 0, "repeats": 3, "input_size": 32},
        epochs=epochs,
        k=k,
        temperatures=temperatures,
        value_dtype=dtype,
        shard_views=shard,
        chunk_views=shard // 2,
    )


def logits(split: str, epoch: int, rows: range, classes: int) -> np.ndarray:
    rng = np.random.default_rng([len(split), epoch, rows.start])
    return rng.normal(0, 3, (len(rows), classes))


def shard_payload(writer: StoreWriter, split: str, epoch: int, shard: int):
    spec = writer.spec
    rows = writer.shard_range(split, shard)
    z = logits(split, epoch, rows, spec.num_classes)
    idx = np.argsort(-z, axis=1, kind="stable")[:, : spec.k]
    values = np.take_along_axis(z, idx, axis=1)
    lse = np.stack([np.logaddexp.reduce(z / t, axis=1) for t in spec.temperatures], axis=1)
    fps = np.random.default_rng([epoch, shard, 7]).integers(
        0, 2**64, len(rows), np.uint64, endpoint=False
    )
    return values, idx, lse, fps


def fill(writer: StoreWriter, split: str, epoch: int, shard: int) -> None:
    writer.write_shard(split, epoch, shard, *shard_payload(writer, split, epoch, shard))


def fill_all(url: str, spec: StoreSpec, skip: set = frozenset()) -> StoreWriter:
    writer = create_store(url, spec)
    for split in spec.splits:
        for e in range(spec.split_epochs(split)):
            for s in range(spec.num_shards(split)):
                if (split, e, s) not in skip:
                    fill(writer, split, e, s)
    return writer


def write_shards_in_process(url: str, shards: list[int]) -> None:
    """Entry point for a separate process (spawn): write these train shards of epoch 0."""
    writer = StoreWriter(url)
    for s in shards:
        fill(writer, "train", 0, s)


def tamper_fingerprint(url: str, split: str, epoch: int, slot: int, value: int) -> None:
    """Change one stored fingerprint *and* its shard's checksum record: a consistent store
    whose views differ from what this machine renders (another library version, say), as
    opposed to a damaged one, which the checksums catch first."""
    import zarr

    from deit_pipe.storage.format import CHECKSUM, SEAL, StoreSpec, seal_salt, shard_checksum

    group = zarr.open_group(url, mode="r+")
    spec = StoreSpec.from_meta(group.attrs["deit_pipe"])
    group[f"{split}/fingerprint"][epoch, slot] = np.uint64(value)
    length = spec.layout(split)[0]
    shard = slot // length
    rows = slice(shard * length, min((shard + 1) * length, spec.views(split)))
    sums = group[f"{split}/{CHECKSUM}"][epoch, shard]
    sums[spec.arrays.index("fingerprint")] = shard_checksum(
        group[f"{split}/fingerprint"][epoch, rows], seal_salt(group[split].attrs.get(SEAL))
    )
    group[f"{split}/{CHECKSUM}"][epoch, shard] = sums


def resign_meta(url: str, edit) -> None:
    """Edit a store's metadata and sign it again, as a deliberate (not a damaging) change."""
    import zarr

    from deit_pipe.storage.format import meta_checksum

    group = zarr.open_group(url, mode="r+")
    meta = group.attrs["deit_pipe"]
    edit(meta)
    group.attrs["deit_pipe"] = {**meta, "checksum": meta_checksum(meta)}


# Files whose bytes record when, not what: completion times and locks.
WHEN = ("done_at/", ".deit-pipe.lock")


def data_files(path: Path) -> dict[str, bytes]:
    """Every file of a store but its root metadata and completion times, with its bytes."""
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in files
        if p.relative_to(path) != Path("zarr.json") and not any(w in str(p) for w in WHEN)
    }
