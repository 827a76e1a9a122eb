"""The import graph of the package has no circles (imports inside functions included), and the
ground floors never import the package face (``molgiae/__init__.py``, which reaches ``api``)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "molgiae"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = p.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module → the molgiae modules it imports anywhere in its file. ``from molgiae import group``
    is an edge to ``molgiae.group``, not to the package face."""
    mods = _modules()
    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.startswith("molgiae"):
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                deps.update(subs if len(subs) == len(node.names) else [node.module, *subs])
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("molgiae"))
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
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
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_circle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circles_in_the_package():
    graph = import_graph()
    assert "molgiae.data.ensemble_npz" in graph["molgiae.data.readers.npz"]  # the graph sees imports
    assert "molgiae.data.readers" in graph["molgiae.data.store"]
    assert "molgiae.data.store" in graph["molgiae.cli"]  # ... inside functions too
    assert cycles(graph) == []


def test_no_module_imports_the_package_face():
    graph = import_graph()
    assert sorted(m for m, deps in graph.items() if "molgiae" in deps) == []


#: The floors of README.md's Layout section: a module imports only from floors below its own, or
#: from its own floor (module prefix -> floor; the longest matching prefix wins).
FLOORS = {
    "molgiae._version": 1, "molgiae.chem": 1, "molgiae.config": 1, "molgiae.outputs": 1, "molgiae.runtime": 1,
    "molgiae.batch": 1,
    "molgiae.group": 2, "molgiae.symmetry": 2, "molgiae.automorphism": 2, "molgiae.painn_equivariant": 2,
    "molgiae.model": 3, "molgiae.checkpoint": 3, "molgiae.data": 3,
    "molgiae.train": 4, "molgiae.training": 4, "molgiae.metrics": 4, "molgiae.quality": 4, "molgiae.api": 4,
    "molgiae.embedding": 5, "molgiae.finetune": 5,
    "molgiae.cli": 6, "molgiae.__main__": 6, "molgiae": 6,
}
#: Known upward arrows (none).
UPWARD_ALLOWED: set[tuple[str, str]] = set()


def floor(module: str) -> int:
    best = max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)
    return FLOORS[best]


def test_floors():
    graph = import_graph()
    upward = sorted((m, d) for m, deps in graph.items() for d in deps
                    if floor(d) > floor(m) and (m, d) not in UPWARD_ALLOWED)
    assert upward == []
    assert all(floor(d) > floor(m) for m, d in UPWARD_ALLOWED if d in graph[m])
