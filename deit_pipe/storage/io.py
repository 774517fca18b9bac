"""Opening stores at local paths or fsspec URLs (s3://, gs://, …), and reading their metadata.

Object-store credentials and endpoints come from `storage_options` (the CLI's
`--storage-options JSON` or `DEIT_PIPE_STORAGE_OPTIONS`) or the backend's usual environment
(AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, FSSPEC_S3_*, …). Backend failures become one line that
names the store and the likely fix.
"""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from contextlib import contextmanager

import fsspec
import fsspec.implementations.local
import zarr

from deit_pipe.data.files import is_url
from deit_pipe.data.recipe import PLAN_VERSION
from deit_pipe.errors import (
    CREDENTIALS_HINT,
    DeitPipeError,
    StoreAccessError,
    StoreCorruptError,
    StoreError,
    StoreFormatError,
    StoreIncompleteError,
    StoreNotFoundError,
    backend_problem,
    check,
)
from deit_pipe.outputs import write_atomic
from deit_pipe.storage.format import (
    ATTR_KEY,
    CREATING_KEY,
    FORMAT_VERSION,
    GROWING,
    meta_checksum,
)

OBJECT_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def parse_storage_options(text: str | None) -> dict | None:
    """`--storage-options` JSON (an object, or empty) as a dict."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"--storage-options is not valid JSON ({exc.msg} at {exc.pos})") from None
    if not isinstance(value, dict):
        raise StoreError(f"--storage-options must be a JSON object, got {type(value).__name__}")
    # fsspec passes every *_kwargs value on as keyword arguments (client_kwargs,
    # config_kwargs, s3_additional_kwargs): anything but an object fails deep in a backend.
    for key, item in value.items():
        if key.endswith("kwargs") and not isinstance(item, dict):
            raise StoreError(
                f"--storage-options {key!r} must be a JSON object, got {json.dumps(item)}"
            )
    return value


def is_local(url: str) -> bool:
    """A path on this machine's file system (or a file:// URL), not an object store."""
    return not is_url(url)


# OS errors a local write meets, as what the user should do about them.
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or process limit (ulimit -f)",
    errno.EROFS: "read-only file system",
}


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn a storage backend's exception into a one-line `StoreAccessError`."""
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
        if exc.errno in _WRITE_ERRORS:
            where = f" ({exc.filename})" if exc.filename else ""
            raise StoreAccessError(
                f"{url}: cannot write: {_WRITE_ERRORS[exc.errno]}{where}"
            ) from None
        if isinstance(exc, FileNotFoundError) and _missing_bucket(exc):
            raise _no_bucket(url) from None
        if isinstance(exc, FileNotFoundError):
            raise
        error = _backend_error(url, exc)
        if error is None and exc.errno:
            error = StoreAccessError(f"{url}: {exc.strerror} ({exc.filename or url})")
        if error is None:
            raise
        raise error from None
    except Exception as exc:
        error = _backend_error(url, exc)
        if error is None:
            raise
        raise error from None


def _backend_error(url: str, exc: BaseException) -> StoreAccessError | None:
    problem = backend_problem(exc)
    return None if problem is None else StoreAccessError(f"{url}: {problem}")


EMPTY_STORE = (
    "the store path is empty: name a target store (a folder such as targets.zarr, or a URL)"
)


def open_group(url: str, mode: str, storage_options: dict | None = None) -> zarr.Group:
    # An empty URL is the current directory to zarr: never read or write a store there.
    check(bool(url.strip()), EMPTY_STORE)
    # zarr's LocalStore creates folders and is faster than fsspec's local filesystem.
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    with storage_errors(url):
        _probe_bucket(url, storage_options)
        try:
            # Options are for URLs: a local store beside a dataset on S3 takes none.
            options = None if is_local(url) else storage_options
            return zarr.open_group(url, mode=mode, storage_options=options)
        except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError) as exc:
            if _missing_bucket(exc):
                raise
            raise StoreNotFoundError(f"no target store at {url} ({type(exc).__name__})") from None


def _missing_bucket(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "bucket does not exist" in text or "nosuchbucket" in text


def _no_bucket(url: str) -> StoreAccessError:
    bucket = url.split("://", 1)[-1].split("/", 1)[0]
    return StoreAccessError(
        f"{url}: the bucket {bucket!r} does not exist (or these credentials cannot see it)"
    )


def _probe_bucket(url: str, storage_options: dict | None) -> None:
    """One request to an object store's bucket before zarr fans out many.

    A missing bucket would read as an empty store, and an unreachable endpoint would fail one
    of zarr's concurrent requests while the others are abandoned mid-retry. A bucket this
    principal may not inspect (prefix-scoped permissions) is left for zarr to try.
    """
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    if protocol not in OBJECT_STORES:
        return
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    try:
        fs.info(path.split("/", 1)[0])
    except FileNotFoundError:
        raise _no_bucket(url) from None
    except PermissionError:
        pass


def read_meta(group: zarr.Group, url: str) -> dict:
    """The store's metadata, refusing stores this version of deit-pipe cannot read and
    metadata whose checksum shows an edit or damage."""
    meta = group.attrs.get(ATTR_KEY)
    if not isinstance(meta, dict):
        if isinstance(group.attrs.get(CREATING_KEY), dict):
            raise StoreIncompleteError(
                f"{url} is a deit-pipe store whose creation was interrupted; run the "
                "precompute command again to lay it out"
            )
        raise StoreFormatError(f"{url} is a Zarr group but not a deit-pipe store")
    version = meta.get("format_version")
    if version in OLD_FORMATS:
        raise StoreFormatError(
            f"{url} has store format version {version} ({OLD_FORMATS[version]}); this "
            f"deit-pipe reads version {FORMAT_VERSION}: remake it with "
            f"`{remake_command(meta, url)}`"
        )
    if version != FORMAT_VERSION:
        raise StoreFormatError(
            f"{url} has store format version {version}; this deit-pipe reads version "
            f"{FORMAT_VERSION}"
        )
    try:
        intact = meta.get("checksum") == meta_checksum(meta)
    except (TypeError, ValueError):
        intact = False
    if not intact:
        raise StoreCorruptError(
            f"{url}/zarr.json: the store's job description was edited or damaged (its "
            "checksum differs); restore the file, or remake the store"
        )
    plan_version = meta.get("plan", {}).get("plan_version")
    if plan_version != PLAN_VERSION:
        why = OLD_PLANS.get(plan_version, "views this deit-pipe does not render")
        raise StoreFormatError(
            f"{url} holds views of plan version {plan_version} ({why}); this deit-pipe "
            f"replays version {PLAN_VERSION}: remake it with `{remake_command(meta, url)}`"
        )
    return meta


OLD_PLANS = {
    2: "float32 views finished on the host, blake2b fingerprints",
}
OLD_FORMATS = {
    1: "its views replay only on CPUs like the one that made it",
    2: "its shards carry no checksums, so a lost chunk would read as zeros",
}


def remake_command(meta: dict, url: str) -> str:
    """The precompute command that rebuilds a store from its metadata (recipe flags aside)."""
    teacher, plan = meta.get("teacher", {}), meta.get("plan", {})
    parts = [
        "deit-pipe precompute",
        f"--data {meta.get('dataset', {}).get('spec', 'SPEC')}",
        f"--out {url}",
        f"--epochs {plan.get('epochs', 'E')}",
        f"--teacher-model {teacher.get('name', 'NAME')}",
    ]
    if teacher.get("checkpoint"):
        parts.append(f"--teacher-checkpoint {teacher['checkpoint']}")
    elif teacher.get("random_init"):
        parts.append("--random-init")
    for key, flag in (("seed", "--plan-seed"), ("repeats", "--repeats")):
        if key in plan:
            parts.append(f"{flag} {plan[key]}")
    return " ".join([*parts, "--overwrite"]) + " (plus the recipe flags it was made with)"


def file_system(
    url: str, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for the store root, for the Parquet tables and sizes on disk."""
    with storage_errors(url):
        fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path.rstrip("/")


def file_sizes(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, int]:
    """Bytes of each file under `path` (by path relative to it), read from one listing. A
    store being filled holds writers' temporary files that are renamed away between a listing
    and a later stat (`fs.du` stats each file after listing, and fails on them); a listing
    skips them."""
    found = fs.find(path, detail=True)
    return {
        name.removeprefix(path + "/"): int(info.get("size") or 0)
        for name, info in found.items()
        if info["type"] == "file"
    }


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Replace `path` with `data` all at once: readers see the old file or the new, never a
    truncated one (a full disk leaves the old file). Locally a temporary file is written,
    synced and renamed over the target; an object store's PUT is already atomic."""
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        write_atomic(path, data)
    else:
        fs.pipe_file(path, data)


def check_layout(group: zarr.Group, spec, url: str, growing_to: int | None = None) -> None:
    """Every array the metadata implies exists with its shape and dtype: an edited array
    `zarr.json` (an epoch count, say) would otherwise read past what was written. A store
    that is growing (its metadata says to how many epochs) may have arrays already grown."""
    for path, (shape, dtype) in (
        (f"{spec.prefix(t)}{split}/{name}", layout)
        for t in spec.teacher_names
        for split in spec.splits
        for name, layout in spec.array_shapes(split).items()
    ):
        try:
            with storage_errors(url):
                array = group[path]
        except (KeyError, FileNotFoundError):
            raise StoreCorruptError(
                f"{url}/{path} is missing; the store is damaged: remake it"
            ) from None
        grown = (
            growing_to is not None
            and array.shape[1:] == shape[1:]
            and shape[0] <= array.shape[0] <= growing_to
        )
        if not (tuple(array.shape) == shape or grown) or str(array.dtype) != dtype:
            raise StoreCorruptError(
                f"{url}/{path}/zarr.json was edited or damaged: shape "
                f"{tuple(array.shape)} {array.dtype}, the store's metadata says {shape} "
                f"{dtype}; restore it, or remake the store"
            )


def open_store(url: str, mode: str, storage_options: dict | None = None):
    """(group, metadata, StoreSpec) of a deit-pipe store, its metadata checksum and array
    layout checked: what every reader and writer opens a store with."""
    from deit_pipe.storage.format import StoreSpec

    group = open_group(url, mode, storage_options)
    meta = read_meta(group, url)
    spec = StoreSpec.from_meta(meta)
    check_layout(group, spec, url, meta.get(GROWING, {}).get("epochs"))
    return group, meta, spec
