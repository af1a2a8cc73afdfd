"""The package layout is the architecture: imports go one way (README, "Architecture").

api -> graph -> runtime -> kafka/state/codecs/time, with ops (status, HTTP, tools) above the
runtime, and streamproc/service.py and the CLI on top wiring them together. Every import
counts here, including the ones only type checkers see and the ones inside functions: a cycle
hidden behind TYPE_CHECKING is still two modules that cannot be understood apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "streamproc"


def _modules() -> dict[str, Path]:
    out = {}
    for f in ROOT.rglob("*.py"):
        parts = f.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in mods else node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_the_imports_it_checks() -> None:
    graph = _graph()
    assert "streamproc.runtime.checkpoint" in graph["streamproc.runtime.app"]
    assert "streamproc.runtime.observe" in graph["streamproc.ops.monitor"]
    # A type-only import counts: bounded.py names the loop's RunControl under TYPE_CHECKING.
    assert "streamproc.runtime.loop" in graph["streamproc.runtime.bounded"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_runtime_does_not_know_the_layers_above_it() -> None:
    above = ("streamproc.ops", "streamproc.cli", "streamproc.service", "streamproc.demo")
    wrong = {m: sorted(d for d in deps if d.startswith(above))
             for m, deps in _graph().items()
             if m.startswith(("streamproc.runtime", "streamproc.graph", "streamproc.api",
                              "streamproc.kafka", "streamproc.state", "streamproc.codecs",
                              "streamproc.time"))}
    assert {m: d for m, d in wrong.items() if d} == {}


def test_the_only_import_cycle_is_the_fluent_api() -> None:
    # The api's Stream, Table and Topology name each other (a fluent API returns its own
    # types), and the graph compiles a Topology: the one known cycle. No other may appear, and
    # none may reach the runtime or ops.
    assert _cycles(_graph()) == [["streamproc.api.stream", "streamproc.api.table",
                                  "streamproc.api.topology",
                                  "streamproc.api.windowed", "streamproc.graph.compile",
                                  "streamproc.graph.naming"]]


def test_runtime_files_stay_small() -> None:
    sizes = {f.name: len(f.read_text().splitlines()) for f in (ROOT / "runtime").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 450} == {}
