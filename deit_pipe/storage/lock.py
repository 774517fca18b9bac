"""One writer per store and per run directory: a lock file locally, a lease on object stores.

Locally the lock is `flock` on `DIR/.deit-pipe.lock`: the kernel drops it when its holder
exits, however it dies (kill -9 included), so a crashed job never blocks its own rerun. The
file also names its holder, which a refused second writer prints.

Object stores have no locks: there the same object is a lease — the holder's name and an
expiry, renewed by a thread every `ttl / 3` seconds and deleted on release. A second writer
is refused until the lease expires (or at once, if the holder ran on this host and its
process is gone). Two writers starting within the same instant could both write a lease;
each reads it back and the loser refuses, which leaves a window of one round trip.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

from deit_pipe.errors import LockedError
from deit_pipe.outputs import LOCK_NAME
from deit_pipe.place import Place

LEASE_TTL = 120.0  # seconds an object-store lease lives without renewal


def _holder(purpose: str) -> dict:
    return {
        "purpose": purpose,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": datetime.now(UTC).isoformat(timespec="seconds"),
        "token": uuid.uuid4().hex,
    }


def describe(holder: dict) -> str:
    return (
        f"{holder.get('purpose', 'a deit-pipe job')} (pid {holder.get('pid')} on "
        f"{holder.get('host')}, since {holder.get('since')})"
    )


class WriterLock:
    """Held while a job writes `place` (a store or a run directory); a context manager.

    `what` names the thing in the refusal ("this store", "this run directory", "epochs 2–3
    of this store"); `name` is the lock's file (a store's epoch claims have their own). The
    directory must exist locally (the caller made it, or it is a store); on object stores
    nothing need exist.
    """

    def __init__(
        self,
        place: Place | str,
        purpose: str,
        *,
        what: str = "this store",
        name: str = LOCK_NAME,
        ttl: float = LEASE_TTL,
        remove: bool = False,
    ):
        self.place = place = Place.of(place)
        self.url, self.purpose, self.what, self.ttl = place.url, purpose, what, ttl
        self.remove = remove  # delete the lock file on release (an epoch claim's)
        self.fs, self.path, self.local = place.fs, place.path(name), place.local
        self.holder = _holder(purpose)
        self._fd: int | None = None
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> WriterLock:
        if self.local:
            self._lock_file()
        else:
            self._take_lease()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def _refuse(self, holder: dict) -> LockedError:
        return LockedError(
            f"{self.url}: {self.what} is in use by {describe(holder)}; wait for it to "
            "finish or stop it (one writer at a time)",
            holder,
        )

    def _lock_file(self) -> None:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = read_holder(lambda: os.pread(fd, 4096, 0))
            for _ in range(40):  # taken a moment ago: its holder writes who it is right after
                if holder:
                    break
                time.sleep(0.05)
                holder = read_holder(lambda: os.pread(fd, 4096, 0))
            os.close(fd)
            raise self._refuse(holder) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.holder).encode(), 0)
        self._fd = fd

    def _take_lease(self) -> None:
        with self.place.errors():
            current = self._read_lease()
            if current and not lease_expired(current):
                raise self._refuse(current)
            self._write_lease()
            time.sleep(0.2)  # let a writer that raced us land its lease, then see who won
            if (self._read_lease() or {}).get("token") != self.holder["token"]:
                raise self._refuse(self._read_lease() or {})
        self._renewer = threading.Thread(target=self._renew, name="lease-renewer", daemon=True)
        self._renewer.start()

    def _read_lease(self) -> dict | None:
        try:
            return read_holder(lambda: self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None

    def _write_lease(self) -> None:
        self.holder["expires"] = time.time() + self.ttl
        self.fs.pipe_file(self.path, json.dumps(self.holder).encode())

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 3):
            with contextlib.suppress(Exception):  # a transient error: the next renewal retries
                self._write_lease()

    def release(self) -> None:
        if self._fd is not None:
            if self.remove:  # a job probing it meanwhile finds a lock it takes: harmless
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)
            os.close(self._fd)  # closing drops the flock; the store lock's file stays
            self._fd = None
        if self._renewer is not None:
            self._stop.set()
            self._renewer.join()
            self._renewer = None
            try:
                if (self._read_lease() or {}).get("token") == self.holder["token"]:
                    self.fs.rm_file(self.path)
            except Exception:  # an expired lease is as good as a deleted one
                pass


def read_holder(read) -> dict:
    try:  # the first JSON object: a holder may have died mid-write, leaving a tail
        value, _ = json.JSONDecoder().raw_decode((read() or b"{}").decode())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def lease_expired(holder: dict) -> bool:
    """A lease past its expiry, or one held by a process of this host that no longer runs."""
    if float(holder.get("expires", 0)) < time.time():
        return True
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
    return False


def local_holder(directory: str, name: str = LOCK_NAME) -> dict | None:
    """Who holds a local directory's lock now (its holder record), or None, taking nothing:
    a shared flock fails only while a writer holds the exclusive one."""
    import fcntl

    try:
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
    except OSError:  # no lock file (never written there) or unreadable: nobody we can name
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_holder(lambda: os.pread(fd, 4096, 0))
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
