"""Which order an epoch's samples take: `global` or `blocks:W`, resolved once per store.

The block order (see `data.plan.epoch`) is the default for sharded sources (`parquet:`, `wds:`),
where reading a sample means reading its block; `global` stays the default elsewhere. An
unsized `--order blocks` takes the largest window whose blocks stay under `WINDOW_BYTES`,
so a rank's loader holds at most about two windows (one ending, one starting) at a time.
The resolved W is recorded with the recipe, so the plan never depends on the machine.
"""

from __future__ import annotations

import numpy as np

from deit_pipe.data.sources.split import Split
from deit_pipe.errors import PlanError

SHARDED = ("parquet", "wds")
WINDOW_BYTES = 128 << 20  # a window's stored bytes; a rank's loader holds ≤ 2 windows


def default_order(data: str) -> str:
    """`blocks` for sharded sources, `global` for files and in-memory arrays."""
    return "blocks" if data.partition(":")[0] in SHARDED else "global"


def resolve_order(order: str | None, data: str, split: Split) -> str:
    """`--order` (None: the source's default) as the recipe records it: `global` or
    `blocks:W` with W chosen from the split's block size when not given."""
    order = (order or default_order(data)).strip().lower()
    kind, colon, window = order.partition(":")
    if kind == "global" and not colon:
        return "global"
    if kind != "blocks" or (colon and not (window.isdigit() and int(window) >= 1)):
        raise PlanError(f"--order must be global, blocks or blocks:W (W ≥ 1 blocks), got {order!r}")
    blocks = len(split.blocks())
    w = int(window) if window else auto_window(split.block_bytes())
    return f"blocks:{min(w, blocks)}"


def auto_window(block_bytes: float) -> int:
    return max(1, int(WINDOW_BYTES // max(block_bytes, 1.0)))


def describe_order(order: str, split: Split) -> str:
    """One line for `--dry-run`: the order, its blocks and the memory a window takes."""
    if not order.startswith("blocks:"):
        return "order: global (a seeded permutation of every sample per epoch)"
    w, blocks = int(order.partition(":")[2]), split.blocks()
    size = split.block_bytes()
    per_block = len(split) / max(len(blocks), 1)
    return (
        f"order: {order} — {len(blocks):,} blocks ({split.block_unit}, {per_block:.0f} samples, "
        f"{size / 2**20:.1f} MiB each), shuffled within windows of {w} "
        f"({w * per_block:,.0f} samples, {w * size / 2**20:.0f} MiB); a rank's loader holds "
        f"≤ {2 * w * size / 2**20:.0f} MiB"
    )


def sorted_blocks_warning(order: str, split: Split) -> str | None:
    """A warning when blocks hold few classes each (data written sorted by class): a window
    of W such blocks mixes only about W classes into a batch."""
    if not order.startswith("blocks:") or len(split) < 2:
        return None
    blocks = split.blocks()
    ends = np.append(blocks[1:], len(split))
    distinct = [len(np.unique(split.labels[a:b])) for a, b in zip(blocks, ends, strict=True)]
    classes = len(np.unique(split.labels))
    expected = min(classes, int(np.median(ends - blocks)))
    mean = float(np.mean(distinct))
    if classes < 2 or mean >= expected / 4:
        return None
    return (
        f"the blocks hold {mean:.1f} classes each on average (of {classes}): the data looks "
        f"sorted by class, so a window mixes few classes; write the shards shuffled (as the "
        f"Hub and WebDataset's tools do), widen the window, or use --order global"
    )
