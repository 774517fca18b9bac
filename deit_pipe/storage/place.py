"""Where a store may be made, and what `--overwrite` may remove: never what deit-pipe did not write.

A store is created only at a path that does not exist or is an empty directory. An existing
path is classified before anything is written: a deit-pipe store (its metadata says so), one
whose creation was interrupted (the root carries the `deit_pipe_creating` marker, written
before anything else), a damaged root (unreadable `zarr.json`), or something else — a file,
a folder of the user's, another tool's Zarr group — which is refused, not cleared.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

from deit_pipe.errors import LockedError, OutputPathError, StoreCorruptError
from deit_pipe.outputs import is_ours
from deit_pipe.storage.format import ATTR_KEY, CREATING_KEY, STORE_ENTRIES
from deit_pipe.storage.io import atomic_write, file_system, is_local, storage_errors
from deit_pipe.storage.lock import WriterLock


@dataclass(frozen=True)
class Place:
    state: str  # absent | empty | store | creating | damaged | foreign | file
    entries: tuple[str, ...] = ()  # names at the root, ours excluded (lock, temp files)
    reason: str = ""

    @property
    def foreign(self) -> list[str]:
        """Root entries deit-pipe does not write."""
        return [e for e in self.entries if e not in STORE_ENTRIES]


def probe(url: str, storage_options: dict | None = None) -> Place:
    """What is at `url` now; reads only."""
    if not url.strip():
        raise OutputPathError("the output path is empty: name a new directory or URL")
    fs, base = file_system(url, storage_options)
    with storage_errors(url):
        if not fs.exists(base):
            return Place("absent")
        if fs.isfile(base):
            return Place("file")
        names = sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(base, detail=False))
        entries = tuple(n for n in names if n and not is_ours(n))
        if not entries:
            return Place("empty")
        if "zarr.json" not in entries:
            return Place("foreign", entries)
        try:
            attrs = json.loads(fs.cat_file(f"{base}/zarr.json")).get("attributes") or {}
        except (ValueError, AttributeError) as exc:
            return Place("damaged", entries, reason=f"{type(exc).__name__}: {exc}"[:120])
    if isinstance(attrs.get(ATTR_KEY), dict) and "format_version" in attrs[ATTR_KEY]:
        return Place("store", entries)
    if isinstance(attrs.get(CREATING_KEY), dict):
        return Place("creating", entries)
    return Place("foreign", entries)


def refuse_unusable(url: str, place: Place) -> None:
    """One line for a path a store can never be made at (no flag changes that)."""
    if place.state == "file":
        raise OutputPathError(f"{url} is a file, not a store: choose a new path for --out")
    if place.state == "foreign":
        shown = ", ".join(place.entries[:3]) + (", …" if len(place.entries) > 3 else "")
        raise OutputPathError(
            f"{url} exists and is not a deit-pipe store (it holds {shown}); a store is made "
            "only in a new or empty directory: choose another --out (nothing was changed)"
        )
    if place.state == "damaged":
        raise StoreCorruptError(
            f"{url}/zarr.json is unreadable ({place.reason}); if this was a deit-pipe store, "
            "restore the file or move the folder away (nothing was changed)"
        )


def refuse_foreign_entries(url: str, place: Place) -> None:
    """`--overwrite` replaces a store only when it holds nothing but what deit-pipe wrote."""
    if place.foreign:
        raise OutputPathError(
            f"{url} holds files deit-pipe did not write ({', '.join(place.foreign[:3])}): "
            "move them away before --overwrite replaces the store (nothing was changed)"
        )


def write_root(url: str, attributes: dict, storage_options: dict | None = None) -> None:
    """The root group's `zarr.json`, replaced atomically (a crash leaves old or new)."""
    fs, base = file_system(url, storage_options)
    doc = {
        "attributes": attributes,
        "zarr_format": 3,
        "consolidated_metadata": None,
        "node_type": "group",
    }
    with storage_errors(url):
        atomic_write(fs, f"{base}/zarr.json", json.dumps(doc, indent=2).encode())


def clear_store(url: str, storage_options: dict | None = None) -> None:
    """Mark the root as being (re)created, then remove the store's own entries — in that
    order, so an interrupted clear still reads as deit-pipe's and is finished by a rerun."""
    stamp = {"since": datetime.now(UTC).isoformat(timespec="seconds")}
    write_root(url, {CREATING_KEY: stamp}, storage_options)
    fs, base = file_system(url, storage_options)
    with storage_errors(url):
        for name in STORE_ENTRIES:
            if name != "zarr.json" and fs.exists(f"{base}/{name}"):
                fs.rm(f"{base}/{name}", recursive=True)


PREPARING = "(preparing the store)"  # a holder's purpose that ends soon: wait for it
PREPARE_WAIT = 120.0  # seconds


@contextmanager
def store_lock(url: str, purpose: str, storage_options: dict | None = None) -> Iterator[WriterLock]:
    """Hold the store's writer lock; a local directory is made for it if there is none yet
    (and removed again if the job stops before anything else was written into it). A holder
    that is only preparing the store (another precompute creating or growing it) is waited
    for, up to `PREPARE_WAIT` seconds: jobs on other epochs start side by side."""
    fs, base = file_system(url, storage_options)
    made = False
    if is_local(url) and not fs.exists(base):
        with storage_errors(url):
            os.makedirs(base)
        made = True
    deadline = time.monotonic() + PREPARE_WAIT
    try:
        while True:
            try:
                lock = WriterLock(url, purpose, storage_options=storage_options).__enter__()
                break
            except LockedError as exc:
                brief = str(exc.holder.get("purpose", "")).endswith(PREPARING)
                if not brief or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        try:
            yield lock
        finally:
            lock.release()
    finally:
        if made and not [e for e in os.listdir(base) if not is_ours(e)]:
            for name in os.listdir(base):  # the lock, and a claim its job still holds
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(base, name))
            os.rmdir(base)
