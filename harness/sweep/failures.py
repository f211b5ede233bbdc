"""Why a trial failed, in one line, and whether trying again could help.

A configuration or data problem (a :class:`~harness.errors.HarnessError`, or a
``TypeError``/``ValueError``/... raised while the trial builds its model, loss and
data, before its first epoch) fails the same way on every retry: the trainable reports
it as the trial's final result (status ``failed``, the reason in ``trials.parquet``'s
``error`` column) instead of raising, so Tune does not retry it ``max_failures`` times.
Anything else (a lost worker, out of memory, a crash mid-training) is raised and
retried from the trial's last checkpoint.
"""

from __future__ import annotations

import re

from harness.errors import HarnessError

# Raised by code, not by circumstance: a retry runs the same code on the same config.
DETERMINISTIC = (HarnessError, TypeError, ValueError, KeyError, AttributeError, ImportError,
                 NotImplementedError, AssertionError, IndexError)


def is_deterministic(error: BaseException, started_training: bool) -> bool:
    """Whether retrying the trial cannot succeed."""
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
