"""The package layering: components never import the driver, imports point down, and there is no import loop."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("common", "memory_server", "learner", "actors", "cluster")  # each may import only those before it


def _imports() -> dict[str, set[str]]:
    """Module -> project modules it imports anywhere in its file (lazy imports included)."""
    modules = {}
    for package in LAYERS:
        for f in (ROOT / package).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = f
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for name, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in modules and t != name}
    return edges


def test_imports_point_down_and_learner_needs_no_memory_server() -> None:
    rank = {p: i for i, p in enumerate(LAYERS)}
    upward = [(m, t) for m, ts in _imports().items() for t in ts
              if rank[t.split(".")[0]] > rank[m.split(".")[0]]
              or (m.startswith("learner") and t.startswith("memory_server"))]
    assert not upward, f"imports pointing up the layers: {upward}"


def test_the_import_graph_has_no_loop() -> None:
    edges = _imports()
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m: str, path: list[str]) -> list[str] | None:
        state[m] = 1
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                return path + [m, t]
            if t not in state and (loop := visit(t, path + [m])):
                return loop
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state:
            assert (loop := visit(m, [])) is None, f"import loop: {' -> '.join(loop)}"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The checker itself: a lazy import of the driver inside a function is found."""
    tree = ast.parse("def f():\n    from cluster.config import Config\n")
    found = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found == ["cluster.config"]
