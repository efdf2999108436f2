"""The `selfmm` command: parse, call the library, print. Nothing else in selfmm imports this.

Every failure is one line on stderr: a user's mistake (SelfMMError, a path that does not exist
or cannot be written) exits with status 2; anything unexpected (a bug) with status 1 and a
pointer to `--debug`, which prints the traceback too.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import re
import shlex
import sys
import threading
import traceback
import warnings
from collections.abc import Sequence

from ..errors import SelfMMError
from ..pools import Terminated, keep_interrupts, terminate_as_interrupt
from .outputs import check_output
from .parser import build_parser

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 128 + 2  # the shell's status for SIGINT (Ctrl-C)
EXIT_TERMINATED = 128 + 15  # and for SIGTERM
# Errors of the system calls that name what the user gave: a path that is missing, a folder
# for a file, a name too long, no permission, a full or read-only disk. Anything else
# (EIO, ENOMEM, ...) is the machine's.
USER_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.ELOOP, errno.EEXIST,
               errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EFBIG,
               errno.ENOTEMPTY, errno.EXDEV, errno.ETXTBSY}
# Library parameters whose flag is not `--` + the name with dashes.
PARAMETER_FLAGS = {"replace": "--force", "overrides": "--set", "assignments": "--set", "file": "--config"}
# A parameter as a library message names it: `name`, `name=True` (a flag without a value) or
# `name=VALUE`.
_NAMED = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)(=[^`]*)?`")


def with_flags(message: str, options: Sequence[str]) -> str:
    """A library message with the parameters it names shown as the command's flags (those of
    `options`): `out` -> --out, `resume=True` -> --resume, `max_epochs=4` -> --max-epochs 4."""
    def flag(match: re.Match[str]) -> str:
        name, value = match.group(1), match.group(2)
        shown = PARAMETER_FLAGS.get(name, "--" + name.replace("_", "-"))
        if shown not in options:
            return match.group(0)
        return shown if value in (None, "=True") else f"{shown} {value[1:]}"

    return _NAMED.sub(flag, message)


def options_of(command: str) -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return [flag for action in sub.choices[command]._actions for flag in action.option_strings]


# Packages of the optional extras, for a one-line answer when a command needs one.
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "python_multipart": "serve", "av": "video",
          "cv2": "video", "librosa": "video", "opensmile": "video", "ai_edge_litert": "video",
          "faster_whisper": "asr", "ctranslate2": "asr"}


def _quiet_libraries() -> None:
    """Our own progress bars and messages are enough; silence the libraries' chatter."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"selfmm: warning: {message}", file=sys.stderr)


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command: its output policy first (selfmm.cli.outputs), then its handler.
    Only the handler's module is imported: `selfmm --help` needs no torch."""
    with check_output(args):
        module, name = args.handler.split(":")
        return int(getattr(importlib.import_module(f"{__name__}.{module}"), name)(args) or 0)


def _os_error(exc: OSError) -> tuple[str, int]:
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f is not None)
    line = f"{where}: {exc.strerror}" if where and exc.strerror else str(exc)
    return line, EXIT_USAGE if exc.errno in USER_ERRNOS else EXIT_FAILURE


def failure(exc: BaseException, command: str) -> tuple[str, int]:
    """The one line and the exit status of an exception that ended a command."""
    if isinstance(exc, SelfMMError):
        return with_flags(str(exc), options_of(command)), EXIT_USAGE
    if isinstance(exc, ModuleNotFoundError) and exc.name in EXTRAS:
        return (f"{command} needs the package {exc.name}: pip install 'selfmm[{EXTRAS[exc.name]}]'",
                EXIT_USAGE)
    if isinstance(exc, OSError):
        return _os_error(exc)
    first = (str(exc).strip().splitlines() or [""])[0]
    return (f"unexpected {type(exc).__name__}{': ' + first if first else ''} (a bug in selfmm; "
            "run again with --debug for the traceback, and report it)", EXIT_FAILURE)


def _quiet_threads() -> None:
    """The command is ending on Ctrl-C or SIGTERM. A background thread that a library left running
    may fail on its way out (multiprocessing's resource sharer, handing a tensor to a data-loader
    worker the signal ended, loses its connection): its traceback would be the only one shown."""
    threading.excepthook = lambda args: None


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.invocation = shlex.join(["selfmm", *argv])  # what a run records as its command
    try:
        with warnings.catch_warnings():
            # One line per distinct warning on stderr, for each command, even in a process
            # that ran others before (a notebook, a test runner that records warnings).
            warnings.simplefilter("default")
            warnings.showwarning = _show_warning
            with keep_interrupts(), terminate_as_interrupt():
                return dispatch(args)
    except Terminated:
        _quiet_threads()
        print("selfmm: terminated", file=sys.stderr)
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        _quiet_threads()
        print("selfmm: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the one guard: no command ends in a bare traceback
        line, status = failure(exc, args.command)
        if args.debug:
            traceback.print_exc()
        print(f"selfmm: error: {' '.join(line.split())}", file=sys.stderr)
        return status
