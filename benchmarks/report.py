"""BENCHMARKS.md sections: each benchmark script rewrites its own, between its markers."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).parent.parent / "BENCHMARKS.md"


def record_section(name: str, text: str) -> None:
    """Replace the text between `<!-- name:begin -->` and `<!-- name:end -->` (appending the
    section if it is new); every other section stays as it is."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    current = BENCHMARKS.read_text() if BENCHMARKS.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text}\n{end}"
    if begin in current:
        current = current[: current.index(begin)] + block + current[current.index(end) + len(end) :]
    else:
        current = current.rstrip() + "\n\n" + block + "\n"
    BENCHMARKS.write_text(current)
