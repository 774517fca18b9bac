"""Output directories (runs, audits, the demo): written only where deit-pipe may write.

A command writes into a directory that does not exist, is empty, or holds nothing but the
entries that command itself writes (a previous output of the same kind, which it replaces).
Anything else — a user's folder, another tool's files — is refused in one line and left as it
is. `--out ""` (the current directory, to most tools) is refused too.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from deit_pipe.errors import OutputPathError

# storage.lock writes it (and `.deit-pipe.lock.CLAIM` files); never counted as a user's file
LOCK_NAME = ".deit-pipe.lock"
# What an interrupted `write_atomic` may leave behind: `.NAME.HEX.tmp`.
_TEMP = re.compile(r"^\.[^/]+\.[0-9a-f]{8}\.tmp$")


def is_ours(name: str) -> bool:
    """A directory entry deit-pipe leaves for itself (its lock, a temporary file), never
    counted as a user's file or as output."""
    return name == LOCK_NAME or name.startswith(LOCK_NAME + ".") or bool(_TEMP.match(name))


def entries(path: Path) -> list[str]:
    """What a directory holds, leaving out deit-pipe's own lock and temporary files."""
    return sorted(e for e in os.listdir(path) if not is_ours(e))


def write_atomic(path: Path | str, data: bytes) -> None:
    """Replace a local file all at once: a reader sees the old file or the new, never a
    truncated one (a full disk or a kill leaves the old file). Written to a temporary file
    beside it, synced, renamed over it."""
    folder, name = os.path.split(str(path))
    os.makedirs(folder or ".", exist_ok=True)
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
