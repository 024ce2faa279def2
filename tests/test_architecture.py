"""The import graph of the package: no circles, and rooms that keep to their side.

Built from the source with ``ast`` (every ``import`` counts: module level, inside functions and
under ``TYPE_CHECKING``), so a circle cannot hide behind a lazy import. The rooms are
described in docs/architecture.md.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"agent": "dedgeai.agent", "scheduler": "dedgeai.scheduler", "models": "dedgeai.models"}


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _imported(module: str, path: Path) -> Iterator[str]:
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


GRAPH = {module: set(_imported(module, path)) for module, path in MODULES.items()}


def _cycles() -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    return found


def _room(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:3])


def test_the_graph_sees_the_package():
    assert "dedgeai.agent.node.core" in GRAPH and "dedgeai.scheduler.online" in GRAPH
    assert "dedgeai.agent.node.protocol" in GRAPH["dedgeai.agent.node.core"]


def test_no_import_circles():
    assert _cycles() == []


def test_scheduler_and_models_never_import_the_agent():
    """The algorithms and the image pipelines are pure: no sockets, threads or disk rooms."""
    for module, imports in GRAPH.items():
        if module.startswith(("dedgeai.scheduler", "dedgeai.models")):
            assert not {i for i in imports if i.startswith("dedgeai.agent")}, module


def test_the_lab_is_not_part_of_the_product():
    """The harness (demo, benchmarks, tests) may use every room; no room uses it but the CLI."""
    for module, imports in GRAPH.items():
        if _room(module) in (
            "dedgeai.agent.node",
            "dedgeai.agent.cluster",
            "dedgeai.agent.security",
        ):
            assert not {i for i in imports if i.startswith("dedgeai.agent.lab")}, module


def test_the_node_does_not_know_the_cli():
    for module, imports in GRAPH.items():
        if _room(module) in (
            "dedgeai.agent.node",
            "dedgeai.agent.cluster",
            "dedgeai.agent.security",
        ):
            assert not {i for i in imports if i.startswith("dedgeai.agent.client")}, module
