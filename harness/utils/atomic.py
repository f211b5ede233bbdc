"""Atomic file writes: a temp file in the target's folder, fsync, then ``os.replace``.

A crash mid-write leaves the previous file intact, never a truncated one; readers see
the old or the new content. Used for checkpoints, ``summary.json`` and the results tables.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable


# The process's umask, read once at import (os.umask can only be read by setting it):
# mkstemp creates files 0600, the written file gets what open() would have given it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(f)`` on a binary temp file next to ``path``, then move it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Indented JSON plus a final newline; values JSON does not know are written as str."""
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
