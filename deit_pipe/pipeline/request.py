"""What store a precompute job makes, beyond the job's data, recipe and teacher."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class StoreRequest:
    """Epochs, splits and what is kept per view; checked in full by `storage.StoreSpec`.

    `shard_views=None` sizes shards and chunks per split from its view count
    (`storage.format.shard_layout`). `targets="hard"` keeps the teacher's top-1 alone.
    """

    epochs: int
    splits: tuple[str, ...] = ("train", "val")
    k: int = 10
    temperatures: tuple[float, ...] = (1.0, 3.0)
    value_dtype: str = "float16"
    shard_views: int | None = None
    targets: str = "soft"

    def resolved(self) -> StoreRequest:
        """A hard-target store keeps the top-1 class and no temperatures."""
        if self.targets == "hard":
            return replace(self, k=1, temperatures=())
        return replace(self, splits=tuple(self.splits), temperatures=tuple(self.temperatures))
