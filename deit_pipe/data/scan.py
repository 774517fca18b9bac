"""Up-front check of every image file of a source, in parallel threads (decoding frees the GIL)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from deit_pipe.data.sources import SPLITS, Source, load_image, open_source
from deit_pipe.errors import DataError


@dataclass
class ScanReport:
    spec: str
    checked: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)

    @property
    def ok(self) -> bool:
        return not self.bad


def scan(source: Source, workers: int = 8) -> ScanReport:
    """Decode every file of every split; collect the unreadable ones instead of stopping."""
    report = ScanReport(source.spec)
    if source.root is None:
        return report
    paths = [p for name in SPLITS if name in source.splits for p in source.split(name).paths or []]

    def check(relpath: str) -> tuple[str, str] | None:
        try:
            load_image(source.root, relpath)
        except DataError as exc:
            return relpath, str(exc)
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(check, paths))
    report.checked = len(paths)
    report.bad = [r for r in results if r is not None]
    return report


def open_checked(spec: str, skip_bad: bool = False, workers: int = 8) -> Source:
    """Open a source; with `skip_bad`, scan it and exclude (and record) unreadable files."""
    source = open_source(spec)
    if not skip_bad:
        return source
    report = scan(source, workers)
    if report.ok:
        return source
    return open_source(spec, skip=dict(report.bad))
