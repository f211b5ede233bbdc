"""User-facing errors: each is printed as one line by the CLI, which exits with code 2."""


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
