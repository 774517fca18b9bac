"""Helpers the test files share (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checksums(folder: Path) -> dict[str, str]:
    """SHA-256 of every file below `folder`, by relative path: proof nothing was changed."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
