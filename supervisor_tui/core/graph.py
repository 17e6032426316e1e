"""The dependency graph of the plugins: levels, and the two ways it is drawn (text levels and a mermaid block).

``DependencyGraph.build`` takes each plugin's key, state, group and dependencies (PluginSnapshot fields, or the
API's plugin dicts on the other side of a connection) and puts every plugin on a level: 0 for one that needs
nothing, otherwise one more than the highest level it depends on, so a level starts once the ones above it run.
A dependency that names no known plugin is a node of its own, marked missing. ``to_dict``/``from_dict`` are the
``GET /api/v1/graph`` shape; ``render_text`` and ``render_mermaid`` are what ``ctl graph`` and the TUI show.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MISSING = "MISSING"  # the state of a dependency no plugin answers to
# mermaid class per state, so a rendered graph shows what runs and what is in trouble
_STATE_CLASSES = {
    "RUNNING": "running",
    "STARTING": "busy",
    "STOPPING": "busy",
    "BACKOFF": "trouble",
    "FATAL": "trouble",
    "INVALID": "trouble",
    "LOST": "trouble",
    MISSING: "trouble",
}
_CLASS_STYLES = {
    "running": "fill:#d7f5d7,stroke:#2e7d32",
    "busy": "fill:#fff3c4,stroke:#b28704",
    "trouble": "fill:#ffd6d6,stroke:#c62828",
}


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One plugin in the graph: what it is, what it needs, and its level."""

    key: str
    state: str
    group: str | None
    depends_on: tuple[str, ...]
    level: int


class DependencyGraph:
    """Every plugin with its level; edges go from a plugin to each plugin it depends on."""

    def __init__(self, nodes: Iterable[GraphNode]) -> None:
        self.nodes: dict[str, GraphNode] = {n.key: n for n in sorted(nodes, key=lambda n: (n.level, n.key))}

    @classmethod
    def build(cls, plugins: Iterable[tuple[str, str, str | None, Iterable[str]]]) -> DependencyGraph:
        """From (key, state, group, dependencies) of every plugin."""
        known = {key: (state, group, tuple(deps)) for key, state, group, deps in plugins}
        for _, _, deps in list(known.values()):
            for dep in deps:
                known.setdefault(dep, (MISSING, None, ()))
        levels: dict[str, int] = {}

        def level(key: str, trail: frozenset[str]) -> int:
            if key in levels:
                return levels[key]
            # a cycle (only a rejected manifest can hold one) is cut where it closes
            deps = [d for d in known[key][2] if d not in trail]
            value = 1 + max((level(d, trail | {key}) for d in deps), default=-1)
            levels[key] = value
            return value

        return cls(
            GraphNode(key, state, group, deps, level(key, frozenset()))
            for key, (state, group, deps) in sorted(known.items())
        )

    @classmethod
    def from_plugins(cls, plugins: Iterable[Mapping[str, Any]]) -> DependencyGraph:
        """From plugin dicts (``PluginSnapshot.to_dict()`` shapes: key, state, group, depends_on)."""
        return cls.build(
            (str(p["key"]), str(p.get("state") or ""), p.get("group") or None, tuple(p.get("depends_on") or ()))
            for p in plugins
        )

    def levels(self) -> list[list[GraphNode]]:
        """The nodes level by level, each level sorted by key."""
        out: list[list[GraphNode]] = []
        for node in self.nodes.values():
            while len(out) <= node.level:
                out.append([])
            out[node.level].append(node)
        return out

    def edges(self) -> list[tuple[str, str]]:
        """(plugin, a plugin it depends on), in the nodes' order."""
        return [(n.key, dep) for n in self.nodes.values() for dep in n.depends_on]

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes": [
                {"key": n.key, "state": n.state, "group": n.group, "depends_on": list(n.depends_on), "level": n.level}
                for n in self.nodes.values()
            ],
            "edges": [{"from": a, "to": b} for a, b in self.edges()],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DependencyGraph:
        """The graph of a ``GET /api/v1/graph`` answer (levels computed again, not trusted)."""
        return cls.from_plugins(n for n in data.get("nodes") or () if isinstance(n, Mapping) and "key" in n)


def graph_of(snapshots: Iterable[Any]) -> DependencyGraph:
    """The graph of the supervisor's plugins (PluginSnapshot: key, state, group, depends_on)."""
    return DependencyGraph.build((s.key, s.state, s.group, s.depends_on) for s in snapshots)


def _safe(text: str) -> str:
    """A name inside a mermaid label: what a key, group or state may hold, anything else (quotes, brackets,
    from a remote supervisor) as "?" so the block stays valid."""
    return _UNSAFE.sub("?", text)


_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def render_text(graph: DependencyGraph) -> list[str]:
    """The graph as levels: each plugin with its state, its group and what it needs."""
    if not graph.nodes:
        return ["no plugins"]
    width = max(len(k) for k in graph.nodes)
    state_width = max(len(n.state) for n in graph.nodes.values())
    lines: list[str] = []
    for number, nodes in enumerate(graph.levels()):
        lines.append(f"level {number}" + (" (needs nothing)" if number == 0 else ""))
        for n in nodes:
            line = f"  {n.key:<{width}}  {n.state:<{state_width}}"
            if n.group:
                line += f"  group {n.group}"
            if n.depends_on:
                line += f"  needs {', '.join(n.depends_on)}"
            lines.append(line.rstrip())
    return lines


def render_mermaid(graph: DependencyGraph) -> list[str]:
    """The graph as a mermaid ``graph TD`` block: groups are subgraphs, an arrow points at what a plugin needs."""
    ids = {key: f"p{i}" for i, key in enumerate(sorted(graph.nodes))}
    lines = ["graph TD"]
    groups: dict[str | None, list[GraphNode]] = {}
    for n in sorted(graph.nodes.values(), key=lambda n: n.key):
        groups.setdefault(n.group, []).append(n)
    for number, (group, nodes) in enumerate(sorted(groups.items(), key=lambda item: item[0] or "")):
        indent = "  "
        if group is not None:
            lines.append(f'  subgraph g{number}["group {_safe(group)}"]')
            indent = "    "
        lines += [f'{indent}{ids[n.key]}["{_safe(n.key)} ({_safe(n.state)})"]' for n in nodes]
        if group is not None:
            lines.append("  end")
    lines += [f"  {ids[a]} --> {ids[b]}" for a, b in graph.edges()]
    used: dict[str, list[str]] = {}
    for n in graph.nodes.values():
        css = _STATE_CLASSES.get(n.state)
        if css is not None:
            used.setdefault(css, []).append(ids[n.key])
    for css, members in sorted(used.items()):
        lines.append(f"  classDef {css} {_CLASS_STYLES[css]}")
        lines.append(f"  class {','.join(sorted(members, key=lambda i: int(i[1:])))} {css}")
    return lines
