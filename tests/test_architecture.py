"""The import graph of ``src/circuitscan`` flows one way (docs/ARCHITECTURE.md).

Reads the source with ``ast`` (imports at module level and inside functions alike, as
``TYPE_CHECKING`` imports: a cycle hidden in a function body is still a cycle). Fails on
an import from a higher layer or an import circle that is not in the known-debt lists
below, and on an entry of those lists that no longer exists, so the lists only shrink.
Also fails on an import of our own modules inside a function outside the CLI and the
lazy package root, unless the line says ``# deferred: <why>``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "circuitscan"

#: lower layers never import higher ones; packages of one layer may import each other
#: (without circles). "(root)" is ``circuitscan/__init__.py``.
LAYERS: list[set[str]] = [
    {"errors", "types", "progress", "config", "data", "_version", "integrity", "_timings", "precision"},
    {"rundir", "runfiles", "models", "tasks", "guards"},
    {"circuits", "activations", "sae", "codes"},
    {"evaluation"},
    {"methods"},
    {"run", "comparison", "sweep", "features", "testbeds", "interop", "report", "pipelines"},
    {"commands", "cli", "(root)"},
]

#: imports from a higher layer that exist today (issue 15 removes them); do not add to this
KNOWN_UPWARD: set[tuple[str, str]] = set()

#: modules inside an import circle today (issue 15 removes them); do not add to this
KNOWN_IN_CYCLES: set[str] = set()


def _modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = list(p.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


def import_graph() -> set[tuple[str, str]]:
    """(importer, imported) pairs between our own modules."""
    mods = _modules()
    edges = set()
    for m, p in mods.items():
        base = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom):
                up = base[: len(base) - (node.level - 1)] if node.level else []
                target = ".".join(up + ([node.module] if node.module else [])) if node.level else node.module or ""
                subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in mods]
                names = subs or [target]  # `from pkg import submodule` imports the submodule
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            edges |= {(m, n) for n in names if n in mods and n != m}
    return edges


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def _layer(pkg: str) -> int:
    for i, layer in enumerate(LAYERS):
        if pkg in layer:
            return i
    raise AssertionError(f"package {pkg!r} has no layer in tests/test_architecture.py LAYERS: give it one")


def _cycles(edges: set[tuple[str, str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative enough)."""
    graph: dict[str, list[str]] = {}
    for a, b in edges:
        graph.setdefault(a, []).append(b)
        graph.setdefault(b, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_sees_a_cycle_and_an_upward_import():
    edges = {("circuitscan.a", "circuitscan.b"), ("circuitscan.b", "circuitscan.a"), ("circuitscan.c", "circuitscan.a")}
    assert _cycles(edges) == [{"circuitscan.a", "circuitscan.b"}]
    assert _layer("evaluation") < _layer("commands")
    assert ("circuitscan.activations", "circuitscan.models") in import_graph()


def test_no_new_import_from_a_higher_layer():
    upward = {
        (_package(a), _package(b))
        for a, b in import_graph()
        if _package(a) != _package(b) and _layer(_package(a)) < _layer(_package(b))
    }
    new = sorted(upward - KNOWN_UPWARD)
    assert not new, f"imports from a higher layer (docs/ARCHITECTURE.md): {new}"
    gone = sorted(KNOWN_UPWARD - upward)
    assert not gone, f"fixed, so remove from KNOWN_UPWARD: {gone}"


def test_no_new_import_circle():
    in_cycles = set().union(*_cycles(import_graph()))
    new = sorted(in_cycles - KNOWN_IN_CYCLES)
    assert not new, f"modules in a new import circle: {new}"
    gone = sorted(KNOWN_IN_CYCLES - in_cycles)
    assert not gone, f"no longer in a circle, so remove from KNOWN_IN_CYCLES: {gone}"


#: where an import of our own modules may sit inside a function without a reason given: nowhere
#: today (the command line imports at module top too, since the package root loads the API)
DEFERRED_OK: tuple[str, ...] = ()


def _own(node: ast.Import | ast.ImportFrom) -> bool:
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or (node.module or "").split(".")[0] == "circuitscan"
    return any(a.name.split(".")[0] == "circuitscan" for a in node.names)


def deferred_imports(source: str) -> list[int]:
    """Lines of imports of circuitscan modules inside a function body that carry no
    ``# deferred: <why>`` comment (on the statement or the line above it)."""
    lines = source.splitlines()
    out = []

    def walk(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if in_function and isinstance(child, (ast.Import, ast.ImportFrom)) and _own(child):
                above = lines[child.lineno - 2].strip() if child.lineno > 1 else ""
                said = lines[child.lineno - 1: child.end_lineno] + ([above] if above.startswith("#") else [])
                if not any("# deferred:" in line for line in said):
                    out.append(child.lineno)
            walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    walk(ast.parse(source), False)
    return out


def test_the_checker_sees_an_import_inside_a_function():
    src = (
        "from .a import b\n"
        "def f():\n"
        "    import torch\n"
        "    from .c import d\n"
        "    from circuitscan.e import g\n"
        "    # deferred: e loads torch\n"
        "    from circuitscan.e import h\n"
        "    from json import dumps  # deferred: not ours anyway\n"
        "    def inner():\n"
        "        import circuitscan.x as x  # deferred: x loads torch\n"
        "        import circuitscan.y\n"
    )
    assert deferred_imports(src) == [4, 5, 11]


def test_no_import_of_our_own_modules_inside_a_function():
    """Our modules are imported at module top (docs/ARCHITECTURE.md, "Deferred imports"),
    the command line included; inside a function only with a ``# deferred:`` comment saying
    which heavy package the import would load too early."""
    bad = [
        f"{path.relative_to(ROOT.parent.parent)}:{line}"
        for mod, path in sorted(_modules().items())
        if mod not in DEFERRED_OK
        for line in deferred_imports(path.read_text())
    ]
    assert not bad, "imports of circuitscan modules inside functions (move them to the top, " \
        "or say `# deferred: <why>`): " + ", ".join(bad)


@pytest.mark.parametrize("pkg", sorted({_package(m) for m in _modules()}))
def test_every_package_has_a_layer(pkg):
    _layer(pkg)


def test_the_public_api_is_explicit_and_complete():
    """``circuitscan.__all__`` is the public API, bound by plain imports in ``__init__.py``
    (no module ``__getattr__``), with compare, evaluate_run, write_report and the method protocol."""
    import circuitscan as cs

    tree = ast.parse((ROOT / "__init__.py").read_text())
    assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body)
    assert not hasattr(cs, "__getattr__")
    missing = [n for n in cs.__all__ if n not in vars(cs)]
    assert not missing, f"public names not bound in circuitscan/__init__.py: {missing}"
    for name in ("compare", "evaluate_run", "write_report", "Scorer", "MethodSpec", "predicted_circuit", "discover"):
        assert name in cs.__all__ and callable(getattr(cs, name)), name
    from circuitscan.comparison import compare

    assert cs.compare is compare  # the function, not a subpackage of the same name
