"""Paths a user passes on the command line, checked before any work starts.

Each check raises a one-line :class:`~harness.errors.ConfigError` naming the option,
the path and what to do: a file where a folder is expected and the reverse, a
missing file, a folder nothing can be written into (checked by a real write: permission
bits do not bind root, and a read-only mount refuses even root).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from harness.errors import ConfigError


def cache_dir() -> Path:
    """The harness's cache folder (built datasets, pre-resized images): ``$HARNESS_CACHE_DIR``
    or ``~/.cache/metric-harness``."""
    return Path(os.environ.get("HARNESS_CACHE_DIR") or Path.home() / ".cache" / "metric-harness")


def can_write(folder: Path) -> bool:
    """Whether a file can really be created in ``folder`` (a write, not the permission bits)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".harness-probe-", dir=folder)
        os.close(fd)
        os.unlink(tmp)
        return True
    except OSError:
        return False


def existing_ancestor(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def writable_folder(path: str | Path, option: str, shown: str | Path | None = None) -> Path:
    """A folder that exists and is writable, or can be created in a writable place;
    ``shown``: the path the user gave, when it is a file inside ``path``."""
    p = Path(path).expanduser().absolute()
    path = path if shown is None else shown
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{option} {path}: is a file, not a folder; give a folder path")
    probe = existing_ancestor(p)
    if not probe.is_dir():
        raise ConfigError(f"{option} {path}: {probe} is a file, not a folder; give another path")
    if not can_write(probe):
        raise ConfigError(f"{option} {path}: {probe} is not writable (read-only or no permission); "
                          f"give a folder you can write to")
    return p


def writable_file(path: str | Path, option: str) -> Path:
    """A file path whose folder is (or can be made) writable; not an existing folder."""
    p = Path(path).expanduser().absolute()
    if p.is_dir():
        raise ConfigError(f"{option} {path}: is a folder; give a file name inside it")
    writable_folder(p.parent, option, shown=path)
    if p.exists() and not os.access(p, os.W_OK):
        raise ConfigError(f"{option} {path}: the file is read-only; give another file name")
    return p


def readable_file(path: str | Path, what: str) -> Path:
    """An existing regular file (a folder or a missing path is one line)."""
    p = Path(path).expanduser()
    if p.is_dir():
        raise ConfigError(f"{what} {path}: is a folder, not a file")
    if not p.exists():
        raise ConfigError(f"{what} not found: {path}")
    if not os.access(p, os.R_OK):
        raise ConfigError(f"{what} {path}: not readable (no permission)")
    return p


def readable_folder(path: str | Path, option: str) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise ConfigError(f"{option} {path}: no such folder")
    if not p.is_dir():
        raise ConfigError(f"{option} {path}: is a file, not a folder; give the folder")
    return p
