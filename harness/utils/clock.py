"""The one UTC clock: timestamps in results, lock files, reports and file names."""

from __future__ import annotations

import datetime as dt


def utc_now() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.timezone.utc)


def utc_iso() -> str:
    """``2026-11-26T21:05:00+00:00`` (ISO 8601, to the second)."""
    return utc_now().isoformat(timespec="seconds")


def utc_stamp() -> str:
    """``20261126T210500Z``: a compact UTC time for file names."""
    return utc_now().strftime("%Y%m%dT%H%M%SZ")


def utc_display(when: dt.datetime | None = None) -> str:
    """``2026-11-26 21:05:00 UTC`` (for people: reports)."""
    return (when or utc_now()).strftime("%Y-%m-%d %H:%M:%S UTC")
