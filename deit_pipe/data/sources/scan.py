"""Up-front check of every image of a source, in parallel threads (decoding frees the GIL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from deit_pipe.data.sources.cache import DataCache
from deit_pipe.data.sources.source import SPLITS, Source, open_source
from deit_pipe.errors import DataError


@dataclass
class ScanReport:
    data: str
    checked: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (sample name, reason)
    ignored: list[tuple[str, str]] = field(default_factory=list)  # not read: `Source.ignored`

    @property
    def ok(self) -> bool:
        return not self.bad


def scan(source: Source, workers: int = 8) -> ScanReport:
    """Decode every stored image (files, Parquet rows, tar members) of every split; collect
    the unreadable ones instead of stopping. In-memory arrays need no check."""
    report = ScanReport(source.data, ignored=list(source.ignored))
    splits = [source.split(s) for s in SPLITS if s in source.splits]
    items = [(split, i) for split in splits if split.paths is not None for i in range(len(split))]

    def check(item) -> tuple[str, str] | None:
        split, index = item
        try:
            split.load(index)
        except DataError as exc:
            return split.paths[index], str(exc)
        return None

    # In order: neighbours share a Parquet row group, which each shard split caches.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, items))
    report.checked = len(items)
    report.bad = [r for r in results if r is not None]
    return report


def open_checked(
    data: str,
    skip_bad: bool = False,
    workers: int = 8,
    data_options: dict | None = None,
    data_cache: DataCache | None = None,
) -> Source:
    """Open a source; with `skip_bad`, scan it and exclude (and record) unreadable images."""
    opened = {"data_options": data_options, "data_cache": data_cache}
    source = open_source(data, **opened)
    if not skip_bad:
        return source
    report = scan(source, workers)
    if report.ok:
        return source
    return open_source(data, skip=dict(report.bad), **opened)
