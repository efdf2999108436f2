"""Errors that mean "the user gave us something wrong", as opposed to a bug.

The CLI prints these as one line and exits with status 2, without a traceback.
"""


class SelfMMError(Exception):
    """A user-facing error: bad input file, bad configuration, bad path."""


class DataError(SelfMMError):
    """A feature file that cannot be read or fails validation."""


class ConfigError(SelfMMError):
    """An unknown key, a wrong type or an out-of-range value in the configuration."""
