"""Upper bounds on the user's numbers that size allocations, checked before anything is
created: a typo (`--input-size 100000`) must be one line, not a job the kernel's
out-of-memory killer stops after it has taken the node's memory from other jobs."""

from __future__ import annotations

import os

from deit_pipe.errors import check

MAX_INPUT_SIZE = 4096  # pixels a side: 4× the largest published DeiT/ViT fine-tuning size
MAX_BATCH = 65_536  # views per batch: 64× DeiT's global batch of 1024
MAX_EPOCHS = 100_000
MAX_SHARD_VIEWS = 1 << 20  # 16× the default cap of 65,536 views a shard
MAX_WORKERS = 256  # processes or threads a command starts on this machine
# Per-image and per-view counts that size the plan's arrays (DeiT uses 3 repeats, timm's
# random erasing at most a few boxes); far above any recipe, far below an allocation error.
MAX_REPEATS = 1024
MAX_RE_COUNT = 1024

GiB = 1 << 30


def memory_bytes() -> int:
    """This machine's physical memory (a generous 1 TiB where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def check_batch_fits(batch: int, size: int, flag: str = "--batch-size") -> None:
    """Refuse a batch whose float32 pixels alone would take more than half this machine's
    memory: the model's activations need several times more, so it could never run."""
    need = batch * 3 * size * size * 4
    have = memory_bytes()
    check(
        need <= have // 2,
        f"{flag} {batch} of {size}×{size} views needs {need / GiB:,.1f} GiB for its pixels "
        f"alone, more than half of this machine's {have / GiB:,.1f} GiB: lower {flag} or "
        "--input-size",
    )


def check_at_most(value: int | None, high: int, flag: str) -> None:
    """Refuse `value` (None: unset, accepted) above `high`, naming `flag`."""
    if value is not None:
        check(value <= high, f"{flag} must be ≤ {high:,}, got {value:,}")
