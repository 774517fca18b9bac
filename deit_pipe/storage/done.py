"""Which shards of a store are done: the `done` flags, read once per snapshot (`Progress`),
and a damaged flag named in one line (`DoneFlagError`) unless `--repair` reads around it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deit_pipe.errors import StoreCorruptError, StoreError
from deit_pipe.place import storage_errors


@dataclass(frozen=True)
class Progress:
    """Which shards are done, per split: one snapshot of each split's `done` flags (on an
    object store, one request per (epoch, shard) cell, so read it once and ask it)."""

    done: dict[str, np.ndarray]  # split → [E, S] bool
    # split → (array path, epoch, shard) of done flags whose chunk does not decode (read as
    # not done); only a tolerant read (`--repair`) returns any
    damaged: dict[str, list[tuple[str, int, int]]] = field(default_factory=dict)

    def missing(self, split: str = "train") -> list[tuple[int, int]]:
        """(epoch, shard) not done."""
        return [(int(e), int(s)) for e, s in np.argwhere(~self.done[split])]

    def complete_epochs(self, split: str = "train") -> list[int]:
        return [int(e) for e in np.flatnonzero(self.done[split].all(axis=1))]


class DoneFlagError(StoreCorruptError):
    """A shard's `done` flag chunk does not decode: `precompute --repair` rebuilds it."""

    def __init__(self, url: str, damaged: list[tuple[str, int, int]]):
        where, epoch, shard = damaged[0]
        more = f" (and {len(damaged) - 1} more)" if len(damaged) > 1 else ""
        super().__init__(
            f"{url}: the done flag of {where} epoch {epoch} shard {shard} is damaged (its chunk "
            f"{where}/done/c/{epoch}/{shard} fails its checksum){more}; rerun the precompute "
            "command with --repair: it rebuilds the flags from the shards' checksums"
        )
        self.damaged = damaged


def read_done(group, where: str, epochs: slice) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """The `done` flags of `epochs` of the split group at `where` (`teachers/B/train`), and
    the (where, epoch, shard) cells whose chunk does not decode, read as not done. One read
    of the rows; cell by cell only when that fails."""
    flags = group[where]["done"]
    try:
        return np.asarray(flags[epochs]), []
    except StoreError:
        raise
    except Exception:  # zarr raises ValueError/RuntimeError on a bad checksum or codec
        rows = range(*epochs.indices(flags.shape[0]))
        done, damaged = np.zeros((len(rows), flags.shape[1]), bool), []
        for i, e in enumerate(rows):
            for s in range(flags.shape[1]):
                try:
                    done[i, s] = bool(flags[e, s])
                except StoreError:
                    raise
                except Exception:
                    damaged.append((where, e, s))
        return done, damaged


def read_progress(
    group, spec, url: str, *prefixes: str, tolerant: bool = False, absent: tuple[str, ...] = ()
) -> Progress:
    """The `done` flags of the epochs the metadata holds (a growing store's arrays may
    already hold more): of one teacher's arrays (`prefixes`: where they live), or of
    several (a shard is done when it is done for each). A damaged flag is a `DoneFlagError`
    naming it, unless `tolerant` (`--repair`): then it reads as not done and is listed.
    Split groups in `absent` (missing an array: inspect's) read as not done at all."""
    done, damaged = {}, {}
    with storage_errors(url):
        for s in spec.splits:
            if any(p + s in absent for p in prefixes):
                done[s] = np.zeros((spec.split_epochs(s), spec.num_shards(s)), bool)
                damaged[s] = []
                continue
            rows = [read_done(group, p + s, slice(0, spec.split_epochs(s))) for p in prefixes]
            done[s] = np.logical_and.reduce([r[0] for r in rows])
            damaged[s] = [cell for r in rows for cell in r[1]]
    bad = [cell for cells in damaged.values() for cell in cells]
    if bad and not tolerant:
        raise DoneFlagError(url, bad)
    return Progress(done, damaged)
