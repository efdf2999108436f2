"""The package's import graph: no cycle, the command line imported by nothing else, and imports
inside functions only of third-party packages (heavy or optional ones), never of selfmm."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"


def module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Module -> the selfmm modules it imports at run time (type-checking imports left out);
    and (module, line, target) of every import of a selfmm module inside a function."""
    files = {module_name(p): p for p in (SOURCE / "selfmm").rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    inner: list[tuple[str, int, str]] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text())
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                       and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        in_function = {id(n) for node in ast.walk(tree)
                       if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(node)}
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
                stem = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in files else stem for a in node.names]
            for target in targets:
                while target not in files and "." in target:
                    target = target.rpartition(".")[0]
                if target in files and target != module:
                    edges[module].add(target)
                    if id(node) in in_function:
                        inner.append((module, node.lineno, target))
    return edges, inner


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle():
    edges, _ = import_graph()
    assert len(edges) > 30  # the walk found the package
    assert cycles(edges) == []


def test_only_the_command_line_imports_the_command_line():
    edges, _ = import_graph()
    users = sorted(m for m, targets in edges.items()
                   if any(t == "selfmm.cli" or t.startswith("selfmm.cli.") for t in targets)
                   and not m.startswith("selfmm.cli") and m != "selfmm.__main__")
    assert users == []


def test_no_selfmm_import_inside_a_function():
    _, inner = import_graph()
    assert inner == []


@pytest.mark.parametrize("module", ["selfmm", "selfmm.cli"])
def test_light_modules_do_not_import_torch(module):
    """`import selfmm` and `selfmm --help` stay fast: torch loads on first use."""
    import subprocess
    import sys

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
