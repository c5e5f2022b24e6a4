"""Errors that the command line turns into one line and exit code 2."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (empty when it has none), for one-line reports."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


class GiabenchError(Exception):
    """Bad input from the user: a config, a name, a file. The message says what is wrong and where."""


class ConfigError(GiabenchError, ValueError):
    """A suite, cell or component parameter is invalid; ``field`` names the offending parameter when one does, so a
    suite can point at its line."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NotApplicable(GiabenchError):
    """An attack's preconditions fail on this cell (an architecture it cannot invert, a rank-deficient layer, a
    message it cannot read). The harness records the cell as not applicable with this reason instead of a score;
    ``details`` (a mapping) is stored with it."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}
