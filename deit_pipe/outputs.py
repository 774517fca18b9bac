"""Output directories (runs, audits, the demo): written only where deit-pipe may write.

A command writes into a directory that does not exist, is empty, or holds nothing but the
entries that command itself writes (a previous output of the same kind, which it replaces).
Anything else — a user's folder, another tool's files — is refused in one line and left as it
is. `--out ""` (the current directory, to most tools) is refused too.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from deit_pipe.errors import OutputPathError

LOCK_NAME = ".deit-pipe.lock"  # storage.lock writes it; never counted as a user's file


def entries(path: Path) -> list[str]:
    """What a directory holds, leaving out deit-pipe's lock file."""
    return sorted(e for e in os.listdir(path) if e != LOCK_NAME)


def check_output_dir(path: Path | str, owned: Iterable[str], what: str) -> Path:
    """`path` as a Path, if `what` may write `owned` entries there; refuses anything else."""
    text = str(path)
    if not text.strip():
        raise OutputPathError(f"the {what} path is empty: name a new directory")
    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputPathError(
            f"{path} is a file, not a directory: choose a new path for the {what}"
        )
    if path.is_dir():
        foreign = [e for e in entries(path) if e not in set(owned)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise OutputPathError(
                f"{path} holds files deit-pipe did not write ({shown}); the {what} is written "
                "only into a new or empty directory or over its own earlier output: choose "
                "another path (nothing was changed)"
            )
    return path


def replace_owned(path: Path, owned: Iterable[str]) -> None:
    """Remove the `owned` entries of a directory `check_output_dir` accepted, and only those."""
    for name in owned:
        target = path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()


def make_dir(path: Path, what: str) -> Path:
    """`mkdir -p`, with a failure (permissions, a file in the way, a full disk) as one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputPathError(f"cannot create the {what} {path}: {reason}") from None
    return path
