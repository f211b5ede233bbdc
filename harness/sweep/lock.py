"""One driver per sweep: ``<storage>/<experiment>/sweep.lock``.

A local lock file is held with ``fcntl.flock`` for the driver's whole life and names
its holder (pid, host, start time, command). The kernel drops a flock when its process
dies, however it dies, so a killed driver never blocks the next one on the same host.
A second driver is refused with one line naming the holder.

A lock file whose flock is free but that names another host (a network file system
that does not pass flocks between hosts, or a driver on another machine that died
without cleaning up) is not taken silently: the user confirms the holder is dead with
``--take-over``. On ``s3://`` (and other object stores) there is no flock: the lock is
a plain object, checked and then written, so it catches a second driver started later
but not two started in the same instant (docs/reliability.md).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from harness.utils.clock import utc_iso
from harness.errors import HarnessError

LOCK = "sweep.lock"


class SweepLockedError(HarnessError):
    """Another driver holds the sweep's lock."""


def holder_info() -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started_at": utc_iso(),
        "command": " ".join(["harness", *sys.argv[1:]])[:300],
    }


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, "
            f"started {holder.get('started_at')}")


def _parse(text: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
        return doc if isinstance(doc, dict) else {}
    except ValueError:
        return {}


class SweepLock:
    """The lock of one experiment folder; ``acquire()`` or raise, ``release()`` at exit."""

    def __init__(self, store, take_over: bool = False, resume_hint: str = ""):
        self.store = store
        self.take_over = take_over
        self.resume_hint = resume_hint
        self._fd: int | None = None
        self.info: dict[str, Any] = {}

    def _refuse(self, holder: dict[str, Any], dead_elsewhere: bool = False) -> None:
        path = self.store.path(LOCK)
        if dead_elsewhere:
            raise SweepLockedError(
                f"{path}: a driver ({_describe(holder)}) holds this sweep and cannot be checked "
                f"from {socket.gethostname()}; if it is no longer running, add --take-over"
            )
        raise SweepLockedError(
            f"another driver is running this sweep ({_describe(holder)}); wait for it or stop it "
            f"(kill -INT {holder.get('pid')} on {holder.get('host')}), then {self.resume_hint or 'resume'}"
        )

    def acquire(self) -> "SweepLock":
        if self.store.filesystem is not None:
            return self._acquire_object()
        root = Path(self.store.root)
        root.mkdir(parents=True, exist_ok=True)
        path = root / LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                self._refuse(_parse(_read_text(path)))
            # The holder may have unlinked the file between our open and flock: then we
            # hold a lock on a dead inode; start again on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            break
        previous = _parse(os.pread(fd, 1 << 16, 0).decode(errors="replace"))
        if previous and not self.take_over and previous.get("host") != socket.gethostname():
            # flock is free, yet a driver on another host wrote this file and did not
            # remove it: its flock may simply not reach us (network file system).
            os.close(fd)
            self._refuse(previous, dead_elsewhere=True)
        self.info = holder_info()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.info).encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _acquire_object(self) -> "SweepLock":
        if self.store.exists(LOCK) and not self.take_over:
            holder = _parse(self.store.read_bytes(LOCK).decode(errors="replace"))
            same_host = holder.get("host") == socket.gethostname()
            if not (same_host and isinstance(holder.get("pid"), int) and not pid_alive(holder["pid"])):
                self._refuse(holder, dead_elsewhere=not same_host)
        self.info = holder_info()
        self.store.write_bytes(LOCK, json.dumps(self.info).encode())
        return self

    def release(self) -> None:
        if self.store.filesystem is not None:
            if self.info:
                try:
                    self.store.delete(LOCK)
                except OSError:
                    pass
                self.info = {}
            return
        if self._fd is None:
            return
        try:  # unlink while still holding the flock: nobody can be mid-takeover
            Path(self.store.path(LOCK)).unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "SweepLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
