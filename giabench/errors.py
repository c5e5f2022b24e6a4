"""Errors that the command line turns into one line and exit code 2."""


class GiabenchError(Exception):
    """Bad input from the user: a config, a name, a file. The message says what is wrong and where."""


class ConfigError(GiabenchError, ValueError):
    """A suite, cell or component parameter is invalid."""
