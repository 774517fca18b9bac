"""Where something lives — a local path or an fsspec URL (s3://, gs://, …) — and the options
that reach it: one `Place` for stores, run directories, dataset roots and caches.

A `Place` is picklable and opens its file system lazily, once per process: a forked loader
worker or a dask worker on another host opens its own clients (fsspec's are not fork-safe).
It owns the one translation of a backend's failures into one line naming the place
(`errors`) and the one atomic write (`write_atomic`). Options apply only to URLs: a local
store beside a dataset on S3 takes none.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from deit_pipe.errors import (
    CREDENTIALS_HINT,
    DeitPipeError,
    StoreAccessError,
    StoreCorruptError,
    StoreError,
    backend_problem,
)
from deit_pipe.outputs import write_atomic


def is_url(location: str) -> bool:
    """An object-store URL (s3://, gs://, …), not a path or file:// URL on this machine."""
    return "://" in location and not location.startswith("file://")


def is_local(url: str) -> bool:
    """A path on this machine's file system (or a file:// URL), not an object store."""
    return not is_url(url)


def parse_storage_options(text: str | None, flag: str = "--storage-options") -> dict | None:
    """`--storage-options` JSON (an object, or empty) as a dict; errors name `flag`."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{flag} is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(value, dict):
        raise StoreError(f"{flag} must be a JSON object, got {type(value).__name__}")
    # fsspec passes every *_kwargs value on as keyword arguments (client_kwargs,
    # config_kwargs, s3_additional_kwargs): anything but an object fails deep in a backend.
    for key, item in value.items():
        if key.endswith("kwargs") and not isinstance(item, dict):
            raise StoreError(f"{flag} {key!r} must be a JSON object, got {json.dumps(item)}")
    return value


class PerProcess:
    """State a process opens for itself (clients, open files, caches): its attributes start
    with `_`, are never pickled, and are opened again after a fork (`_fresh`)."""

    _pid = -1

    def _fresh(self) -> bool:
        """Whether this process must open its own state (first use, or after a fork)."""
        if self._pid == os.getpid():
            return False
        self._pid = os.getpid()
        return True

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class Place(PerProcess):
    """A location and its fsspec options (None for a local path)."""

    def __init__(self, url: str | os.PathLike, options: dict | None = None):
        self.url = str(url)
        self.options = options if is_url(self.url) else None

    @classmethod
    def of(cls, where: str | os.PathLike | Place, options: dict | None = None) -> Place:
        """`where` as a Place (a Place is returned as it is)."""
        return where if isinstance(where, Place) else cls(where, options)

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Place({self.url!r})"

    def __eq__(self, other: object) -> bool:  # the same location, whatever the credentials
        return isinstance(other, Place) and other.url == self.url

    def __hash__(self) -> int:
        return hash(self.url)

    @property
    def local(self) -> bool:
        return is_local(self.url)

    @property
    def fs(self):
        """This process's fsspec file system for the place (opened on first use)."""
        if self._fresh():
            import fsspec

            with self.errors():
                fs, path = fsspec.core.url_to_fs(self.url, **(self.options or {}))
            self._fs, self._base = fs, path.rstrip("/")
        return self._fs

    @property
    def base(self) -> str:
        """The backend's path of the place (no protocol, no trailing slash)."""
        self.fs  # noqa: B018 — resolves `_base`
        return self._base

    def path(self, rel: str = "") -> str:
        """The backend path of `rel` below the place."""
        return f"{self.base}/{rel}" if rel else self.base

    @contextmanager
    def errors(self) -> Iterator[None]:
        """A backend's failure inside, as one line naming this place (`StoreAccessError`)."""
        with storage_errors(self.url):
            yield

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Replace `rel` with `data` all at once: readers see the old file or the new, never
        a truncated one (a full disk leaves the old file). Locally a temporary file is
        written, synced and renamed over the target; an object store's PUT is atomic."""
        with self.errors():
            if self.local:
                write_atomic(self.path(rel), data)
            else:
                self.fs.pipe_file(self.path(rel), data)


# OS errors a local write meets, as what the user should do about them.
WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or process limit (ulimit -f)",
    errno.EROFS: "read-only file system",
}


@contextmanager
def storage_errors(url: str, metadata: str = "a Zarr metadata file") -> Iterator[None]:
    """Turn a storage backend's exception into a one-line `StoreAccessError` naming `url`,
    and Zarr's refusal of damaged metadata (`metadata`, where known) into a
    `StoreCorruptError` saying what to do."""
    try:
        yield
    except DeitPipeError:
        raise
    except ImportError as exc:
        raise StoreAccessError(
            f"{url}: {exc} (object stores are optional: pip install 'deit-pipe[s3]' or '[gcs]')"
        ) from None
    except PermissionError as exc:
        if is_local(url):
            where = exc.filename or url
            raise StoreAccessError(
                f"{url}: permission denied on {where}; check its owner and write permissions"
            ) from None
        raise StoreAccessError(f"{url}: access denied ({exc}); {CREDENTIALS_HINT}") from None
    except OSError as exc:
        if exc.errno in WRITE_ERRORS:
            where = f" ({exc.filename})" if exc.filename else ""
            raise StoreAccessError(
                f"{url}: cannot write: {WRITE_ERRORS[exc.errno]}{where}"
            ) from None
        if isinstance(exc, FileNotFoundError) and missing_bucket(exc):
            raise no_bucket(url) from None
        if isinstance(exc, FileNotFoundError):
            raise
        error = _backend_error(url, exc)
        if error is None and exc.errno:
            error = StoreAccessError(f"{url}: {exc.strerror} ({exc.filename or url})")
        if error is None:
            raise
        raise error from None
    except Exception as exc:
        if _zarr_metadata_error(exc):
            raise StoreCorruptError(
                f"{url}: {metadata} is damaged ({' '.join(str(exc).split())[:200]}): restore "
                "it from a copy, or remake the store with precompute --overwrite (nothing was "
                "changed)"
            ) from None
        error = _backend_error(url, exc)
        if error is None:
            raise
        raise error from None


def _zarr_metadata_error(exc: BaseException) -> bool:
    """Zarr's refusal of a metadata document it cannot read (a key missing, a wrong node type)."""
    kind = type(exc)
    return kind.__module__.startswith("zarr") and (
        "Metadata" in kind.__name__ or "NodeType" in kind.__name__
    )


def _backend_error(url: str, exc: BaseException) -> StoreAccessError | None:
    problem = backend_problem(exc)
    return None if problem is None else StoreAccessError(f"{url}: {problem}")


def missing_bucket(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "bucket does not exist" in text or "nosuchbucket" in text


def no_bucket(url: str) -> StoreAccessError:
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    return StoreAccessError(
        f"{url}: the bucket {bucket!r} does not exist (or these credentials cannot see it)"
    )
