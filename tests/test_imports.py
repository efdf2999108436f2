"""The package's shape: its import graph (TYPE_CHECKING imports counted) has no circle and never
climbs a layer, scoring never reaches the training loop, the command line is imported by nothing
else, imports inside functions are of third-party packages only, and no function is longer than
MAX_FUNCTION_LINES but the few listed.

`python tests/test_imports.py [SRC]` prints the graph's figures (modules, edges, edges that climb
a layer, circles) for this checkout's src/ or another one's.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src"

# Layers, lowest first: a module imports its own layer and those below it, never one above. A
# module takes its own entry or its package's (selfmm.data.mmsa: selfmm.data's). Training sits
# above scoring although neither needs the other, so that scoring (predict, serve) can never
# reach the training loop: a served request runs forward and nothing else.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("selfmm._version", "selfmm.errors", "selfmm.checks", "selfmm.datasets", "selfmm.io",
              "selfmm.pools", "selfmm.transfer", "selfmm.runtime", "selfmm.metrics")),
    ("settings and data", ("selfmm.configuration", "selfmm.precision", "selfmm.encoder", "selfmm.data",
                           "selfmm.extract", "selfmm.runs", "selfmm.rundir", "selfmm.checkpoint",
                           "selfmm.results", "selfmm.provenance", "selfmm.resume", "selfmm.reproduction",
                           "selfmm.optim")),
    ("models", ("selfmm.bert", "selfmm.model", "selfmm.ulgm", "selfmm.models", "selfmm.distributed")),
    ("trained runs", ("selfmm.inference", "selfmm.trained", "selfmm.interop", "selfmm.analysis",
                      "selfmm.report")),
    ("scoring", ("selfmm.predict", "selfmm.serve")),
    ("training", ("selfmm.train", "selfmm.jobs", "selfmm.api", "selfmm.tune", "selfmm.ablate")),
    ("front doors", ("selfmm", "selfmm.__main__", "selfmm.cli")),
]
# What scoring a clip runs: none of it may import the training loop, even indirectly.
INFERENCE_PATH = ("selfmm.inference", "selfmm.trained", "selfmm.predict", "selfmm.serve")
TRAINING = "selfmm.train"

MAX_FUNCTION_LINES = 60
# Longer functions, each with the reason it stays whole or the work that will split it.
LONG_FUNCTIONS = {
    # An argument table, one add_argument per flag: read as a table, it is clearer whole.
    "selfmm.cli.parser:build_parser": "argument table",
}


def module_name(path: Path, source: Path = SOURCE) -> str:
    parts = path.relative_to(source).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(source: Path) -> dict[str, Path]:
    return {module_name(p, source): p for p in (source / "selfmm").rglob("*.py")}


def _targets(node: ast.Import | ast.ImportFrom, package: str, files: dict[str, Path]) -> list[str]:
    """The selfmm modules an import statement names (a name imported from a package counts as
    the submodule when there is one)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
        stem = ".".join(base + ([node.module] if node.module else []))
        targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in files else stem for a in node.names]
    found = []
    for target in targets:
        while target not in files and "." in target:
            target = target.rpartition(".")[0]
        if target in files:
            found.append(target)
    return found


def import_graph(source: Path = SOURCE, typing: bool = True
                 ) -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Module -> the selfmm modules it imports, those under `if TYPE_CHECKING:` included unless
    `typing` is False; and (module, line, target) of every import of a selfmm module inside a
    function."""
    files = _modules(source)
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
            if not isinstance(node, (ast.Import, ast.ImportFrom)) or (not typing and id(node) in typing_only):
                continue
            for target in _targets(node, package, files):
                if target != module:
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


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the module's own entry or its closest package's ("selfmm" itself
    only for the package's front door, so that a new top-level module must be placed)."""
    names = {name: i for i, (_, members) in enumerate(LAYERS) for name in members}
    parts = module.split(".")
    for end in range(len(parts), 1, -1):
        if ".".join(parts[:end]) in names:
            return names[".".join(parts[:end])]
    return names.get(module)


def climbing(edges: dict[str, set[str]]) -> list[str]:
    """The imports from a module to one in a higher layer, as "a -> b (layer -> layer)"."""
    found = []
    for module, targets in sorted(edges.items()):
        for target in sorted(targets):
            low, high = layer_of(module), layer_of(target)
            if low is not None and high is not None and high > low:
                found.append(f"{module} -> {target} ({LAYERS[low][0]} -> {LAYERS[high][0]})")
    return found


def import_chain(edges: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """The shortest chain of imports from `start` to `goal`, or None (breadth-first)."""
    parent: dict[str, str | None] = {start: None}
    queue = deque([start])
    while queue:
        here = queue.popleft()
        if here == goal:
            chain = [here]
            while parent[chain[-1]] is not None:
                chain.append(parent[chain[-1]])
            return chain[::-1]
        for nxt in sorted(edges[here]):
            if nxt not in parent:
                parent[nxt] = here
                queue.append(nxt)
    return None


def function_lengths(source: Path = SOURCE) -> dict[str, int]:
    """`module:Qual.name` -> lines from `def` to the function's last line, for every function."""
    lengths: dict[str, int] = {}

    def walk(node: ast.AST, module: str, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    lengths[f"{module}:{name}"] = child.end_lineno - child.lineno + 1
                walk(child, module, f"{name}.")
            else:
                walk(child, module, prefix)

    for module, path in _modules(source).items():
        walk(ast.parse(path.read_text()), module, "")
    return lengths


# --- the tests -------------------------------------------------------------------------------


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_type_checking_imports_are_counted():
    edges, _ = import_graph()
    runtime, _ = import_graph(typing=False)
    assert "selfmm.data.types" in edges["selfmm.data.cache"]  # under `if TYPE_CHECKING:`
    assert "selfmm.api" in edges["selfmm"] and "selfmm.api" not in runtime["selfmm"]


def test_no_import_cycle():
    edges, _ = import_graph()
    assert len(edges) > 30  # the walk found the package
    assert cycles(edges) == []


def test_every_module_has_a_layer():
    edges, _ = import_graph()
    assert [m for m in sorted(edges) if layer_of(m) is None] == [], "add the module to LAYERS"


def test_layer_finder_takes_the_package_and_flags_what_is_new():
    assert layer_of("selfmm.data.mmsa") == layer_of("selfmm.data")
    assert layer_of("selfmm.serve.app") == layer_of("selfmm.predict")
    assert layer_of("selfmm.newcomer") is None
    assert climbing({"selfmm.predict": {"selfmm.train"}, "selfmm.train": {"selfmm.predict"}}) == [
        "selfmm.predict -> selfmm.train (scoring -> training)"]


def test_no_import_climbs_a_layer():
    edges, _ = import_graph()
    assert climbing(edges) == []


def test_the_inference_path_never_imports_training():
    edges, _ = import_graph()
    starts = [m for m in sorted(edges) if any(m == p or m.startswith(p + ".") for p in INFERENCE_PATH)]
    assert "selfmm.serve.app" in starts and "selfmm.predict" in starts
    chains = [" -> ".join(chain) for m in starts if (chain := import_chain(edges, m, TRAINING))]
    assert chains == []


def test_the_chain_finder_finds_an_indirect_import():
    edges = {"p": {"q"}, "q": {"t"}, "t": set(), "x": set()}
    assert import_chain(edges, "p", "t") == ["p", "q", "t"]
    assert import_chain(edges, "x", "t") is None


def test_scoring_loads_no_training_module():
    """At run time too: loading the scorer (and the server, with its extra) imports no module
    of training."""
    import importlib.util
    import subprocess

    modules = ["selfmm.predict", "selfmm.trained", "selfmm.inference"]
    if importlib.util.find_spec("fastapi") is not None:
        modules.append("selfmm.serve")
    training = list(dict(LAYERS)["training"])
    code = (f"import sys\nimport {', '.join(modules)}\n"
            f"print(sorted(m for m in sys.modules if m in {training!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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

    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_no_function_is_longer_than_the_limit():
    lengths = function_lengths()
    assert len(lengths) > 300  # the walk found the functions
    long = {name: n for name, n in lengths.items() if n > MAX_FUNCTION_LINES}
    assert sorted(set(long) - set(LONG_FUNCTIONS)) == [], long
    # An entry whose function was split (or renamed) goes too.
    assert sorted(set(LONG_FUNCTIONS) - set(long)) == []


def test_function_lengths_count_methods_and_nested_functions(tmp_path):
    (tmp_path / "selfmm").mkdir()
    (tmp_path / "selfmm" / "m.py").write_text(
        "class A:\n    def f(self):\n        def g():\n            pass\n        return g\n")
    assert function_lengths(tmp_path) == {"selfmm.m:A.f": 4, "selfmm.m:A.f.g": 2}


# --- the figures -------------------------------------------------------------------------------


def report(source: Path = SOURCE) -> str:
    edges, inner = import_graph(source)
    runtime, _ = import_graph(source, typing=False)
    count = sum(len(t) for t in edges.values())
    lines = [f"{source}: {len(edges)} modules, {count} import edges "
             f"({count - sum(len(t) for t in runtime.values())} under TYPE_CHECKING only), "
             f"{len(inner)} selfmm imports inside functions"]
    unplaced = [m for m in sorted(edges) if layer_of(m) is None]
    if unplaced:
        lines.append(f"modules in no layer: {', '.join(unplaced)}")
    up = climbing(edges)
    lines.append(f"edges that climb a layer: {len(up)}")
    lines.extend(f"  {edge}" for edge in up)
    circles = cycles(edges)
    lines.append(f"circles (TYPE_CHECKING imports counted): {len(circles)}")
    lines.extend(f"  {' <-> '.join(c)}" for c in circles)
    starts = [m for m in sorted(edges) if any(m == p or m.startswith(p + ".") for p in INFERENCE_PATH)]
    chains = [chain for m in starts if (chain := import_chain(edges, m, TRAINING))]
    lines.append(f"inference modules that reach {TRAINING}: {len(chains)}")
    lines.extend(f"  {' -> '.join(chain)}" for chain in chains)
    long = {k: v for k, v in function_lengths(source).items() if v > MAX_FUNCTION_LINES}
    lines.append(f"functions over {MAX_FUNCTION_LINES} lines: {len(long)}")
    lines.extend(f"  {name} {n}" for name, n in sorted(long.items(), key=lambda kv: -kv[1]))
    return "\n".join(lines)


if __name__ == "__main__":
    print(report(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else SOURCE))
