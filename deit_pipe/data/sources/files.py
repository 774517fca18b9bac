"""A dataset root on this machine or behind an fsspec URL (s3://, gs://, …).

A `Root` is picklable and opens its file system lazily in each process: a DataLoader worker
forked from a process that already read, or a dask worker on another host, opens its own
handles (fsspec clients are not fork-safe). Remote reads are range requests; a file kept open
(a Parquet or tar shard) reads through a block cache.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from deit_pipe.errors import CREDENTIALS_HINT, DataError, DeitPipeError, backend_problem
from deit_pipe.place import Place, is_url

BLOCK = 4 << 20  # bytes per remote read-ahead block: one request fetches several JPEGs


@contextmanager
def data_errors(location: str) -> Iterator[None]:
    """A storage backend's failure while listing or reading a dataset, as one line naming it."""
    try:
        yield
    except DeitPipeError:
        raise
    except ImportError as exc:
        raise DataError(f"{location}: {exc} (pip install 'deit-pipe[s3]' or '[gcs]')") from None
    except PermissionError as exc:
        raise DataError(f"{location}: access denied ({exc}); {CREDENTIALS_HINT}") from None
    except FileNotFoundError as exc:
        raise DataError(f"{location}: not found ({exc})") from None
    except Exception as exc:
        problem = backend_problem(exc)
        if problem is None and not isinstance(exc, OSError | ValueError):
            raise
        raise DataError(f"{location}: {problem or exc}") from None


class Root(Place):
    """The folder or URL prefix a dataset's files live under; paths below are relative. A
    URL root's files are read through `data_cache` (local copies) when given."""

    def __init__(self, location: str, options: dict | None = None, data_cache=None):
        super().__init__(location.rstrip("/") or location, options)
        self.data_cache = data_cache if is_url(location) else None  # a `DataCache`

    @property
    def location(self) -> str:
        return self.url

    @property
    def fs(self):
        if self._pid != os.getpid():
            self._open: dict[str, _Handle] = {}  # a fork drops the parent's handles
        return super().fs

    def errors(self):
        return data_errors(self.url)

    def path(self, rel: str = "") -> str:
        """The backend path of `rel` (refusing a path that climbs out of the root)."""
        if rel.startswith("/") or ".." in rel.split("/"):
            raise DataError(f"path escapes the dataset root {self.location}: {rel}")
        return super().path(rel)

    def relative(self, path: str) -> str:
        """A backend path below the root, relative to it."""
        return path[len(self.path()) + 1 :]

    def glob(self, pattern: str) -> list[str]:
        """The files matching `pattern` (relative to the root), relative and sorted."""
        return sorted(self.relative(p) for p in self.fs.glob(self.path(pattern)))

    def read(self, rel: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes [start, end) of a file (all of it by default): one range request remotely."""
        with data_errors(f"{self.location}/{rel}"):
            if start is not None:
                return self._handle(rel).pread(start, end)
            path = self.path(rel)  # a whole file (an image): read once, not kept open
            copy = self._copy(rel, path)
            if copy:
                with copy:
                    return copy.read()
            return self.fs.cat_file(path)

    def open(self, rel: str):
        """A seekable binary file, kept open for this process (Parquet and tar shards)."""
        return self._handle(rel).file

    def _handle(self, rel: str) -> _Handle:
        self.fs  # noqa: B018 — a fork drops the parent's handles
        if rel not in self._open:
            with data_errors(f"{self.location}/{rel}"):
                path = self.path(rel)
                copy = self._copy(rel, path)
                self._open[rel] = _Handle(self.fs, copy or path, bool(copy) or self.local)
        return self._open[rel]

    def _copy(self, rel: str, path: str):
        """A checked local copy of `rel` from the data cache, open for reading, or None (no
        cache, too big)."""
        if self.data_cache is None:
            return None
        for _ in range(3):  # another process sharing the cache may evict it before the open
            local = self.data_cache.local(self.fs, path, f"{self.location}/{rel}")
            if local is None:
                return None
            try:
                return open(local, "rb")  # noqa: SIM115 — the caller closes or keeps it
            except FileNotFoundError:
                continue
        raise DataError(f"--data-cache {self.data_cache.directory}: {rel} evicted as fetched")


class _Handle:
    """One open file: `os.pread` locally (no seek position shared between threads), an
    fsspec file with a read-ahead block cache remotely."""

    def __init__(self, fs, where, local: bool):
        """`where`: a backend path, or a file already open (a data cache's copy)."""
        self.local, self.lock = local, threading.Lock()
        if not isinstance(where, str):
            self.file = where
        elif local:
            self.file = open(where, "rb")  # noqa: SIM115
        else:
            self.file = fs.open(where, "rb", block_size=BLOCK)

    def pread(self, start: int, end: int | None) -> bytes:
        if self.local:
            size = (end if end is not None else os.fstat(self.file.fileno()).st_size) - start
            return os.pread(self.file.fileno(), size, start)
        with self.lock:  # a seek and a read, together
            self.file.seek(start)
            return self.file.read(-1 if end is None else end - start)
