"""A local copy of a remote dataset's files (`--data-cache DIR`): each shard (or image) is
fetched whole once, checked against the source's ETag and size, proved by its bytes' SHA-256
before its first use in each process, and read from local disk on every later epoch and run.

Why not fsspec's `filecache`: it keeps no size cap, checks the remote (one HEAD) on every
open, and its one metadata file is rewritten by every process that fetches, while here
DataLoader workers, DDP ranks and dask workers of one host share a directory. So each
file has its own sidecar (`KEY.json`: url, etag, size, sha256, run), written after the data
by an atomic rename; two processes that fetch one file at once write the same bytes. A file
is checked against the remote once per run (`run`, drawn when the CLI opens the data), and
the least recently used files are evicted past the cap.

The cache owns its folder: deit-pipe's output mark (`.deit-pipe.output`, "data cache") says
deit-pipe made it, and an append-only index (`.deit-pipe.cache-index`, one key a line: appends
of a line are atomic, so processes need no lock) lists every copy it wrote. A folder holding
anything the cache did not write is refused, and eviction deletes only indexed copies, so a
user's file that happens to look like a copy is never touched.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

from deit_pipe.errors import DataError
from deit_pipe.outputs import OUTPUT_MARK, is_ours, mark_output, marked
from deit_pipe.place import WRITE_ERRORS

log = logging.getLogger(__name__)

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
LOCAL_FAILURES = (*WRITE_ERRORS, errno.EACCES)  # the cache folder's, not the source's
FREE_SHARE = 0.8  # of the free disk, the default cap: the cache must not fill the disk
WHAT, INDEX = "data cache", ".deit-pipe.cache-index"
_KEY = re.compile(r"[0-9a-f]{32}")
_HEX = r"[0-9a-f]{32}"
# Every name the cache writes: copies, sidecars, their partials, probes and its index.
_OURS = re.compile(rf"{_HEX}(\.json)?|\.{_HEX}(\.json)?\.{_HEX}\.partial|\.probe-{_HEX}")
_CHUNK = 1 << 20


def parse_size(text: str) -> int:
    """`200G`, `1.5T`, `512M`, `1000000` → bytes; a DataError naming the text otherwise."""
    value = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = value[-1:] if value[-1:] in UNITS else ""
    try:
        size = float(value[: len(value) - len(unit)]) * UNITS[unit]
    except ValueError:
        size = -1.0
    if not size > 0 or size == float("inf"):
        raise DataError(f"--data-cache-size {text!r}: expected a size such as 200G, 1.5T or 512M")
    return int(size)


class DataCache:
    """The cache directory on this host (the same path on every host of a cluster) and its cap
    in bytes (None: `FREE_SHARE` of the disk's free space when the cache is opened)."""

    def __init__(self, directory: str | os.PathLike, limit: int | None = None):
        if not str(directory).strip():
            raise DataError(
                "--data-cache '': an empty path (an unset shell variable?); name a folder"
            )
        self.directory = Path(directory).expanduser()
        _check_place(self.directory)  # before anything is created
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DataError(f"--data-cache {directory}: not a writable folder ({exc})") from None
        _claim(self.directory)
        if limit is None:
            limit = int(shutil.disk_usage(self.directory).free * FREE_SHARE)
        self.limit = limit
        self.run = uuid.uuid4().hex  # files checked in this run need no second HEAD request
        self.fetched = 0  # bytes fetched from the source by this process (benchmarks, logs)
        self._proved: dict[str, tuple] = {}  # key → the copy's identity, proved in this process

    @classmethod
    def of(cls, where: str | os.PathLike | DataCache | None, limit: int | None = None):
        """`where` as a DataCache (one is returned as it is; None stays None)."""
        return where if where is None or isinstance(where, DataCache) else cls(where, limit)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_proved": {}}  # each process proves the copies it reads

    def local(self, fs, path: str, url: str) -> str | None:
        """The path of a checked local copy of the remote file `path` (named `url` in
        messages), fetched when missing, changed or damaged; None when larger than the cap."""
        key = hashlib.sha256(url.encode()).hexdigest()[:32]
        data, side = self.directory / key, self.directory / f"{key}.json"
        record = _read_json(side)
        if record.get("run") == self.run and _size(data) == record.get("size"):
            if self._proof(key, data, record, url):
                return str(data)
            record = {}
        info = fs.info(path)
        tag, size = _etag(fs, path, info), int(info["size"])
        if record.get("etag") == tag and record.get("size") == size:
            if _size(data) != size:
                log.warning(
                    "data cache: the copy %s of %s is cut short: fetching it again", data, url
                )
            elif self._proof(key, data, record, url):
                _write_json(side, {**record, "run": self.run})
                os.utime(data)  # recently used: evicted last
                return str(data)
        elif record:
            log.warning("%s changed at the source (ETag or size): fetching it again", url)
        if size > self.limit:
            log.warning(
                "%s (%d bytes) is larger than the data cache's cap: read remotely", url, size
            )
            return None
        self._fetch(fs, path, url, key, {"etag": tag, "size": size, **_source_md5(info)})
        return str(data)

    def _fetch(self, fs, path: str, url: str, key: str, record: dict) -> None:
        data, side = self.directory / key, self.directory / f"{key}.json"
        partial = self.directory / f".{key}.{uuid.uuid4().hex}.partial"
        try:
            side.unlink(missing_ok=True)  # the sidecar commits a copy: none while it is replaced
            self._make_room(record["size"], keep=key)
            fs.get_file(path, str(partial))
            if _size(partial) != record["size"]:
                raise DataError(
                    f"{url}: fetched {_size(partial)} bytes, the source lists {record['size']}"
                )
            digest = _sha256(partial)
            os.replace(partial, data)
            _append_index(self.directory, key)
            _write_json(side, {"url": url, **record, "sha256": digest, "run": self.run})
        except OSError as exc:
            if exc.errno not in LOCAL_FAILURES:
                raise
            raise DataError(f"--data-cache {self.directory}: {exc.strerror} ({url})") from None
        finally:
            partial.unlink(missing_ok=True)
        self._proved[key] = (os.getpid(), _identity(data))
        self.fetched += record["size"]

    def _proof(self, key: str, data: Path, record: dict, url: str) -> bool:
        """Whether the copy's bytes are those fetched (hashed once per process and copy)."""
        identity = (os.getpid(), _identity(data))  # a forked worker proves copies again
        if identity[1] is not None and self._proved.get(key) == identity:
            return True
        expected = record.get("sha256")
        try:
            ok = expected is not None and _sha256(data) == expected
        except OSError:
            ok = False
        if ok:
            self._proved[key] = identity
        elif expected is None:
            log.info("%s: a copy without a recorded hash (an older deit-pipe): fetching it", url)
        else:
            log.warning(
                "data cache: the copy %s of %s is damaged (its bytes are not those fetched): "
                "fetching it again",
                data,
                url,
            )
        return ok

    def _make_room(self, size: int, keep: str) -> None:
        """Evict the least recently used indexed copies until `size` more bytes fit."""
        copies = [self.directory / k for k in _indexed(self.directory) if k != keep]
        stats = [(s.st_mtime, s.st_size, p) for p in copies if (s := _stat(p))]
        used = sum(s for _, s, _ in stats)
        for _, bytes_, path in sorted(stats, key=lambda t: t[0]):
            if used + size <= self.limit:
                break
            # The sidecar first: a reader that finds no sidecar fetches again. A process that
            # has the file open keeps reading its bytes after the unlink.
            path.with_suffix(".json").unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            used -= bytes_


def _check_place(directory: Path) -> None:
    """Refuse another deit-pipe output as a cache, and a cache inside one or inside a store
    (their own checks would refuse the cache's files as foreign)."""
    what = marked(directory)
    if what not in (None, WHAT):
        raise DataError(f"--data-cache {directory}: deit-pipe's {what}, not a data cache")
    for parent in directory.resolve().parents:
        if marked(parent) or (parent / "zarr.json").is_file():
            owner = marked(parent) or "target store"
            raise DataError(
                f"--data-cache {directory}: inside deit-pipe's {owner} {parent}; give the "
                "cache a folder of its own"
            )


def _claim(directory: Path) -> None:
    """Make sure `directory` is the cache's own: marked and holding nothing else. A folder of
    copies made before the mark existed (names and sidecars all the cache's) is adopted."""
    entries = sorted(os.scandir(directory), key=lambda e: e.name)
    foreign = [e for e in entries if not _ours(e)]
    if foreign:
        raise DataError(
            f"--data-cache {directory}: holds {foreign[0].name!r}, which the data cache did not "
            "write; give the cache a folder of its own (an empty or new one)"
        )
    if marked(directory) == WHAT:
        return
    for entry in entries:  # copies of an older deit-pipe, committed by their sidecar
        if _KEY.fullmatch(entry.name) and "url" in _read_json(directory / f"{entry.name}.json"):
            _append_index(directory, entry.name)
    mark_output(directory, WHAT)


def _ours(entry: os.DirEntry) -> bool:
    name = entry.name
    if name in (OUTPUT_MARK, INDEX) or is_ours(name) or _OURS.fullmatch(name):
        try:
            return entry.is_file(follow_symlinks=False)
        except OSError:
            return False
    return False


def _append_index(directory: Path, key: str) -> None:
    fd = os.open(directory / INDEX, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{key}\n".encode())
    finally:
        os.close(fd)


def _indexed(directory: Path) -> list[str]:
    """The keys of the copies the cache wrote (each once, whatever was appended since)."""
    try:
        lines = (directory / INDEX).read_text().split()
    except OSError:
        return []
    return list(dict.fromkeys(k for k in lines if _KEY.fullmatch(k)))


def _etag(fs, path: str, info: dict) -> str:
    """The source's version tag of a file: S3's ETag, GCS's md5/crc, else fsspec's `ukey`."""
    for name in ("ETag", "etag", "md5Hash", "crc32c"):
        if info.get(name):
            return str(info[name]).strip('"')
    return str(fs.ukey(path))


def _source_md5(info: dict) -> dict:
    """The source's MD5 of the file where the object store gives one (GCS always; S3's ETag
    of a single-part upload), recorded beside the copy's own hash."""
    if info.get("md5Hash"):
        return {"source_md5": str(info["md5Hash"])}
    tag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    return {"source_md5": tag} if re.fullmatch(r"[0-9a-fA-F]{32}", tag) else {}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _stat(path: Path):
    try:
        return path.stat()
    except OSError:
        return None


def _identity(path: Path) -> tuple | None:
    stat = _stat(path)
    return (stat.st_dev, stat.st_ino, stat.st_size) if stat else None


def _size(path: Path) -> int | None:
    stat = _stat(path)
    return stat.st_size if stat else None


def _read_json(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _write_json(path: Path, record: dict) -> None:
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    partial.write_text(json.dumps(record))
    os.replace(partial, path)
