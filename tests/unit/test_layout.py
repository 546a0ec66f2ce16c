"""The layout shows the architecture, and imports keep to it: the CLI uses the roles,
the router and building; those use the core; the core uses none of them; no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src" / "dinp"
# Each part of dinp and the parts it may import (itself always).
LAYERS = {
    "core": set(),
    "build": {"core"},
    "router": {"core"},
    "roles": {"core", "router"},  # `dinp up` runs a router in the same process
    "commands": {"core", "build", "router", "roles"},
    "cli": {"core", "commands"},
}


def part_of(module: str) -> str:
    """dinp.router.clients -> router; dinp.cli -> cli; dinp.store -> core."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return parts[1]
    return "cli" if parts[1:] in (["cli"], ["__main__"]) else "core"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """dinp module -> the dinp modules it imports (at any depth in the file)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        name = module_name(path)
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module.startswith("dinp"):
                    found.add(node.module)
                    found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("dinp"))
        graph[name] = found
    known = set(graph)
    return {m: {i for i in deps if i in known and i != m} for m, deps in graph.items()}


def test_each_part_imports_only_the_parts_below_it() -> None:
    wrong = sorted(
        f"{module} imports {dep}"
        for module, deps in imports().items()
        for dep in deps
        if part_of(dep) != part_of(module) and part_of(dep) not in LAYERS[part_of(module)]
    )
    assert wrong == []


def test_no_import_cycles() -> None:
    graph = imports()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if dep == "dinp" or node.startswith(dep + "."):
                continue  # a package's __init__ seen from its own modules
            if state.get(dep) == 1:
                cycles.append([*path[path.index(dep):], dep] if dep in path else [node, dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []
