"""harness/sweep/lock.py in one process: one driver per sweep, on a local folder (flock)
and on an object store (a lock object; here pyarrow's local filesystem stands in for S3).
Killed holders and holders on other hosts: tests/end_to_end/test_faults.py."""

from __future__ import annotations

import json
import os
import socket

import pyarrow.fs
import pytest

from harness.sweep.lock import LOCK, SweepLock, SweepLockedError
from harness.sweep.results import ResultsStore


def test_a_second_driver_is_refused_while_the_first_holds_the_folder(tmp_path):
    store = ResultsStore(str(tmp_path), "exp")
    first = SweepLock(store).acquire()
    held = json.loads((tmp_path / "exp" / LOCK).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname() and held["started_at"]
    with pytest.raises(SweepLockedError, match=rf"pid {os.getpid()} on .*then continue with `it`"):
        SweepLock(store, resume_hint="continue with `it`").acquire()
    first.release()
    assert not (tmp_path / "exp" / LOCK).exists()
    with SweepLock(store):  # free again
        assert (tmp_path / "exp" / LOCK).exists()
    assert not (tmp_path / "exp" / LOCK).exists()


def object_store(tmp_path) -> ResultsStore:
    """A store whose writes go through a pyarrow filesystem, as for an s3:// storage."""
    store = ResultsStore(str(tmp_path), "exp")
    store._fs, store._root_path = pyarrow.fs.LocalFileSystem(), str(tmp_path / "exp")
    return store


def test_on_an_object_store_the_lock_object_names_its_holder(tmp_path):
    store = object_store(tmp_path)
    lock = SweepLock(store).acquire()
    assert json.loads((tmp_path / "exp" / LOCK).read_text())["pid"] == os.getpid()
    with pytest.raises(SweepLockedError, match=rf"pid {os.getpid()}"):
        SweepLock(store).acquire()  # a live holder on this host
    lock.release()
    assert not (tmp_path / "exp" / LOCK).exists()


def test_on_an_object_store_a_dead_holder_here_is_taken_over_one_elsewhere_is_not(tmp_path):
    store = object_store(tmp_path)
    (tmp_path / "exp").mkdir()
    dead = 2**22 + 12345  # above any pid this machine hands out
    (tmp_path / "exp" / LOCK).write_text(json.dumps({"pid": dead, "host": socket.gethostname()}))
    SweepLock(store).acquire().release()
    (tmp_path / "exp" / LOCK).write_text(json.dumps({"pid": 7, "host": "gpu-node-7"}))
    with pytest.raises(SweepLockedError, match=r"pid 7 on gpu-node-7.*--take-over"):
        SweepLock(store).acquire()
    SweepLock(store, take_over=True).acquire().release()
    assert not (tmp_path / "exp" / LOCK).exists()
