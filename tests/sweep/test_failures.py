"""Which trial errors are a full disk (harness/sweep/failures.py, harness/sweep/disk.py)."""

from __future__ import annotations

import errno
import logging

from ray.exceptions import RayTaskError

from harness.sweep.disk import DiskFullLogFilter, DiskFullStop, human_bytes
from harness.sweep.failures import disk_full, is_deterministic


def enospc(filename: str | None = None) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", filename)


def raised_from(outer: type[BaseException], inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException:
            raise outer("wrapped")  # noqa: B904 - the implicit context is the point
    except BaseException as e:
        return e


def test_a_full_disk_is_found_through_causes_contexts_and_ray_task_errors():
    assert disk_full(enospc()) is not None
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded")) is not None
    assert disk_full(raised_from(RuntimeError, enospc("/s/x"))).filename == "/s/x"
    stop = DiskFullStop(enospc())
    stop.__cause__ = stop.error
    assert disk_full(raised_from(RuntimeError, stop)) is stop.error
    task = RayTaskError("train", "Traceback ... OSError: [Errno 28] ...", enospc("/s/y"))
    assert disk_full(task).filename == "/s/y"
    # Tune's own wrapping keeps only the traceback text
    assert disk_full(RuntimeError("Traceback\nOSError: [Errno 28] Error writing bytes")) is not None


def test_other_errors_are_not_a_full_disk():
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(RuntimeError("simulated worker failure")) is None
    assert disk_full(None) is None


def test_a_full_disk_is_never_reported_as_a_failed_trial():
    # the trainable raises it (the trial stays resumable); the driver stops the sweep
    assert not is_deterministic(enospc(), started_training=False)
    assert not is_deterministic(raised_from(ValueError, enospc()), started_training=False)
    assert is_deterministic(ValueError("bad"), started_training=False)


def test_tune_log_records_of_a_full_disk_are_dropped():
    keep = DiskFullLogFilter()
    record = logging.LogRecord("ray.tune", logging.ERROR, __file__, 1, "Trial task failed", None,
                               (OSError, enospc(), None))
    assert not keep.filter(record)
    other = logging.LogRecord("ray.tune", logging.ERROR, __file__, 1, "Trial task failed", None,
                              (RuntimeError, RuntimeError("boom"), None))
    assert keep.filter(other)


def test_sizes_read_as_people_write_them():
    assert human_bytes(0) == "0 B" and human_bytes(407_500) == "407.5 KB"
    assert human_bytes(1.2e6) == "1.2 MB" and human_bytes(3e12) == "3.0 TB"
