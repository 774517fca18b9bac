"""The target store, format version 3: metadata, array layout and codecs (a public contract).

A Zarr v3 group; `attrs["deit_pipe"]` holds the metadata below and a sha256 `checksum` of
all of it, checked on every open. Per split (`train`, `val`):

    topk_values   [E, V, k]  float16|float32  teacher logits, sorted descending
    topk_indices  [E, V, k]  uint16 (uint32 if C > 65536)
    logsumexp     [E, V, T]  float32  logsumexp(z/τ) over all C classes, per τ
    fingerprint   [E, V]     uint64   xxh3-64 of the view's uint8 pixels + finishing params
    checksum      [E, S, A]  uint64   2³² + crc32 of each array's shard, as written
    done          [E, S]     bool     shard s of epoch e is complete (one chunk per cell)
    done_at       [E, S]     float64  when it completed (Unix seconds; rates and ETAs)

All V-indexed arrays of a split share one shard grid (`layout`) so one task owns whole
shards of every array and no two writers ever touch the same Zarr object.

Version 2 (deit-pipe 0.2) rendered random erasing's noise portably and sized shards per
split; version 3 adds the checksums: a lost chunk reads as Zarr's fill value, which only a
record of what was written can tell from data.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import zlib
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from zarr.codecs import BloscCodec, BloscShuffle, Crc32cCodec

from deit_pipe.choices import TARGETS, VALUE_DTYPES
from deit_pipe.errors import check

FORMAT_VERSION = 3
ATTR_KEY = "deit_pipe"
CREATING_KEY = "deit_pipe_creating"  # root attribute while a store is being laid out
CHECKSUM = "checksum"
GROWING = "growing"  # metadata key while a store grows: {"epochs": the count it grows to}
SPLITS = ("train", "val")
ARRAYS = ("topk_values", "topk_indices", "logsumexp", "fingerprint")
MANIFEST = "manifest.parquet"
# metadata key: {file name: "sha256:…"} of the Parquet files as last written (signed with the
# rest of the metadata, not part of the job: a store before it has none)
FILES = "files"
SKIPPED = "skipped.parquet"
DEFAULT_SHARD_VIEWS = 65536
DEFAULT_CHUNK_VIEWS = 4096
CELLS = (CHECKSUM, "done", "done_at")  # the per-(epoch, shard) arrays of every split
ZARR_META = "zarr.json"  # every group's and array's Zarr v3 metadata document
SEAL = "deit_pipe_teacher"  # a split group's attribute: the teacher whose arrays it holds
TEACHERS = "teachers"  # the folder of the teachers added later: `teachers/NAME/<split>/…`
# What deit-pipe writes at a store's root; `--overwrite` refuses a store holding anything else.
STORE_ENTRIES = (ZARR_META, *SPLITS, TEACHERS, MANIFEST, SKIPPED)
# A chunk or shard object, `c/` then one index per dimension (Zarr v3's default key
# encoding), or a folder on its way.
_CHUNK_KEY = re.compile(r"^c(/\d+){0,3}$")
# What zarr's local store writes before renaming it over a key (left behind by a kill).
_ZARR_TEMP = re.compile(r"^(\d+|zarr)\.[0-9a-f]{32}\.partial$")


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds; two runs with equal specs are the same job (resume-safe)."""

    dataset: dict  # spec, fingerprint, classes, num_samples {split: n}
    teacher: dict  # name, checkpoint_sha256, num_classes, input_size, mean, std
    recipe: dict  # metadata key "plan": seed, repeats, input_size, transform, mix, ra_block
    epochs: int  # training epochs stored
    splits: tuple[str, ...] = SPLITS
    k: int = 10
    temperatures: tuple[float, ...] = (1.0, 3.0)
    value_dtype: str = "float16"
    shard_views: int | None = None  # None: chosen per split by `layout`
    chunk_views: int = DEFAULT_CHUNK_VIEWS  # the longest chunk
    targets: str = "soft"  # "hard": topk_indices [E, V, 1] and fingerprint only
    extra: dict = field(default_factory=dict)
    # Teachers added later, by name: their arrays live under `teachers/NAME/` (see `prefix`).
    more_teachers: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        check(self.k >= 1, f"--top-k must be at least 1, got {self.k}")
        check(
            self.k <= self.num_classes,
            f"--top-k {self.k} exceeds the dataset's {self.num_classes} classes",
        )
        for t in self.temperatures:
            check(
                math.isfinite(t) and t > 0, f"--temperatures must be finite and positive, got {t:g}"
            )
        check(
            self.targets in TARGETS,
            f"--targets must be one of {', '.join(TARGETS)}, got {self.targets!r}",
        )
        check(
            self.targets != "soft" or bool(self.temperatures),
            "--temperatures: soft targets need at least one temperature",
        )
        check(
            self.value_dtype in VALUE_DTYPES,
            f"--value-dtype must be one of {', '.join(VALUE_DTYPES)}, got {self.value_dtype}",
        )
        check(
            self.shard_views is None or (self.shard_views >= 2 and self.shard_views % 2 == 0),
            f"--shard-views must be even and at least 2, got {self.shard_views}",
        )
        check(
            bool(self.splits) and all(s in SPLITS for s in self.splits),
            f"splits must be among {', '.join(SPLITS)}, got {list(self.splits)}",
        )

    @property
    def teacher_names(self) -> list[str]:
        """Every teacher the store holds, the first (whose arrays sit at the root) first."""
        return [teacher_name(self.teacher), *self.more_teachers]

    def prefix(self, teacher: str) -> str:
        """Where a teacher's split groups live: the root for the first, `teachers/NAME/`."""
        return "" if teacher == teacher_name(self.teacher) else f"teachers/{teacher}/"

    def teacher_info(self, name: str) -> dict:
        return self.teacher if name == teacher_name(self.teacher) else self.more_teachers[name]

    @property
    def arrays(self) -> tuple[str, ...]:
        """The V-indexed arrays this store holds."""
        return ARRAYS if self.targets == "soft" else ("topk_indices", "fingerprint")

    @property
    def num_classes(self) -> int:
        return len(self.dataset["classes"])

    def views(self, split: str) -> int:
        return int(self.dataset["num_samples"][split])

    def split_epochs(self, split: str) -> int:
        return self.epochs if split == "train" else 1

    def layout(self, split: str) -> tuple[int, int]:
        """(shard, chunk) lengths along V of `split`'s arrays."""
        return shard_layout(self.views(split), self.shard_views, self.chunk_views)

    def num_shards(self, split: str) -> int:
        return math.ceil(self.views(split) / self.layout(split)[0])

    def shard_sizes(self, split: str) -> np.ndarray:
        """Views in each shard of one epoch of `split` (the last may be short)."""
        length, views = self.layout(split)[0], self.views(split)
        return np.minimum(length, views - length * np.arange(self.num_shards(split)))

    def index_dtype(self) -> str:
        return "uint16" if self.num_classes <= 65536 else "uint32"

    def array_shapes(self, split: str) -> dict[str, tuple[tuple[int, ...], str]]:
        """(shape, dtype) of every array of `split`: the V-indexed data arrays [E, V, …],
        then the per-(epoch, shard) cells [E, S, …]. What is created, and what an open checks."""
        e, v, s = self.split_epochs(split), self.views(split), self.num_shards(split)
        data = {
            "topk_values": ((e, v, self.k), self.value_dtype),
            "topk_indices": ((e, v, self.k), self.index_dtype()),
            "logsumexp": ((e, v, len(self.temperatures)), "float32"),
            "fingerprint": ((e, v), "uint64"),
        }
        cells = {
            CHECKSUM: ((e, s, len(self.arrays)), "uint64"),
            "done": ((e, s), "bool"),
            "done_at": ((e, s), "float64"),
        }
        return {**{n: data[n] for n in self.arrays}, **cells}

    def to_meta(self, versions: dict[str, str]) -> dict:
        meta = {
            "format_version": FORMAT_VERSION,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "versions": versions,
            "dataset": self.dataset,
            "teacher": self.teacher,
            "plan": {**self.recipe, "epochs": self.epochs},
            "splits": list(self.splits),
            "k": self.k,
            "temperatures": list(self.temperatures),
            "value_dtype": self.value_dtype,
            "targets": self.targets,
            "shard_views": self.shard_views,
            "chunk_views": self.chunk_views,
            "layout": {
                s: dict(zip(("shard_views", "chunk_views"), self.layout(s), strict=True))
                for s in self.splits
            },
        }
        meta = {**meta, **({"extra": self.extra} if self.extra else {})}
        meta = {**meta, **({"more_teachers": self.more_teachers} if self.more_teachers else {})}
        return {**meta, "checksum": meta_checksum(meta)}

    @classmethod
    def from_meta(cls, meta: dict) -> StoreSpec:
        recipe = {k: v for k, v in meta["plan"].items() if k != "epochs"}
        return cls(
            dataset=meta["dataset"],
            teacher=meta["teacher"],
            recipe=recipe,
            epochs=int(meta["plan"]["epochs"]),
            splits=tuple(meta["splits"]),
            k=int(meta["k"]),
            temperatures=tuple(float(t) for t in meta["temperatures"]),
            value_dtype=meta["value_dtype"],
            shard_views=None if meta["shard_views"] is None else int(meta["shard_views"]),
            chunk_views=int(meta["chunk_views"]),
            targets=meta.get("targets", "soft"),
            extra=meta.get("extra", {}),
            more_teachers=meta.get("more_teachers", {}),
        )


def teacher_name(teacher: dict) -> str:
    """A teacher's name in a store: the one given (`--teacher-name`), else its model's."""
    return str(teacher.get("label") or teacher.get("name"))


MAX_TEACHER_NAME = 64  # characters: a folder name on every file system and object store


def valid_teacher_name(name: str) -> bool:
    """A teacher name is a folder name in the store: letters, digits, `_`, `.`, `-`."""
    return bool(re.match(rf"^[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_TEACHER_NAME - 1}}}$", name))


def teacher_name_problem(name: str) -> str | None:
    """What is wrong with `--teacher-name NAME`, or None: its length first, so a long name of
    valid letters is not told to use letters."""
    if len(name) > MAX_TEACHER_NAME:
        return (
            f"--teacher-name is {len(name)} characters long; a store's teacher name is at "
            f"most {MAX_TEACHER_NAME}"
        )
    if not valid_teacher_name(name):
        return f"--teacher-name {name!r}: use letters, digits, '_', '.' and '-'"
    return None


def is_format_path(path: str, teachers: Collection[str] = ()) -> bool:
    """Whether `path` (below a store's root, `/`-separated, a file or a folder) is something
    this format writes: the root's files, the split groups of the first teacher and of the
    `teachers` named, their arrays (`array_shapes`), their Zarr metadata and chunks. What
    `--overwrite` may remove; anything else is a user's and is never removed.

    Leaves out the root's lock and claim files (`outputs.is_ours`), which a running job holds.
    """
    parts = path.split("/")
    if parts[0] == TEACHERS:  # teachers/, teachers/NAME/, then as a split of the root
        if parts[1:] in ([], [ZARR_META]):
            return True
        if parts[1] not in teachers:
            return False
        parts = parts[2:]
        if parts in ([], [ZARR_META]):
            return True
    elif len(parts) == 1:
        return parts[0] in STORE_ENTRIES or bool(_ZARR_TEMP.match(parts[0]))
    if parts[0] not in SPLITS:
        return False
    if len(parts) == 1 or (len(parts) == 2 and _is_meta(parts[1])):
        return True
    if parts[1] not in (*ARRAYS, *CELLS):
        return False
    rest = "/".join(parts[2:])  # below an array: its metadata, its chunk folders and objects
    if rest == "" or _is_meta(rest) or _CHUNK_KEY.match(rest):
        return True
    folder, _, name = rest.rpartition("/")
    return bool(_CHUNK_KEY.match(folder) and _ZARR_TEMP.match(name))


def _is_meta(name: str) -> bool:
    return name == ZARR_META or bool(_ZARR_TEMP.match(name))


def shard_layout(views: int, shard_views: int | None, max_chunk: int) -> tuple[int, int]:
    """(shard, chunk) for a split of `views` views per epoch; chunk divides shard.

    Unset, a split of up to 65,536 views is one shard of near-equal chunks no longer than
    `max_chunk`, so a small epoch (digits: 1,437 views) is not padded to 4,096 — the raw
    fingerprint array would store the padding. Larger splits use 65,536-view shards.
    A given shard length keeps the largest chunk ≤ `max_chunk` that divides it.
    """
    if shard_views is None:
        if views <= DEFAULT_SHARD_VIEWS:
            pieces = max(math.ceil(views / max_chunk), 1)
            chunk = math.ceil(views / pieces)
            return chunk * pieces, chunk
        shard_views = DEFAULT_SHARD_VIEWS
    pieces = math.ceil(shard_views / max_chunk)
    while shard_views % pieces:
        pieces += 1
    return shard_views, shard_views // pieces


def job_identity(meta: dict) -> dict:
    """The metadata that defines the job: everything but creation time, library versions and
    the checksum over them."""
    skip = ("created", "versions", "checksum", GROWING, FILES)
    return {k: v for k, v in meta.items() if k not in skip}


def meta_checksum(meta: dict) -> str:
    """sha256 over the whole job description (canonical JSON, without the checksum itself):
    an edit to any field — k, τ, the teacher, an epoch count — shows on open."""
    body = {k: v for k, v in meta.items() if k != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def file_checksum(data: bytes) -> str:
    """What the metadata records of a Parquet file (`FILES`)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def shard_checksum(data: np.ndarray, salt: int = 0) -> int:
    """2³² + crc32 of an array's bytes as stored: never 0, Zarr's fill value, so a lost
    checksum cell is as detectable as a lost data chunk. `salt` (the crc's start value) is
    the teacher's (`seal_salt`): another teacher's arrays copied in do not match."""
    return (1 << 32) + zlib.crc32(memoryview(np.ascontiguousarray(data)).cast("B"), salt)


def teacher_seal(name: str, info: dict) -> dict:
    """What a teacher's split group carries (its attribute `SEAL`): the teacher's name and a
    digest of its provenance in the metadata (model, checkpoint, classes, normalisation)."""
    text = json.dumps({"name": name, "teacher": info}, sort_keys=True, separators=(",", ":"))
    return {"name": name, "identity": hashlib.sha256(text.encode()).hexdigest()[:32]}


def seal_salt(seal: dict | None) -> int:
    """The start value of a sealed group's shard checksums; 0 (plain crc32) for a group made
    before seals, whose teacher is unproved."""
    return 0 if not seal else zlib.crc32(str(seal["identity"]).encode())


def library_versions() -> dict[str, str]:
    """The versions that decide a view's bytes (Pillow and the libjpeg-turbo it decodes
    with, timm's draws, torchvision's crop) or a store's, recorded in its metadata."""
    import PIL
    import timm
    import torch
    import torchvision
    import zarr
    from PIL import features

    import deit_pipe

    return {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "PIL": PIL.__version__,
        "libjpeg_turbo": features.version("libjpeg_turbo") or "none",
        "zarr": zarr.__version__,
        "deit_pipe": deit_pipe.__version__,
    }


def version_drift(stored: dict[str, str]) -> dict[str, str]:
    """`library: "store's → here"` for the libraries whose versions differ from a store's
    (a library an older store did not record is not a difference it can name)."""
    return {
        k: f"{stored[k]} → {v}"
        for k, v in library_versions().items()
        if k != "deit_pipe" and k in stored and stored[k] != v
    }


def compressors(dtype: str, cell: bool = False) -> list:
    """Byte-shuffled zstd for the compressible arrays; every data chunk carries a crc32c.

    Byte- beats bit-shuffling on real teacher logits (digits store: 35.5 vs 38.1 B/view)
    and on ImageNet-like ones (38.9 vs 39.8), measured by benchmarks/store_bench.py.
    """
    if cell or dtype == "uint64":  # one-value cells (done, done_at); random fingerprint bits
        return [Crc32cCodec()]
    return [BloscCodec(cname="zstd", clevel=7, shuffle=BloscShuffle.shuffle), Crc32cCodec()]
