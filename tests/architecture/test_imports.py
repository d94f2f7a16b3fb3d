"""The package's import graph: no cycles, and the pipeline's arrows point downward only.

Every `import dse...` / `from dse... import` in dse/ and kernels/ (module level or inside a function) is an
edge; a cycle, or an edge from a lower pipeline stage to a higher one, is a defect."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# The pipeline, bottom to top: a module may import only from its own layer or below.
LAYERS: list[tuple[str, ...]] = [
    ("dse.util",),
    ("dse.multipliers",),
    ("dse.hardware",),
    ("dse.kernels",),
    ("dse.energy", "dse.quant", "dse.nn", "dse.models", "dse.data"),
    ("dse.study", "dse.rundir", "dse.train", "dse.prepare", "dse.simulation"),
    ("dse.errors",),
    ("dse.agn",),
    ("dse.config", "dse.hwconfig"),
    ("dse.search",),
    ("dse.retrain",),
    ("dse.report",),
    ("dse.benchmark",),
    ("dse.cli",),
]


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "kernels":
        parts = ["dse", "kernels", *parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    files = [*ROOT.joinpath("dse").rglob("*.py"), *ROOT.joinpath("kernels").rglob("*.py")]
    return {_module_name(p): p for p in files}


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The dse modules that `path` imports, resolved to modules that exist."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("dse"):
                out.add(t)
    return out


@cache
def _graph() -> dict[str, set[str]]:
    sources = _sources()
    modules = set(sources)
    return {name: _imports(path, name, modules) for name, path in sources.items()}


def _layer(name: str) -> int | None:
    for i, prefixes in enumerate(LAYERS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return i
    return None


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle() -> None:
    # a package __init__ that re-exports its submodules is not a cycle with them
    graph = {
        n: {m for m in deps if not (m.startswith(n + ".") or n.startswith(m + "."))}
        for n, deps in _graph().items()
    }
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_sits_in_a_pipeline_layer() -> None:
    unplaced = sorted(n for n in _graph() if n != "dse" and _layer(n) is None)
    assert not unplaced, (
        f"modules outside LAYERS (place them in tests/architecture/test_imports.py): {unplaced}"
    )


@pytest.mark.parametrize("name", sorted(n for n in _graph() if n != "dse"))
def test_imports_point_down_the_pipeline(name: str) -> None:
    mine = _layer(name)
    assert mine is not None, f"{name} sits in no pipeline layer"
    upward = sorted(m for m in _graph().get(name, ()) if (_layer(m) or 0) > mine)
    assert not upward, f"{name} (layer {LAYERS[mine]}) imports from a higher stage: {upward}"
