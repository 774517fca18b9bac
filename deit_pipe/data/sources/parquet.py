"""`parquet:ROOT_OR_URL`: image datasets as Parquet shards, as the Hugging Face Hub keeps them.

Layouts: `ROOT/data/{train,validation,val}-*.parquet` (the Hub's) or `ROOT/{train,val}/*.parquet`.
The image column (a struct holding `bytes`, or plain binary) and the integer label column are
found by type; `parquet:ROOT?image=COL&label=COL` names them. Class names come from the
Hub's `huggingface` schema metadata (a ClassLabel's names), else they are the label ids.

A row group is the unit read: its image column in one read, kept in the process's block
cache until the loader releases it. In the block order (the default for Parquet) each row
group is read once per window; in the global order nearly once per sample, so shards
with small row groups (the Hub uses 100 images) keep that read small.
"""

from __future__ import annotations

import json
import re

import numpy as np

from deit_pipe.data.sources.files import Root, data_errors
from deit_pipe.data.sources.split import ShardSplit, class_list
from deit_pipe.errors import DataError

LAYOUTS = {"train": ("data/train-*.parquet", "train/*.parquet"),
           "val": ("data/validation-*.parquet", "data/val-*.parquet", "validation/*.parquet",
                   "val/*.parquet")}  # fmt: skip
LABEL_NAMES = ("label", "labels", "cls", "class", "target")


def parse_spec(arg: str) -> tuple[str, dict[str, str]]:
    """`ROOT?image=COL&label=COL` → (ROOT, {"image": COL, "label": COL})."""
    location, _, query = arg.partition("?")
    columns = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if key not in ("image", "label") or not eq or not value:
            raise DataError(f"bad parquet option {part!r}: use ?image=COLUMN&label=COLUMN")
        columns[key] = value
    return location, columns


NUMBERED = re.compile(r"^(?P<stem>.*)-(?P<i>\d+)-of-(?P<n>\d+)\.parquet$")


def check_complete(root: Root, files: list[str]) -> None:
    """Refuse a split whose shards are numbered `NAME-00000-of-0000N.parquet` (the Hub's
    names) with some of the N absent: an interrupted download would train on part of it."""
    sets: dict[tuple[str, int, int], set[int]] = {}
    for rel in files:
        m = NUMBERED.match(rel)
        if m:
            key = (m["stem"], len(m["i"]), int(m["n"]))
            sets.setdefault(key, set()).add(int(m["i"]))
    for (stem, width, count), present in sorted(sets.items()):
        missing = [i for i in range(count) if i not in present]
        if missing:
            first = f"{stem}-{missing[0]:0{width}d}-of-{count:0{width}d}.parquet"
            raise DataError(
                f"{root.location}/{first} is missing: {len(missing)} of the {count} shards "
                f"{stem}-*-of-{count:0{width}d} are absent (an incomplete download?)"
            )


def split_files(root: Root) -> dict[str, list[str]]:
    """Each split's shards, relative to the root, in name order (the first layout found)."""
    found = {}
    for split, patterns in LAYOUTS.items():
        for pattern in patterns:
            found[split] = root.glob(pattern)
            if found[split]:
                break
    found = {split: files for split, files in found.items() if files}
    for files in found.values():
        check_complete(root, files)
    if "train" not in found:
        raise DataError(
            f"no training shards under {root.location}: expected data/train-*.parquet "
            "(the Hugging Face layout) or train/*.parquet"
        )
    return found


def _columns(schema, asked: dict[str, str], where: str) -> tuple[str, str]:
    import pyarrow as pa

    def is_image(t) -> bool:
        binary = pa.types.is_binary(t) or pa.types.is_large_binary(t)
        return binary or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0)

    images = [f.name for f in schema if is_image(f.type)]
    ints = [f.name for f in schema if pa.types.is_integer(f.type)]
    image = asked.get("image") or (
        images[0] if len(images) == 1 else next((n for n in images if n in ("image", "img")), None)
    )
    label = asked.get("label") or (
        ints[0] if len(ints) == 1 else next((n for n in LABEL_NAMES if n in ints), None)
    )
    for role, name, fit in (("image", image, images), ("label", label, ints)):
        if name is None or name not in fit:
            kinds = "binary or {bytes, path}" if role == "image" else "integer"
            raise DataError(
                f"{where}: no {role} column ({kinds}) "
                + (f"named {name!r}" if name else f"among {', '.join(schema.names)}")
                + f"; name it with ?{role}=COLUMN"
            )
    return image, label  # fmt: skip


def class_names(schema, label: str) -> list[str] | None:
    """The ClassLabel names the Hub writes in the schema's `huggingface` metadata."""
    meta = (schema.metadata or {}).get(b"huggingface")
    try:
        feature = json.loads(meta)["info"]["features"][label] if meta else {}
    except (ValueError, KeyError, TypeError):
        return None
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if isinstance(names, list) and names else None


class ParquetSplit(ShardSplit):
    """The samples of one split's shards, by index: (shard, row group, row) → image."""

    block_unit = "row groups"

    def __init__(self, root: Root, files: list[str], columns: dict, skip: dict, where: str):
        self.root, self.files = root, files
        names, labels, groups, row = [], [], [], 0  # groups: (shard, row group, first row)
        group_bytes = []  # the image column's stored bytes per row group
        for f, rel in enumerate(files):
            try:
                shard = self._shard(f)
                if f == 0:
                    self.image, self.label = _columns(shard.schema_arrow, columns, where)
                    self.classes = class_names(shard.schema_arrow, self.label)
                labels.append(shard.read(columns=[self.label]).column(0).to_numpy(False))
            except (OSError, ValueError, KeyError) as exc:  # pyarrow raises OSError/ValueError
                raise DataError(f"unreadable Parquet shard {root.location}/{rel}: {exc}") from None
            meta = shard.metadata
            for g in range(meta.num_row_groups):
                groups.append((f, g, row))
                row += meta.row_group(g).num_rows
                group_bytes.append(_image_bytes(meta.row_group(g), self.image))
            names += [f"{rel}:{r}" for r in range(meta.num_rows)]
        self.groups = np.array(groups, dtype=np.int64).reshape(-1, 3)
        self.group_bytes = np.array(group_bytes, dtype=np.int64)
        super().__init__(root, names, np.concatenate(labels), skip)

    def block_rows(self) -> np.ndarray:
        return self.groups[:, 2]

    def block_bytes(self) -> float:
        return float(self.group_bytes.mean()) if len(self.group_bytes) else 0.0

    def raw(self, index: int) -> bytes:
        row, g = int(self.rows[index]), self._block_key(index)
        value = self._group(g)[row - int(self.groups[g, 2])].as_py()
        data = value.get("bytes") if isinstance(value, dict) else value
        if not data:
            raise DataError(f"unreadable image {self.root.location}/{self.paths[index]}: no bytes")
        return data

    def _shard(self, f: int):
        """Shard `f` opened once per process: its footer is parsed once, not per read."""
        import pyarrow.parquet as pq

        self._local()
        if f not in self._shards:
            self._shards[f] = pq.ParquetFile(self.root.open(self.files[f]))
        return self._shards[f]

    def _group(self, g: int):
        """Row group `g`'s image column, through this process's block cache."""

        def read():
            f, rg, _ = (int(x) for x in self.groups[g])
            with data_errors(f"{self.root.location}/{self.files[f]} row group {rg}"):
                column = self._shard(f).read_row_group(rg, columns=[self.image]).column(0)
            return column, int(self.group_bytes[g])

        return self.cache.get(g, read)


def _image_bytes(group, image: str) -> int:
    """The stored (compressed) bytes of the image column's chunks in one row group."""
    chunks = (group.column(c) for c in range(group.num_columns))
    return sum(c.total_compressed_size for c in chunks if c.path_in_schema.split(".")[0] == image)


def open_parquet(root: Root, arg: str, skip: dict):
    """(classes, {split: ParquetSplit}) of `parquet:ARG`, its files below `root`."""
    location, columns = parse_spec(arg)
    splits = {
        name: ParquetSplit(root, files, columns, skip, f"{location}/{files[0]}")
        for name, files in split_files(root).items()
    }
    return class_list(splits["train"].classes, splits, location, "the metadata"), splits
