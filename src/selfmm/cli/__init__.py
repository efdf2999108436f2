"""The `selfmm` command: parse, call the library, print. Nothing else in selfmm imports this.

User mistakes (SelfMMError) print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import warnings

from ..errors import SelfMMError
from .parser import build_parser

EXIT_USAGE = 2
# Packages of the optional extras, for a one-line answer when a command needs one.
EXTRAS = {"fastapi": "serve", "uvicorn": "serve", "python_multipart": "serve", "av": "video",
          "cv2": "video", "librosa": "video", "opensmile": "video"}


def _quiet_libraries() -> None:
    """Our own progress bars and messages are enough; silence the libraries' chatter."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"selfmm: warning: {message}", file=sys.stderr)


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command. Only its module is imported: `selfmm --help` needs no torch."""
    module, name = args.handler.split(":")
    return int(getattr(importlib.import_module(f"{__name__}.{module}"), name)(args) or 0)


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
            return dispatch(args)
    except SelfMMError as exc:
        print(f"selfmm: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        if exc.name not in EXTRAS:
            raise
        print(f"selfmm: error: {args.command} needs the package {exc.name}: "
              f"pip install 'selfmm[{EXTRAS[exc.name]}]'", file=sys.stderr)
        return EXIT_USAGE
    except OSError as exc:
        # The environment failed us (a full disk, a vanished directory): one line, not a trace.
        print(f"selfmm: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("selfmm: interrupted", file=sys.stderr)
        return 130
