"""The layout shows the architecture: `agent/` imports only downward, has no import
circles, and no file grows past about 400 lines (read with `ast`, nothing imported)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

AGENT = REPO / "agent"
MAX_LINES = 450
# Lowest first; a module may import its own layer and the ones below. Interfaces (api,
# mqtt) sit on the port in routing; nothing but the service and the CLI sees them all.
LAYERS = [
    ("agent", "agent.log", "agent.engine.types", "agent.engine.reply"),
    ("agent.protocol",),
    ("agent.security",),
    ("agent.settings",),
    ("agent.hardware", "agent.state"),
    ("agent.models",),
    ("agent.engine",),
    ("agent.telemetry.metrics",),
    ("agent.routing", "agent.supervision"),
    ("agent.telemetry",),
    (
        "agent.api",
        "agent.mqtt",
        "agent.telemetry.fleet",
        "agent.telemetry.fleet_chart",
        "agent.telemetry.rollout",
    ),
    ("agent.fleet",),
    ("agent.service",),
    ("agent.daemon",),
    ("agent.cli", "agent.cli_models", "agent.__main__"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, modules: set[str]) -> set[str]:
    """The agent modules `path` imports (TYPE_CHECKING imports too: they are circles all
    the same for a reader)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("agent")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agent"):
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules else node.module)
    return found & modules


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in AGENT.rglob("*.py")}
    return {name: imports(path, set(files)) - {name} for name, path in files.items()}


def layer(module: str) -> int:
    """The highest layer whose prefix names the module (the most specific match)."""
    best, best_length = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            if matches and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    return best


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    assert cycles(graph()) == []


def test_imports_point_down() -> None:
    upward = [
        f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
        for source, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer(target) > layer(source)
    ]
    assert upward == []


def test_every_module_has_a_layer() -> None:
    assert [name for name in graph() if layer(name) < 0] == []


def test_no_file_is_over_the_size_limit() -> None:
    long = {
        str(p.relative_to(REPO)): n
        for p in AGENT.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


def test_wire_modules_import_no_web_or_mqtt_framework() -> None:
    """agent/protocol is pure pydantic: the routes, the bridge and the cloud backends share
    it, so it must not pull in FastAPI, Starlette or paho."""
    framework = ("fastapi", "starlette", "paho", "uvicorn")
    found = {}
    for path in (AGENT / "protocol").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            bad = [n for n in names if n.split(".")[0] in framework]
            if bad:
                found[path.name] = bad
    assert found == {}


def test_interfaces_reach_the_daemon_only_through_the_port() -> None:
    """Routes and the bridge import no engine, model or service internals."""
    internals = ("agent.service", "agent.engine.local", "agent.routing.router", "agent.models")
    reaching = {
        source: sorted(t for t in targets if t.startswith(internals))
        for source, targets in graph().items()
        if source.startswith(("agent.api", "agent.mqtt"))
    }
    assert {s: t for s, t in reaching.items() if t} == {}


@pytest.mark.parametrize(
    "edges",
    [{"a": {"b"}, "b": {"a"}}, {"a": {"b"}, "b": {"c"}, "c": {"a"}}],
    ids=["two", "three"],
)
def test_a_circle_is_found(edges: dict[str, set[str]]) -> None:
    assert cycles(edges) == [sorted(edges)]
