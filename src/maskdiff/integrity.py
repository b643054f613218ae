"""Files checked against a recorded size and sha256: checkpoint files and prepared token shards."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_digest(path: Path) -> str:
    """The sha256 of a file's contents, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_problem(path: Path, size: int, sha256: str, name: str | None = None) -> str | None:
    """What is wrong with ``path`` against its record (missing, truncated or grown, altered), or None;
    the message names the file as ``name`` (default: its file name)."""
    name = name or path.name
    if not path.is_file():
        return f"{name} is missing"
    if path.stat().st_size != size:
        return f"{name} has {path.stat().st_size} bytes instead of {size}"
    if file_digest(path) != sha256:
        return f"{name} does not match its checksum"
    return None
