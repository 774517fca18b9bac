"""`make bench-cli`: how fast the CLI answers `--help` (target ≤ 1 s), as a new process.

Options are built from `deit_pipe.choices`, so loading the CLI imports no torch, timm or
zarr; this measures it, per command, as a user's shell would see it.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from report import record_section  # noqa: E402

COMMANDS = ("", "precompute", "inspect", "verify", "train", "eval", "audit", "demo", "views")


def help_seconds(command: str, repeats: int = 5) -> float:
    """Median wall time of `deit-pipe COMMAND --help` in a fresh interpreter."""
    args = [sys.executable, "-m", "deit_pipe", *([command] if command else []), "--help"]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_imports() -> list[str]:
    """Heavy modules importing the CLI pulls in (none expected)."""
    code = "import sys, deit_pipe.cli; print(' '.join(m for m in ('torch', 'timm', 'zarr', "
    code += "'dask', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return out.stdout.split()


def main() -> None:
    seconds = {c or "(group)": help_seconds(c) for c in COMMANDS}
    heavy = heavy_imports()
    rows = "\n".join(f"| `deit-pipe {c} --help` | {s:.2f} |" for c, s in seconds.items())
    text = (
        "## CLI start-up (`make bench-cli`)\n\n"
        f"Median of 5 fresh processes each, {os.cpu_count()} cores; target ≤ 1 s. Heavy "
        f"modules loaded with the CLI: {', '.join(heavy) or 'none'}.\n\n"
        "| command | seconds |\n|---|---|\n" + rows
    )
    record_section("cli", text)
    print(text)


if __name__ == "__main__":
    main()
