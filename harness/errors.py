"""User-facing errors: each is printed as one line by the CLI, which exits with code 2."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError


class HarnessError(Exception):
    """A problem the user can fix (bad config, missing data, ...). Message: one line, with the fix."""

    exit_code = 2
    prefix = "[red]error:[/red]"


class ConfigError(HarnessError):
    """An invalid config, override, or experiment file."""


class DataError(HarnessError):
    """A missing or malformed dataset layout."""


class ResultsError(HarnessError):
    """A missing, empty or foreign results table."""


class ClusterError(HarnessError):
    """A Ray cluster that cannot be reached."""


class SweepFailedError(HarnessError):
    """A sweep whose every trial failed (the reason is in trials.parquet)."""

    exit_code = 1


class SweepInterrupted(HarnessError):
    """Ctrl-C (SIGINT) or SIGTERM stopped a sweep; it continues with --resume."""

    exit_code = 130
    prefix = "[yellow]interrupted:[/yellow]"


def printable(text: object) -> str:
    """``str(text)`` with every character that is not printable (``\\n``, ``\\r``, ``\\t``, other
    control and line/paragraph separators) escaped as ``repr()`` writes it, so that a message
    built from user text (a key, a ``--set`` item, a path) stays one line; the rest as is."""
    s = str(text)
    return s if s.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


def validation_error_message(error: ValidationError, source: str) -> str:
    """One line from pydantic's first error: ``source: dotted.key: what is wrong`` (keys and
    messages built from user text escaped by :func:`printable`)."""
    err = error.errors()[0]
    loc = ".".join(str(x) for x in err["loc"] if not str(x).startswith("function-after"))
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    return printable(f"{source}: {loc or '(top level)'}: {msg}")


def config_error(error: ValidationError, source: str) -> ConfigError:
    """The ConfigError to raise (``from None``) for a config that failed validation."""
    return ConfigError(validation_error_message(error, source))
