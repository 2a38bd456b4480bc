"""No import cycle between gcompiler's subpackages, and each imports alone.

The dependency graph is read statically from every ``import`` / ``from ... import`` statement in the package,
function-level (lazy) imports included: a lazy import is still a dependency. Nodes are the subpackages
(``gcompiler.passes``, ``gcompiler.quant``, ...) and the top-level modules (``gcompiler.profiler``, ...); the
package root ``gcompiler/__init__.py`` is the public facade and is left out. Built-in passes of the upper
subpackages are found by module name (``gcompiler/passes/_builtin.py``), not imported by the registry.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "gcompiler"


def _unit(module: str) -> str | None:
    """``gcompiler.passes.manager`` -> ``passes``; ``gcompiler.profiler`` -> ``profiler``; root -> None."""
    parts = module.split(".")
    if parts[0] != "gcompiler" or len(parts) == 1:
        return None
    return parts[1]


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    mod = _module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)  # "from . import quant" names a subpackage
    return {m for m in out if m.startswith("gcompiler")}


def dependency_graph() -> dict[str, set[str]]:
    units = {p.name if p.is_dir() else p.stem for p in PKG.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or (p.suffix == ".py" and p.stem != "__init__")}
    graph: dict[str, set[str]] = {u: set() for u in units}
    for path in PKG.rglob("*.py"):
        src = _unit(_module_name(path))
        if src is None:
            continue
        for m in _imports(path):
            dst = _unit(m)
            if dst is not None and dst != src and dst in units:
                graph[src].add(dst)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state:
                found = visit(v)
                if found:
                    return found
        stack.pop()
        state[u] = 2
        return None

    for u in sorted(graph):
        if u not in state:
            found = visit(u)
            if found:
                return found
    return None


def test_no_import_cycle_between_subpackages():
    graph = dependency_graph()
    assert {"passes", "quant", "kernels", "analysis", "fx"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between gcompiler subpackages: " + " -> ".join(cycle)
    # the compiler layers, bottom to top
    assert "quant" not in graph["passes"] and "kernels" not in graph["passes"]
    assert "kernels" not in graph["quant"]


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.slow  # a fresh interpreter imports torch: ~8 s each on the shared machine
@pytest.mark.parametrize("sub", ["passes", "quant", "kernels", "analysis"])
def test_subpackage_imports_alone_in_a_fresh_interpreter(sub):
    code = (f"import gcompiler.{sub}; import gcompiler.passes.registry as r; "
            f"assert 'insert-fake-quant' in r.available() and 'lower-to-triton' in r.available()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
