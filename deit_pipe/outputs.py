"""Output directories (runs, audits, the demo): written only where deit-pipe may write.

A command writes into a directory that does not exist, is empty, or holds nothing but the
entries that command itself writes (a previous output of the same kind, which it replaces).
Anything else — a user's folder, another tool's files — is refused in one line and left as it
is. `--out ""` (the current directory, to most tools) is refused too. A folder that holds
only entries of those names is replaced only if deit-pipe marked it as its own output
(`OUTPUT_MARK`), or with `--force`: a user's folder that happens to hold a `report.md` is not.

A single file a command writes (`views --out`) never replaces an existing file unless
`--force` is given: a file carries no mark of who wrote it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

from deit_pipe.errors import OutputPathError

# storage.lock writes it (and `.deit-pipe.lock.CLAIM` files); never counted as a user's file
LOCK_NAME = ".deit-pipe.lock"
# In an output folder deit-pipe made: {"what": "audit report"} (a rerun may replace it).
OUTPUT_MARK = ".deit-pipe.output"
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
        foreign = [e for e in entries(path) if e not in {*owned, OUTPUT_MARK}]
        owner = deit_pipe_output(path)
        if foreign and owner is not None:  # ours, of another kind: say what it is
            raise OutputPathError(
                f"{path} is {owner}, not a folder for the {what}: choose another path "
                "(nothing was changed)"
            )
        if foreign:
            shown = ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
            raise OutputPathError(
                f"{path} holds files deit-pipe did not write ({shown}); the {what} is written "
                "only into a new or empty directory or over its own earlier output: choose "
                "another path (nothing was changed)"
            )
    return path


def check_replace(path: Path, owned: Iterable[str], what: str, force: bool) -> None:
    """Refuse to replace `owned` entries in a folder deit-pipe did not mark as its `what`
    (`check_output_dir` has refused anything else already), unless `force`."""
    present = [e for e in entries(path) if e in set(owned)] if path.is_dir() else []
    if present and not force and marked(path) != what:
        shown = ", ".join(present[:3]) + (", …" if len(present) > 3 else "")
        raise OutputPathError(
            f"{path} holds {shown}, which deit-pipe did not mark as its own {what} (no "
            f"{OUTPUT_MARK}): pass --force to replace them, or choose another path "
            "(nothing was changed)"
        )


def deit_pipe_output(path: Path) -> str | None:
    """What deit-pipe made `path` as, where it did ("a training run", "a target store", its
    marked kind), or None: refusals name deit-pipe's own outputs as such, not as foreign."""
    what = marked(path)
    if what is not None:
        return f"deit-pipe's {what}"
    if (path / "zarr.json").is_file():
        return "a target store"
    if (path / "checkpoint.pt").is_file() or (path / "metrics.jsonl").is_file():
        return "a training run"
    return None


def marked(path: Path) -> str | None:
    """What deit-pipe marked `path` as (`mark_output`), or None."""
    try:
        return str(json.loads((path / OUTPUT_MARK).read_text())["what"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def mark_output(path: Path, what: str) -> None:
    """Mark a folder deit-pipe (re)made as its `what`, so a rerun may replace its entries."""
    write_atomic(path / OUTPUT_MARK, json.dumps({"what": what}).encode())


def check_output_file(path: Path | str, what: str, suffixes: tuple[str, ...], force: bool) -> Path:
    """`path` as a Path, if a `what` may be written there: a name ending in one of `suffixes`
    (the format follows it), and no existing file unless `force` (never a folder)."""
    text = str(path)
    if not text.strip():
        raise OutputPathError(f"the {what} path is empty: name a file")
    path = Path(text).expanduser()
    if path.suffix.lower() not in suffixes:
        raise OutputPathError(
            f"{path}: the {what} is written as {', '.join(suffixes)} (the name's extension "
            "says which): name the file so"
        )
    if path.is_dir():
        raise OutputPathError(f"{path} is a directory: name a file for the {what}")
    if (path.exists() or path.is_symlink()) and not force:
        raise OutputPathError(
            f"{path} exists: pass --force to replace it, or choose another path "
            "(nothing was changed)"
        )
    return path


def write_output(path: Path, data: bytes, what: str) -> None:
    """`write_atomic` for a user-named output: a failure (a full disk, a read-only folder)
    is one line, and the old file, if any, stays."""
    try:
        make_dir(path.parent, f"folder for the {what}")
        write_atomic(path, data)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise OutputPathError(f"cannot write the {what} {path}: {reason}") from None


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
