"""A local copy of a remote dataset's files (`--data-cache DIR`): each shard (or image) is
fetched whole once, checked against the source's ETag and size, and read from local disk on
every later epoch and every later run.

Why not fsspec's `filecache`: it keeps no size cap, checks the remote (one HEAD) on every
open, and its one metadata file is rewritten by every process that fetches, while here
DataLoader workers, DDP ranks and dask workers of one host share a directory. So each
file has its own sidecar (`KEY.json`: url, etag, size, run), written after the data by an
atomic rename; two processes that fetch one file at once write the same bytes. A file is
checked against the remote once per run (`run`, drawn when the CLI opens the data), and the
least recently used files are evicted past the cap.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import uuid
from pathlib import Path

from deit_pipe.errors import DataError
from deit_pipe.place import WRITE_ERRORS

log = logging.getLogger(__name__)

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
LOCAL_FAILURES = (*WRITE_ERRORS, errno.EACCES)  # the cache folder's, not the source's
FREE_SHARE = 0.8  # of the free disk, the default cap: the cache must not fill the disk


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
        self.directory = Path(directory).expanduser()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            probe = self.directory / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DataError(f"--data-cache {directory}: not a writable folder ({exc})") from None
        if limit is None:
            limit = int(shutil.disk_usage(self.directory).free * FREE_SHARE)
        self.limit = limit
        self.run = uuid.uuid4().hex  # files checked in this run need no second HEAD request
        self.fetched = 0  # bytes fetched from the source by this process (benchmarks, logs)

    def local(self, fs, path: str, url: str) -> str | None:
        """The path of a checked local copy of the remote file `path` (named `url` in
        messages), fetched when missing or changed; None when it is larger than the cap."""
        key = hashlib.sha256(url.encode()).hexdigest()[:32]
        data, side = self.directory / key, self.directory / f"{key}.json"
        record = _read_json(side)
        if record.get("run") == self.run and _size(data) == record.get("size"):
            return str(data)
        info = fs.info(path)
        tag, size = _etag(fs, path, info), int(info["size"])
        if record.get("etag") == tag and record.get("size") == size and _size(data) == size:
            _write_json(side, {**record, "run": self.run})
            os.utime(data)  # recently used: evicted last
            return str(data)
        if record:
            log.warning("%s changed at the source (ETag or size): fetching it again", url)
        if size > self.limit:
            log.warning(
                "%s (%d bytes) is larger than the data cache's cap: read remotely", url, size
            )
            return None
        partial = self.directory / f".{key}.{uuid.uuid4().hex}.partial"
        try:
            side.unlink(missing_ok=True)  # the sidecar commits a copy: none while it is replaced
            self._make_room(size, keep=key)
            fs.get_file(path, str(partial))
            if _size(partial) != size:
                raise DataError(f"{url}: fetched {_size(partial)} bytes, the source lists {size}")
            os.replace(partial, data)
            _write_json(side, {"url": url, "etag": tag, "size": size, "run": self.run})
        except OSError as exc:
            if exc.errno not in LOCAL_FAILURES:
                raise
            raise DataError(f"--data-cache {self.directory}: {exc.strerror} ({url})") from None
        finally:
            partial.unlink(missing_ok=True)
        self.fetched += size
        return str(data)

    def _make_room(self, size: int, keep: str) -> None:
        """Evict the least recently used copies until `size` more bytes fit under the cap."""
        copies = [p for p in self.directory.iterdir() if len(p.name) == 32 and p.name != keep]
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


def _etag(fs, path: str, info: dict) -> str:
    """The source's version tag of a file: S3's ETag, GCS's md5/crc, else fsspec's `ukey`."""
    for name in ("ETag", "etag", "md5Hash", "crc32c"):
        if info.get(name):
            return str(info[name]).strip('"')
    return str(fs.ukey(path))


def _stat(path: Path):
    try:
        return path.stat()
    except OSError:
        return None


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
