"""Opening stores at local paths or fsspec URLs, and reading their metadata."""

from __future__ import annotations

import fsspec
import zarr

from deit_pipe.errors import StoreFormatError
from deit_pipe.storage.format import ATTR_KEY, FORMAT_VERSION


def open_group(url: str, mode: str, storage_options: dict | None = None) -> zarr.Group:
    # zarr's LocalStore creates folders and is faster than fsspec's local filesystem.
    if url.startswith("file://"):
        url = url.removeprefix("file://")
    try:
        return zarr.open_group(url, mode=mode, storage_options=storage_options)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, ValueError, KeyError) as exc:
        raise StoreFormatError(f"no target store at {url} ({type(exc).__name__})") from None


def read_meta(group: zarr.Group, url: str) -> dict:
    """The store's metadata, refusing stores this version of deit-pipe cannot read."""
    meta = group.attrs.get(ATTR_KEY)
    if not isinstance(meta, dict):
        raise StoreFormatError(f"{url} is a Zarr group but not a deit-pipe store")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise StoreFormatError(
            f"{url} has store format version {version}; this deit-pipe reads version "
            f"{FORMAT_VERSION}"
        )
    return meta


def file_system(
    url: str, storage_options: dict | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for the store root, for the Parquet tables and sizes on disk."""
    fs, path = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, path.rstrip("/")
