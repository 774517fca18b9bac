"""`wds:ROOT_OR_URL`: WebDataset tar shards `{train,val}-*.tar`, read by random access.

A sample is the members sharing a key (the member name up to the first dot of its file
name): an image (`.jpg`, `.jpeg`, `.png`, `.webp`) and `.cls`, an integer label. Replay
needs sample `i` in any order, so each shard is indexed once — every image member's offset
and size, and every label — and the index is cached on this machine under the shard's
identity (path, size, modification time or ETag): a changed shard is indexed again.
Class names come from `ROOT/classes.txt` (one per line) where present, else they are the ids.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tarfile
from pathlib import Path

import numpy as np

from deit_pipe.data.sources.files import Root
from deit_pipe.data.sources.split import RUN, ShardSplit, class_list
from deit_pipe.errors import DataError

log = logging.getLogger(__name__)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
PATTERNS = {"train": "train-*.tar", "val": "val-*.tar"}


def cache_dir() -> Path:
    base = os.environ.get("DEIT_PIPE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "deit-pipe"
    )
    return Path(base) / "tar-index"


def index_shard(root: Root, rel: str) -> dict:
    """{key, member, offset, size, label} lists of one shard's samples, in tar order."""
    path = root.path(rel)
    # "3": indexes of shards with no end-of-archive blocks are refused since; older cached
    # ones are made again.
    identity = json.dumps([root.location, rel, str(root.fs.ukey(path)), 3]).encode()
    cached = cache_dir() / f"{hashlib.blake2b(identity, digest_size=16).hexdigest()}.json"
    try:
        return json.loads(cached.read_text())
    except (OSError, ValueError):
        pass
    index = _read_index(root, rel)
    try:  # a cache we cannot write only costs the next open another indexing pass
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(json.dumps(index))
        partial.replace(cached)
    except OSError as exc:
        log.warning("cannot cache the index of %s: %s", rel, exc)
    return index


def _read_index(root: Root, rel: str) -> dict:
    images: dict[str, tuple[str, int, int]] = {}
    labels: dict[str, int] = {}
    order: list[str] = []
    repeated: list[str] = []
    try:
        file = root.open(rel)
        with tarfile.open(fileobj=file, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                folder, _, name = member.name.rpartition("/")
                stem, _, ext = name.partition(".")
                key = f"{folder}/{stem}" if folder else stem
                if ext.lower() in IMAGE_EXTS and key in images:
                    repeated.append(member.name)  # the first one with the key is the sample
                elif ext.lower() in IMAGE_EXTS:
                    images[key] = (member.name, member.offset_data, member.size)
                    order.append(key)
                elif ext.lower() == "cls":
                    text = tar.extractfile(member).read().decode(errors="replace").strip()
                    try:
                        labels[key] = int(text)
                    except ValueError:
                        raise DataError(
                            f"{root.location}/{rel}:{key}.cls holds {text[:20]!r}, not an "
                            "integer label"
                        ) from None
            _check_end(file, tar.offset, f"{root.location}/{rel}")
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"unreadable tar shard {root.location}/{rel}: {exc}") from None
    unlabelled = [k for k in order if k not in labels]
    if unlabelled:
        raise DataError(f"{root.location}/{rel}:{unlabelled[0]} has an image but no .cls label")
    return {
        "key": order,
        "member": [images[k][0] for k in order],
        "offset": [images[k][1] for k in order],
        "size": [images[k][2] for k in order],
        "label": [labels[k] for k in order],
        "repeated": repeated,
    }


def _check_end(file, offset: int, name: str) -> None:
    """Refuse a shard cut short: `tarfile` reads a tar that ends early (a copy cut by a full
    disk or an interrupted upload) as a shorter one, so the end-of-archive blocks (two of
    512 zero bytes) must follow the last member's data, as POSIX has every writer put them."""
    file.seek(offset)
    end = file.read(2 * tarfile.BLOCKSIZE)
    if len(end) < 2 * tarfile.BLOCKSIZE or end.count(0) != len(end):
        raise DataError(
            f"truncated or damaged tar shard {name}: no end-of-archive blocks after byte "
            f"{offset} (its last member is cut or a header is damaged); copy it again"
        )


class TarSplit(ShardSplit):
    """The samples of one split's tar shards, by index: (shard, offset, size) → image.

    A block is a run of `RUN` consecutive image members of one shard. Read per sample (one
    range request each) in the global order; in the block order (`read_whole_blocks`) the
    block's byte range is read in one request and kept until released."""

    block_unit = f"runs of {RUN} tar members"

    def __init__(self, root: Root, files: list[str], skip: dict):
        self.files = files
        self.ignored: list[tuple[str, str]] = []  # (SHARD:MEMBER, why): `Source.ignored`
        names, labels, shard, offset, size = [], [], [], [], []
        for f, rel in enumerate(files):
            index = index_shard(root, rel)
            self.ignored += [
                (f"{rel}:{m}", "repeats an earlier image's key") for m in index["repeated"]
            ]
            names += [f"{rel}:{m}" for m in index["member"]]
            labels += index["label"]
            shard += [f] * len(index["key"])
            offset += index["offset"]
            size += index["size"]
        self.where = np.array([shard, offset, size], dtype=np.int64).T.reshape(-1, 3)
        first = np.flatnonzero(np.diff(self.where[:, 0], prepend=-1))  # each shard's first row
        within = np.arange(len(self.where)) - np.repeat(
            first, np.diff(np.append(first, len(self.where)))
        )
        self.starts = np.flatnonzero(within % RUN == 0)
        super().__init__(root, names, np.array(labels, dtype=np.int64), skip, sizes=size)

    def block_rows(self) -> np.ndarray:
        return self.starts

    def raw(self, index: int) -> bytes:
        f, offset, size = (int(x) for x in self.where[self.rows[index]])
        self._local()
        if not self._whole:
            self.cache.bytes_read += size  # one range read, nothing kept
            return self.root.read(self.files[f], offset, offset + size)
        block, start = self.cache.get(self._block_key(index), lambda: self._read_block(index))
        return block[offset - start : offset - start + size]

    def _read_block(self, index: int) -> tuple[tuple[bytes, int], int]:
        """The byte range of sample `index`'s block in one request: (bytes, offset), size."""
        b = self._block_key(index)
        rows = self.starts[b], (self.starts[b + 1] if b + 1 < len(self.starts) else len(self.where))
        f, start, _ = (int(x) for x in self.where[rows[0]])
        _, last, size = (int(x) for x in self.where[rows[1] - 1])
        data = self.root.read(self.files[f], start, last + size)
        return (data, start), len(data)


def open_webdataset(root: Root, location: str, skip: dict):
    """(classes, {split: TarSplit}) of `wds:LOCATION`, its files below `root`."""
    splits = {}
    for name, pattern in PATTERNS.items():
        files = root.glob(pattern)
        if files:
            splits[name] = TarSplit(root, files, skip)
    if "train" not in splits:
        raise DataError(f"no training shards under {location}: expected train-*.tar")
    try:
        named = [n.strip() for n in root.read("classes.txt").decode().splitlines() if n.strip()]
    except DataError:
        named = None
    return class_list(named, splits, location, "classes.txt"), splits
