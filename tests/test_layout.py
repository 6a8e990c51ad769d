"""The package's shape: four stage subpackages, no import circle, backends below their
dispatcher, the expression language below everything that uses it."""

from __future__ import annotations

import ast
import pathlib

import symtorch_fx

ROOT = pathlib.Path(symtorch_fx.__file__).parent


def _module(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path, top_level_only: bool) -> set[str]:
    """The symtorch_fx modules ``path`` imports (at module level, or anywhere)."""
    tree = ast.parse(path.read_text())
    package = _module(path).split(".") if path.name == "__init__.py" else _module(path).split(".")[:-1]
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("symtorch_fx"):
                continue
            for alias in node.names:  # ``from . import cpu`` names a module
                sub = f"{mod}.{alias.name}"
                out.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists() else mod)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("symtorch_fx"))
    return out


def _graph(top_level_only: bool) -> dict[str, set[str]]:
    return {_module(p): _imports(p, top_level_only) for p in ROOT.rglob("*.py")}


def test_stage_subpackages_exist():
    for sub in ("graph", "search", "kernels", "expr"):
        assert (ROOT / sub / "__init__.py").exists()
    flat = sorted(p.name for p in ROOT.glob("_*.py") if p.name != "__init__.py")
    assert not flat, f"private modules left at the top: {flat}"


def test_no_import_cycle():
    graph = _graph(top_level_only=False)
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for n in graph.get(m, ()):
            if n == m or n not in graph or n.count(".") < m.count(".") and m.startswith(n + "."):
                continue  # a package's own __init__ re-exports are not a circle
            if state.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(n):] + [n]))
            if n not in state:
                visit(n, stack + [n])
        state[m] = 2

    for m in graph:
        if m not in state and m != "symtorch_fx":
            visit(m, [m])


def test_backends_never_import_their_dispatcher():
    graph = _graph(top_level_only=False)
    for backend in ("symtorch_fx.kernels.cpu", "symtorch_fx.kernels.triton"):
        bad = graph[backend] & {"symtorch_fx.kernels.fused", "symtorch_fx.kernels.lower"}
        assert not bad, f"{backend} imports {bad}"
    assert "symtorch_fx.kernels.lower" not in graph["symtorch_fx.kernels.fused"]


def test_expression_language_is_the_bottom_layer():
    graph = _graph(top_level_only=True)
    for m, deps in graph.items():
        if m.startswith("symtorch_fx.expr"):
            above = {d for d in deps if not d.startswith(("symtorch_fx.expr", "symtorch_fx.errors"))}
            assert not above, f"{m} imports {above} at module level"
