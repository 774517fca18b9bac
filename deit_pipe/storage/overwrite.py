"""Where a store may be made, and what `--overwrite` may remove: never what deit-pipe did not write.

Before a store is cleared (or grown into a folder that exists), every path below its root is
classified: what the format writes (`format.is_format_path`) may go, anything else — a
user's notes in `train/`, a backup folder in `teachers/` — refuses the job, naming it.

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
from deit_pipe.place import Place
from deit_pipe.storage.format import (
    ATTR_KEY,
    CREATING_KEY,
    GROWING,
    is_format_path,
)
from deit_pipe.storage.lock import WriterLock


@dataclass(frozen=True)
class Found:
    """What is at a store's path now."""

    state: str  # absent | empty | store | creating | damaged | foreign | file
    entries: tuple[str, ...] = ()  # names at the root, ours excluded (lock, temp files)
    reason: str = ""


def probe(place: Place | str) -> Found:
    """What is at `place` now; reads only."""
    place = Place.of(place)
    if not place.url.strip():
        raise OutputPathError("the output path is empty: name a new directory or URL")
    fs, base = place.fs, place.base
    with place.errors():
        if not fs.exists(base):
            return Found("absent")
        if fs.isfile(base):
            return Found("file")
        names = sorted(os.path.basename(p.rstrip("/")) for p in fs.ls(base, detail=False))
        entries = tuple(n for n in names if n and not is_ours(n))
        if not entries:
            return Found("empty")
        if "zarr.json" not in entries:
            return Found("foreign", entries)
        try:
            attrs = json.loads(fs.cat_file(f"{base}/zarr.json")).get("attributes") or {}
        except (ValueError, AttributeError) as exc:
            return Found("damaged", entries, reason=f"{type(exc).__name__}: {exc}"[:120])
    if isinstance(attrs.get(ATTR_KEY), dict) and "format_version" in attrs[ATTR_KEY]:
        return Found("store", entries)
    if isinstance(attrs.get(CREATING_KEY), dict):
        return Found("creating", entries)
    return Found("foreign", entries)


def refuse_unusable(url: Place | str, found: Found) -> None:
    """One line for a path a store can never be made at (no flag changes that)."""
    if found.state == "file":
        raise OutputPathError(f"{url} is a file, not a store: choose a new path for --out")
    if found.state == "foreign":
        shown = ", ".join(found.entries[:3]) + (", …" if len(found.entries) > 3 else "")
        raise OutputPathError(
            f"{url} exists and is not a deit-pipe store (it holds {shown}); a store is made "
            "only in a new or empty directory: choose another --out (nothing was changed)"
        )
    if found.state == "damaged":
        raise StoreCorruptError(
            f"{url}/zarr.json is unreadable ({found.reason}); if this was a deit-pipe store, "
            "restore the file or move the folder away (nothing was changed)"
        )


def store_teachers(place: Place | str) -> list[str]:
    """The added teachers a store's root names, whose folders under `teachers/` are its own:
    those its metadata lists, one a growth was adding when it stopped (`GROWING`), and those
    an interrupted clear was removing (`CREATING_KEY`). Read as written, unverified: it only
    decides what may be removed, and an edited name could only keep more."""
    place = Place.of(place)
    with place.errors():
        try:
            attrs = json.loads(place.fs.cat_file(place.path("zarr.json"))).get("attributes") or {}
        except (FileNotFoundError, ValueError, AttributeError):
            return []
    meta = attrs.get(ATTR_KEY) if isinstance(attrs.get(ATTR_KEY), dict) else {}
    names = list(meta.get("more_teachers") or {})
    for stamp in (meta.get(GROWING), attrs.get(CREATING_KEY)):
        if isinstance(stamp, dict):
            names += [str(n) for n in stamp.get("teachers") or []]
    return names


def store_paths(
    place: Place | str, teachers: list[str], under: str = ""
) -> tuple[list[str], list[str], list[str]]:
    """(files, folders, foreign) below a store's root (or its folder `under`), as paths
    relative to the root: the files and folders the format writes (`is_format_path`), and
    the topmost paths it does not — a user's, never removed. The root's lock and claim
    files are in none of them (jobs hold them)."""
    place = Place.of(place)
    fs, base = place.fs, place.base
    top = f"{base}/{under}".rstrip("/")
    with place.errors():
        if not fs.exists(top):
            return [], [], []
        found = fs.find(top, withdirs=True, detail=True)
    files, folders, foreign = [], [], []
    for path in sorted(found):
        rel = path[len(base) + 1 :]
        if not rel or ("/" not in rel and is_ours(rel)):
            continue
        parents = rel.split("/")
        if set(foreign) & {"/".join(parents[:i]) for i in range(1, len(parents))}:
            continue  # inside a foreign folder already named
        if not is_format_path(rel, teachers):
            foreign.append(rel)
        elif found[path]["type"] == "directory":
            folders.append(rel)
        else:
            files.append(rel)
    return files, folders, foreign


def refuse_foreign(
    url: Place | str, foreign: list[str], before: str = "the store is replaced"
) -> None:
    """One line naming the first path below a store that deit-pipe did not write, and how
    many others there are."""
    if foreign:
        more = f" (and {len(foreign) - 1} more such path(s))" if len(foreign) > 1 else ""
        raise OutputPathError(
            f"{str(url).rstrip('/')}/{foreign[0]} was not written by deit-pipe{more}; move it out "
            f"of the store before {before} (nothing was changed)"
        )


def write_root(place: Place | str, attributes: dict) -> None:
    """The root group's `zarr.json`, replaced atomically (a crash leaves old or new)."""
    place = Place.of(place)
    doc = {
        "attributes": attributes,
        "zarr_format": 3,
        "consolidated_metadata": None,
        "node_type": "group",
    }
    place.write_atomic("zarr.json", json.dumps(doc, indent=2).encode())


def clear_store(place: Place | str) -> None:
    """Remove a store's own entries, and only those, so it can be made anew.

    Everything below the root is classified first; anything the format does not write (a
    user's notes, a backup folder) refuses the clear before anything is removed. The root is
    then marked as being (re)created, naming the added teachers whose folders go, so an
    interrupted clear still reads as deit-pipe's and a rerun finishes it. Locally files are
    removed one by one and folders only once empty, so a file that appeared meanwhile stays.
    """
    place = Place.of(place)
    teachers = store_teachers(place)
    files, folders, foreign = store_paths(place, teachers)
    refuse_foreign(place, foreign)
    stamp = {"since": datetime.now(UTC).isoformat(timespec="seconds"), "teachers": teachers}
    write_root(place, {CREATING_KEY: stamp})
    fs, base = place.fs, place.base
    with place.errors():
        gone = [f"{base}/{f}" for f in files if f != "zarr.json"]
        if gone:
            fs.rm(gone)
        for folder in sorted(folders, key=lambda f: -f.count("/")):  # the deepest first
            if place.local:
                os.rmdir(f"{base}/{folder}")  # refuses a folder something appeared in
            else:  # object stores have no folders; an in-memory one has empty markers
                with contextlib.suppress(OSError):
                    fs.rmdir(f"{base}/{folder}")


PREPARING = "(preparing the store)"  # a holder's purpose that ends soon: wait for it
PREPARE_WAIT = 120.0  # seconds


@contextmanager
def store_lock(place: Place | str, purpose: str) -> Iterator[WriterLock]:
    """Hold the store's writer lock; a local directory is made for it if there is none yet
    (and removed again if the job stops before anything else was written into it). A holder
    that is only preparing the store (another precompute creating or growing it) is waited
    for, up to `PREPARE_WAIT` seconds: jobs on other epochs start side by side."""
    place = Place.of(place)
    fs, base = place.fs, place.base
    made = False
    if place.local and not fs.exists(base):
        with place.errors():
            try:
                os.makedirs(base)
                made = True
            except FileExistsError:  # a job on other epochs made it a moment ago
                made = False
    deadline = time.monotonic() + PREPARE_WAIT
    try:
        while True:
            try:
                lock = WriterLock(place, purpose).__enter__()
                break
            except LockedError as exc:
                # a holder that has not yet said who it is was taken a moment ago: wait too
                brief = not exc.holder or str(exc.holder.get("purpose", "")).endswith(PREPARING)
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
