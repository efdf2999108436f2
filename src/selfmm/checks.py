"""The library's front door: every public function checks its arguments before any work.

    @checked(text_len=integer(1, MAX_TEXT_LEN), audio_len=optional(integer(1, MAX_FRAMES)))
    def extract_clip(video_path, transcript, tokenizer, *, text_len=50, audio_len=None): ...

A rule is a plain function `value -> value` (it may convert: a path where data belongs is
loaded) that raises `Wrong(expects)` for a value it does not take. `checked` runs the rules of
the arguments a call gives (defaults are the library's own and are not checked), in the order
of the signature, before the function's body, and turns a `Wrong` into an error that names the
parameter, what it got and what it takes:

    `seeds`: expected a non-empty list of distinct integers in [0, 2^32), got []

`ArgumentTypeError` (a TypeError) for a value of the wrong kind, `ArgumentError` (a ValueError)
for one of the right kind out of range; both are SelfMMErrors, so the command line prints them
as one line, showing its flag where the message names the parameter (selfmm.cli).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import ArgumentError, ArgumentTypeError

Rule = Callable[[Any], Any]
F = TypeVar("F", bound=Callable[..., Any])
SHOWN = 80  # characters of a value shown in a message


class Wrong(Exception):
    """Raised by a rule: `expects` says what the parameter takes; `kind`: the value's type is
    wrong (TypeError) rather than its value (ValueError)."""

    def __init__(self, expects: str, kind: bool = False) -> None:
        super().__init__(expects)
        self.expects = expects
        self.kind = kind


def shown(value: Any) -> str:
    """A value as a message shows it: short, with its type where the repr does not tell it."""
    text = repr(os.fspath(value)) if isinstance(value, os.PathLike) else repr(value)
    if len(text) > SHOWN:
        text = text[:SHOWN - 3] + "..."
    if isinstance(value, (bool, int, float, str, type(None), os.PathLike, list, tuple, dict)):
        return text
    return f"{type(value).__name__} {text}"


def problem(name: str, value: Any, wrong: Wrong) -> ArgumentError:
    """The error for parameter `name` given `value`."""
    error = ArgumentTypeError if wrong.kind else ArgumentError
    return error(f"`{name}`: expected {wrong.expects}, got {shown(value)}")


def check(name: str, value: Any, rule: Rule) -> Any:
    """`rule(value)`, or the error naming `name`: for checks inside a function's body."""
    try:
        return rule(value)
    except Wrong as wrong:
        raise problem(name, value, wrong) from None


def checked(**rules: Rule) -> Callable[[F], F]:
    """Check the named parameters of each call with their rules before the body runs."""
    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        unknown = set(rules) - set(signature.parameters)
        if unknown:
            raise TypeError(f"{fn.__qualname__} has no parameter {', '.join(sorted(unknown))}")
        # Rules that load something (a path where data belongs) run after every other one.
        order = sorted((name for name in signature.parameters if name in rules),
                       key=lambda name: getattr(rules[name], "loads", False))

        @functools.wraps(fn)
        def call(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)  # a missing or unknown argument: Python's TypeError
            for name in order:
                if name in bound.arguments:
                    bound.arguments[name] = check(name, bound.arguments[name], rules[name])
            return fn(*bound.args, **bound.kwargs)

        def check_only(**arguments: Any) -> None:
            """The rules of the named arguments alone, for a caller that checks before its own
            work (the command line, before it loads data)."""
            for name, value in arguments.items():
                check(name, value, rules[name])

        call.check = check_only  # type: ignore[attr-defined]
        return call  # type: ignore[return-value]

    return decorate


# --- rules ---------------------------------------------------------------------------------


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() and abs(value) < 1e15 else f"{value:g}"


def _bounds(low: float | None, high: float | None, above: float | None = None) -> str:
    opening, start = ("(", above) if above is not None else ("[", low)
    if start is not None and high is not None:
        return f" in {opening}{_number(start)}, {_number(high)}]"
    if start is not None:
        return f" {'>' if above is not None else '>='} {_number(start)}"
    return f" <= {_number(high)}" if high is not None else ""


def integer(low: int | None = None, high: int | None = None) -> Rule:
    """An int (not a bool; numpy integers too) within [low, high]."""
    expects = f"an integer{_bounds(low, high)}"

    def rule(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise Wrong(expects, kind=True)
        if (low is not None and value < low) or (high is not None and value > high):
            raise Wrong(expects)
        return int(value)

    return rule


def number(low: float | None = None, high: float | None = None, *, above: float | None = None) -> Rule:
    """A finite real number within [low, high] (or (above, high])."""
    expects = "a finite number" + _bounds(low, high, above)

    def rule(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise Wrong(expects, kind=True)
        value = float(value)
        if (not math.isfinite(value) or (above is not None and value <= above)
                or (low is not None and value < low) or (high is not None and value > high)):
            raise Wrong(expects)
        return value

    return rule


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Wrong("True or False", kind=True)
    return value


def text(value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str):
        raise Wrong("a string", kind=True)
    if not value.strip():
        raise Wrong("a non-empty string")
    return value


def one_of(*choices: str) -> Rule:
    expects = f"one of {', '.join(map(repr, choices))}"

    def rule(value: Any) -> str:
        if not isinstance(value, str):
            raise Wrong(expects, kind=True)
        if value not in choices:
            raise Wrong(expects)
        return value

    return rule


def path(value: Any) -> Path:
    """A path: a str or an os.PathLike, not empty."""
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise Wrong("a path (str or pathlib.Path)", kind=True)
    if not os.fspath(value):
        raise Wrong("a non-empty path")
    return Path(value)


def instance(cls: type, what: str | None = None) -> Rule:
    expects = what or f"a {cls.__module__}.{cls.__qualname__}"

    def rule(value: Any) -> Any:
        if not isinstance(value, cls):
            raise Wrong(expects, kind=True)
        return value

    return rule


def attributes(*names: str, what: str) -> Rule:
    """An object with these attributes (a duck type: the class itself, or a stand-in for it)."""
    def rule(value: Any) -> Any:
        if not all(hasattr(value, name) for name in names):
            raise Wrong(what, kind=True)
        return value

    return rule


def optional(inner: Rule) -> Rule:
    """None, or what `inner` takes."""
    def rule(value: Any) -> Any:
        if value is None:
            return None
        try:
            return inner(value)
        except Wrong as wrong:
            raise Wrong(f"None or {wrong.expects}", wrong.kind) from None

    return rule


def sequence(item: Rule, what: str, *, distinct: bool = False, non_empty: bool = True) -> Rule:
    """A list or tuple (not a string) of items that each pass `item`; returned as a list."""
    def rule(value: Any) -> list[Any]:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            raise Wrong(what, kind=True)
        items = []
        for each in value:
            try:
                items.append(item(each))
            except Wrong as wrong:
                raise Wrong(what, wrong.kind) from None
        if (non_empty and not items) or (distinct and len(set(items)) != len(items)):
            raise Wrong(what)
        return items

    return rule
