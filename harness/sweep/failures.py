"""Why a trial failed, in one line, and whether trying again could help.

A configuration or data problem (a :class:`~harness.errors.HarnessError`, or a
``TypeError``/``ValueError``/... raised while the trial builds its model, loss and
data, before its first epoch) fails the same way on every retry: the trainable reports
it as the trial's final result (status ``failed``, the reason in ``trials.parquet``'s
``error`` column) instead of raising, so Tune does not retry it ``max_failures`` times.
Anything else (a lost worker, out of memory, a crash mid-training) is raised and
retried from the trial's last checkpoint.

A full disk (:func:`disk_full`: ``ENOSPC``/``EDQUOT`` anywhere in the error's chain) is
neither: a retry would write into the same full disk, and reporting the trial as
``failed`` would drop it from the sweep. The trainable raises it (the trial stays
resumable from its last checkpoint) and the driver stops the whole sweep at the first
one (:mod:`harness.sweep.disk`).
"""

from __future__ import annotations

import errno
import re

from harness.errors import HarnessError

# Raised by code, not by circumstance: a retry runs the same code on the same config.
DETERMINISTIC = (HarnessError, TypeError, ValueError, KeyError, AttributeError, ImportError,
                 NotImplementedError, AssertionError, IndexError)


# A disk (or quota) with no room left: the errno, or its message where a library
# re-raised it under another type (torch's "file write failed", Tune's traceback text).
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_TEXT = re.compile(r"No space left on device|Disk quota exceeded|\[Errno (28|122)\]")


def disk_full(error: BaseException | None) -> BaseException | None:
    """The disk-full error in ``error``'s chain (its causes and contexts, and the
    ``cause`` of a Ray task error), or None."""
    chain, stack, seen = [], [error], set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        chain.append(e)
        cause = getattr(e, "cause", None)  # a RayTaskError's original exception
        stack += [e.__context__, e.__cause__, cause if isinstance(cause, BaseException) else None]
    for e in chain:
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            return e
    for e in chain:  # no errno: the message (a re-raise lost the type, a traceback text)
        if _DISK_FULL_TEXT.search(str(e)):
            return e
    return None


def is_deterministic(error: BaseException, started_training: bool) -> bool:
    """Whether retrying the trial cannot succeed (a full disk is neither: see
    :func:`disk_full`)."""
    if disk_full(error) is not None:
        return False
    if getattr(error, "retryable", False):  # e.g. a weights download that met the network
        return False
    if isinstance(error, HarnessError):
        return True
    return not started_training and isinstance(error, DETERMINISTIC)


def one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    first = text[0].strip() if text else ""
    name = type(error).__name__
    line = f"{name}: {first}" if first else name
    return line[:500]


_EXC_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)[\w]*)(:.*)?$")


def reason_from_traceback(text: str | None) -> str | None:
    """The last ``SomeError: message`` line of a traceback text (Tune's error file)."""
    if not text:
        return None
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    for line in reversed(lines):
        m = _EXC_LINE.match(line)
        if m and not line.startswith(("ray.exceptions.RayTaskError", "RayTaskError")):
            return line[:500]
    return lines[-1][:500] if lines else None
