"""User-facing errors: each is printed as one line by the CLI, which exits with code 2."""


class HarnessError(Exception):
    """A problem the user can fix (bad config, missing data, ...). Message: one line, with the fix."""

    exit_code = 2


class ConfigError(HarnessError):
    """An invalid config, override, or experiment file."""


class DataError(HarnessError):
    """A missing or malformed dataset layout."""


class ResultsError(HarnessError):
    """A missing, empty or foreign results table."""
