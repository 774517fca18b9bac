"""What store a precompute job makes, beyond the job's data, recipe and teacher."""

from __future__ import annotations

from dataclasses import dataclass, replace

from deit_pipe.storage.claims import Claim


@dataclass(frozen=True)
class StoreRequest:
    """Epochs, splits and what is kept per view; checked in full by `storage.StoreSpec`.

    `shard_views=None` sizes shards and chunks per split from its view count
    (`storage.format.shard_layout`). `targets="hard"` keeps the teacher's top-1 alone.
    The job computes training epochs [first_epoch, epochs); the store holds at least
    `epochs` (it grows to them, and keeps any it held beyond).
    """

    epochs: int
    splits: tuple[str, ...] = ("train", "val")
    k: int = 10
    temperatures: tuple[float, ...] = (1.0, 3.0)
    value_dtype: str = "float16"
    shard_views: int | None = None
    targets: str = "soft"
    first_epoch: int = 0

    def claim(self, teacher: str) -> Claim:
        """What of a store this job computes for `teacher` (its lock while it runs)."""
        trains = "train" in self.splits
        stop = self.epochs if trains else self.first_epoch
        return Claim(self.first_epoch, stop, "val" in self.splits, teacher)

    def resolved(self) -> StoreRequest:
        """A hard-target store keeps the top-1 class and no temperatures."""
        if self.targets == "hard":
            return replace(self, k=1, temperatures=())
        return replace(self, splits=tuple(self.splits), temperatures=tuple(self.temperatures))
