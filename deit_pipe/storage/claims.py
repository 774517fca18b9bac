"""Which epochs of a store a precompute job fills, so jobs on disjoint epochs run at once.

A job holds the store's lock only while it creates or grows the store and writes its
manifest. It then *claims* what it computes, training epochs [first, stop) and val, with a
lock of its own (`.deit-pipe.lock.e0-100+val`) held until it ends. Claims are checked and
taken under the store's lock, so two jobs never miss each other: a live claim overlapping a
new one refuses the new job naming the holder; a dead one (its flock dropped by the kernel,
its lease expired) is removed. `--overwrite` and `--repair` claim everything.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from deit_pipe.errors import LockedError
from deit_pipe.outputs import LOCK_NAME
from deit_pipe.place import Place
from deit_pipe.storage.lock import WriterLock, describe, lease_expired, read_holder

_NAME = re.compile(r"^e(\d+)-(\d+|all)(\+val)?(@[A-Za-z0-9_.-]+)?$")


@dataclass(frozen=True)
class Claim:
    """Training epochs [first, stop) (`stop=None`: all of them) and, with `val`, the val
    split, of one teacher's arrays (`teacher=None`: every teacher's)."""

    first: int = 0
    stop: int | None = None
    val: bool = False
    teacher: str | None = None

    @property
    def name(self) -> str:
        stop = "all" if self.stop is None else self.stop
        teacher = "" if self.teacher is None else f"@{self.teacher}"
        return f"{LOCK_NAME}.e{self.first}-{stop}" + ("+val" if self.val else "") + teacher

    @classmethod
    def parse(cls, name: str) -> Claim | None:
        match = _NAME.match(name.removeprefix(LOCK_NAME + "."))
        if not name.startswith(LOCK_NAME + ".") or match is None:
            return None
        stop = None if match[2] == "all" else int(match[2])
        return cls(int(match[1]), stop, bool(match[3]), match[4][1:] if match[4] else None)

    def overlaps(self, other: Claim) -> bool:
        if self.teacher and other.teacher and self.teacher != other.teacher:
            return False

        def below(a: int, stop: int | None) -> bool:
            return stop is None or a < stop

        trains = below(self.first, other.stop) and below(other.first, self.stop)
        return (self.val and other.val) or (trains and self._trains() and other._trains())

    def _trains(self) -> bool:
        return self.stop is None or self.stop > self.first

    def __str__(self) -> str:
        epochs = (
            "every epoch"
            if self.stop is None
            else f"epoch {self.first}"
            if self.stop == self.first + 1
            else f"epochs {self.first}–{self.stop - 1}"
        )
        what = epochs + (" and val" if self.val else "") if self._trains() else "val"
        return what + (f" of teacher {self.teacher}" if self.teacher else "")


def take_claim(place: Place | str, claim: Claim, purpose: str) -> WriterLock:
    """Claim `claim` of the store (the caller holds the store's lock): refuse in one line if
    a live claim overlaps it, clear dead ones, and return the held claim (release it when
    the job ends)."""
    place = Place.of(place)
    with place.errors():
        names = [os.path.basename(p) for p in place.fs.glob(place.path(f"{LOCK_NAME}.*"))]
    for name in names:
        other = Claim.parse(name)
        if other is None:
            continue
        probe = WriterLock(place, "a check", name=name, remove=True)
        try:
            probe.__enter__()
        except LockedError as exc:
            if other.overlaps(claim):
                raise LockedError(
                    f"{place}: {describe(exc.holder)} is filling {other} in this store; give "
                    "this job other epochs (--epochs-range) or wait for that one to finish",
                    exc.holder,
                ) from None
            continue
        probe.release()  # a dead job's claim, taken: releasing it removes it
    lock = WriterLock(place, purpose, name=claim.name, what=f"{claim} in this store", remove=True)
    return lock.__enter__()


def running_jobs(place: Place | str) -> list[tuple[Claim, dict]]:
    """The claims of jobs filling the store now, with their holders (what `inspect` shows).
    Reads only: a local claim is live while its flock is held, a lease until it expires."""
    place = Place.of(place)
    with place.errors():
        paths = place.fs.glob(place.path(f"{LOCK_NAME}.*"))
    found = []
    for path in sorted(paths):
        claim = Claim.parse(os.path.basename(path))
        holder = _holder_if_live(place.fs, path, place.local) if claim else None
        if holder is not None:
            found.append((claim, holder))
    return found


def _holder_if_live(fs, path: str, local: bool) -> dict | None:
    try:
        if not local:
            holder = read_holder(lambda: fs.cat_file(path))
            return None if lease_expired(holder) else holder
        import fcntl

        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # the job ended as we looked
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # taken: nobody holds it
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    except BlockingIOError:
        return read_holder(lambda: os.pread(fd, 4096, 0))
    finally:
        os.close(fd)
