"""Errors that mean "the user gave us something wrong", as opposed to a bug.

The CLI prints these as one line and exits with status 2, without a traceback. A library
error names the Python parameters it is about in backquotes (`out`, `resume=True`,
`max_upload_mb`); the command line shows its own flags there instead (--out, --resume,
--max-upload-mb; selfmm.cli.with_flags).
"""

from __future__ import annotations

import sys
import warnings


class SelfMMError(Exception):
    """A user-facing error: bad input file, bad configuration, bad path."""


class DataError(SelfMMError):
    """A feature file that cannot be read or fails validation."""


class ConfigError(SelfMMError):
    """An unknown key, a wrong type or an out-of-range value in the configuration."""


class ArgumentError(SelfMMError, ValueError):
    """An argument of a library function that is of the right type but not a value it takes."""


class ArgumentTypeError(SelfMMError, TypeError):
    """An argument of a library function of the wrong type."""


def warn(message: str) -> None:
    """A UserWarning shown at the caller's own line: the first frame outside selfmm, however many
    of its functions and wrappers (selfmm.checks) stand between."""
    frame, level = sys._getframe(1), 2  # level 1 is this function
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "selfmm":
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)
