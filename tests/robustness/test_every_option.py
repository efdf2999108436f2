"""Every option of every command, given a value of the wrong type and an absurd one, ends in exit
status 2 and one line (no traceback, no status 1 of a bug, no hang). The cases are generated
from the parser itself, so a new option is covered when it is added.

The commands get inputs that do not exist, so that a value that passes its checks still ends
the command at once: what is shown is that each option's value is refused, or reaches the
command's own checks, as one line. A NUL byte is left out: no shell can put one in argv.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from selfmm.cli import main
from selfmm.cli.parser import build_parser

from .test_user_errors import minimal_args


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def bad_values(action: argparse.Action) -> list[tuple[str, str]]:
    """(kind, value) pairs: a value of the wrong type and absurd ones, for one option."""
    if action.nargs == 0:  # a flag: given a value
        return [("wrong type", "yes")]
    if action.choices:
        return [("wrong type", "not-a-choice"), ("absurd", "x" * 5000)]
    if action.type is int:
        return [("wrong type", "1.5"), ("absurd", str(10**30)), ("absurd", str(-10**30))]
    if action.type is float:
        return [("wrong type", "ten"), ("absurd", "inf"), ("absurd", "nan"), ("absurd", "-1e308")]
    return [("wrong type", ""), ("absurd", "x" * 5000), ("absurd", "/dev/null")]


def cases() -> list[tuple[str, str, str, str]]:
    found = []
    for command, parser in subparsers().items():
        for action in parser._actions:
            if not action.option_strings or action.dest in ("help", "debug", "force", "resume"):
                continue  # --force and --resume are exercised by test_outputs
            flag = max(action.option_strings, key=len)
            found += [(command, flag, kind, value) for kind, value in bad_values(action)]
    return found


CASES = cases()


@pytest.mark.parametrize("command, flag, kind, value", CASES,
                         ids=[f"{c} {f} {k} {v[:12]}" for c, f, k, v in CASES])
def test_every_option_with_a_bad_value_is_one_line_and_exit_2(command, flag, kind, value, tmp_path, capsys):
    args = [*minimal_args(command, tmp_path), f"{flag}={value}"]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own refusal
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, (args[-1][:80], err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("selfmm: error:")]
    assert len(lines) == 1 and err.count("\n") <= 2, err  # the error, and at most one warning


def test_the_cases_cover_every_option():
    options = {(c, max(a.option_strings, key=len)) for c, p in subparsers().items() for a in p._actions
               if a.option_strings and a.dest not in ("help", "debug", "force", "resume")}
    assert options == {(c, f) for c, f, _, _ in CASES}
    assert len(options) > 60 and Path(__file__).exists()
