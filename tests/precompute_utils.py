"""Helpers shared by precompute tests (importable by dask worker processes by value)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from deit_pipe.pipeline.tasks import run_task


def die_once(job, split, epoch, shard):
    """A task that kills its worker process the first time any task runs (marker file, which
    records the worker's allocator and thread settings)."""
    marker = Path(os.environ["DEIT_PIPE_TEST_MARKER"])
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return run_task(job, split, epoch, shard)
    settings = {k: os.environ.get(k) for k in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}
    os.write(fd, json.dumps(settings).encode())
    os.close(fd)
    os._exit(1)
