"""Following a store that other jobs are still filling or extending: wait for an epoch's
shards (`wait_for_epoch`, polling only its `done` row) and re-read grown metadata
(`refresh`). A part of `TargetStore`, kept apart so the reading path stays short."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from deit_pipe.errors import StoreIncompleteError, StoreMismatchError
from deit_pipe.storage.io import open_store


class FollowStore:
    """`TargetStore`'s methods for a store still being filled (`train --follow`)."""

    def wait_for_epoch(
        self,
        epoch: int,
        split: str = "train",
        *,
        stall_timeout: float = 1800.0,
        poll: float = 2.0,
        on_wait: Callable[[int, int, int], None] | None = None,
    ) -> None:
        """Block until every shard of `epoch` is done, polling only its `done` row.

        Gives up when no further shard completes for `stall_timeout` seconds (the teacher
        stopped), with the counts and how to continue; `on_wait(epoch, done, total)` is
        called at each poll while waiting.
        """
        last_count, last_change = -1, time.monotonic()
        while True:
            if epoch >= self.spec.split_epochs(split):
                self.refresh()  # another job may be extending the store to this epoch
            grown = epoch < self.spec.split_epochs(split)
            done = self._done_row(split, epoch) if grown else np.zeros(0, bool)
            count = int(done.sum()) if grown else -1
            if grown and count == len(done):
                return
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif time.monotonic() - last_change > stall_timeout:
                state = f"{count}/{len(done)} done" if grown else "not in the store yet"
                raise StoreIncompleteError(
                    f"{self.url} {split} epoch {epoch}: no shard completed for "
                    f"{stall_timeout:g} s ({state}); is the precompute "
                    "running? Restart it, then continue with --resume --follow"
                )
            if on_wait:
                on_wait(epoch, max(count, 0), len(done))
            time.sleep(poll)

    def refresh(self) -> None:
        """Re-read the metadata of a store that other jobs are extending (more epochs, a new
        split); a store replaced by another job meanwhile is refused."""
        group, meta, spec = open_store(self.place, "r")
        if meta["created"] != self.meta["created"]:
            raise StoreMismatchError(
                f"{self.url} was replaced by another job (created {meta['created']}) while "
                "this run read it"
            )
        self.group, self.meta, self.spec = group, meta, spec
