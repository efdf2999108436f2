"""Docs that cannot drift: docs/api.md's signatures against the objects, every public name
documented, `dir(selfmm)`, the README's layout against src/selfmm, and every command's flags
in docs/cli.md (and `selfmm serve`'s in docs/serve.md)."""

from __future__ import annotations

import argparse
import ast
import inspect
import re
from pathlib import Path

import pytest

import selfmm
from selfmm.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "selfmm"
API = ROOT / "docs" / "api.md"
# `--debug` on every command and `--force` on every one that writes a file: docs/cli.md says so.
COMMON_FLAGS = ("--help", "--debug", "--force")
ENTRY = re.compile(r"\*\*`selfmm\.(\w+)(\([^`]*\))?(?: -> [^`]*)?`\*\*")


class _Factory:
    def __repr__(self) -> str:
        return "..."


FACTORY = _Factory()  # a dataclass field's default factory, written `...` in the docs


def documented() -> dict[str, list[str | None]]:
    """Public name -> the parameter lists its docs/api.md entries give (None: no parentheses)."""
    entries: dict[str, list[str | None]] = {}
    for name, params in ENTRY.findall(API.read_text()):
        entries.setdefault(name, []).append(params or None)
    return entries


def parameters(params: str) -> str:
    """A parameter list, as `ast` reads it: names, kinds and default values, no annotations."""
    return ast.dump(ast.parse(f"def f{params}: pass").body[0].args)


def actual(obj: object) -> str | None:
    """The object's signature as a parameter list, without annotations; a dataclass field's
    default factory reads as `...`. None when it has none (a builtin's subclass)."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    plain = [p.replace(annotation=p.empty, default=FACTORY if repr(p.default) == "<factory>" else p.default)
             for p in signature.parameters.values()]
    return str(signature.replace(parameters=plain, return_annotation=signature.empty))


def test_the_entry_pattern_reads_signatures():
    text = '**`selfmm.f(a, b=1, *, c="x") -> int`** and **`selfmm.G`**'
    assert ENTRY.findall(text) == [("f", '(a, b=1, *, c="x")'), ("G", "")]
    assert parameters('(a, b=1, *, c="x")') == parameters("(a, b=1, *, c='x')")
    assert parameters("(a, b=1)") != parameters("(a, b=2)") != parameters("(a, *, b=2)")


def test_every_public_name_is_documented():
    entries = documented()
    assert sorted(set(selfmm.__all__) - {"__version__"} - set(entries)) == []
    assert sorted(set(entries) - set(selfmm.__all__)) == []  # nothing documented that is gone
    assert "`selfmm.__version__`" in API.read_text()


@pytest.mark.parametrize("name", sorted(set(selfmm.__all__) - {"__version__"}))
def test_api_md_signature_is_the_code_s(name):
    real = actual(getattr(selfmm, name))
    for params in documented().get(name, []):
        if real is None:
            assert params is None, f"docs/api.md gives selfmm.{name} a signature; it has none"
        else:
            assert params is not None, f"docs/api.md: give selfmm.{name} its signature: {real}"
            assert parameters(params) == parameters(real), (
                f"docs/api.md: selfmm.{name}{params}\n          the code: selfmm.{name}{real}")


def test_dir_shows_the_public_names_only():
    assert dir(selfmm) == sorted(selfmm.__all__)
    for private in ("Any", "TYPE_CHECKING", "annotations", "importlib", "cli", "data"):
        assert private not in dir(selfmm)


def layout_sections() -> dict[str, set[str]]:
    """The README's Layout block: package folder ("" for src/selfmm itself) -> the modules and
    subpackages it names. An entry line starts at column 2 and a line indented further continues
    it; an entry whose first word is a folder ("data/") names that package's modules, and names
    the folder in its parent's."""
    text = (ROOT / "README.md").read_text().split("## Layout", 1)[1]
    block = text.split("```", 2)[1].splitlines()
    assert block[1] == "src/selfmm/", block[:2]
    sections: dict[str, set[str]] = {"": set()}
    current = ""
    for line in filter(str.strip, block[2:]):
        if re.match(r"  \S", line):
            first = line.split()[0]
            current = first.rstrip("/") if first.endswith("/") else ""
            if current:
                parent, _, name = current.rpartition("/")
                sections.setdefault(parent, set()).add(name + "/")
                sections.setdefault(current, set())
        sections[current].update(re.findall(r"\w+\.py\b", line))
    return sections


def package_contents() -> dict[str, set[str]]:
    """Every package under src/selfmm -> its modules (no __init__/__main__) and subpackages."""
    found = {}
    for init in PACKAGE.rglob("__init__.py"):
        folder = init.parent
        key = folder.relative_to(PACKAGE).as_posix() if folder != PACKAGE else ""
        found[key] = ({p.name for p in folder.glob("*.py") if not p.name.startswith("__")}
                      | {f"{d.name}/" for d in folder.iterdir() if (d / "__init__.py").exists()})
    return found


def test_readme_layout_lists_every_module():
    sections, real = layout_sections(), package_contents()
    for package in sorted(set(sections) | set(real)):
        where = f"src/selfmm/{package}/" if package else "src/selfmm/"
        listed, modules = sections.get(package, set()), real.get(package, set())
        assert sorted(modules - listed) == [], f"README's Layout omits these of {where}"
        assert sorted(listed - modules) == [], f"README's Layout names what {where} does not hold"


def commands() -> dict[str, list[str]]:
    """Command -> its flags in the parser's order, without the common ones."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {name: [o for a in p._actions for o in a.option_strings if o.startswith("--") and o not in COMMON_FLAGS]
            for name, p in sub.choices.items()}


def flag_table() -> str:
    rows = [f"| `{name}` | {' '.join(f'`{flag}`' for flag in flags)} |" for name, flags in commands().items()]
    return "\n".join(["| command | flags |", "|---|---|", *rows])


def test_docs_cli_md_lists_every_command_s_flags():
    text = (ROOT / "docs" / "cli.md").read_text()
    assert "`--debug`" in text and "`--force`" in text
    assert flag_table() in text, ("docs/cli.md's table of flags is not the parser's; paste this over it:\n"
                                  + flag_table())


def test_docs_serve_md_explains_every_serve_flag():
    text = (ROOT / "docs" / "serve.md").read_text()
    missing = [flag for flag in commands()["serve"] if not re.search(rf"`{flag}[ `]", text)]
    assert missing == [], f"docs/serve.md's table of options lacks {missing}"
