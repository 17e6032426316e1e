"""The ``g`` screen: the plugins' dependency graph, level by level, live; ``m`` shows it as a mermaid block.

Drawn from the plugins the view model holds (their ``depends_on`` and ``group``), so it needs no request of its
own and shows the same states as the plugins pane, refreshed every second while open.
"""

from __future__ import annotations

from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Static

from supervisor_tui.core.graph import DependencyGraph, render_mermaid
from supervisor_tui.core.printable import printable
from supervisor_tui.tui.app_access import SupervisorAppAccess
from supervisor_tui.tui.cells import DIM_STYLE, PLUGIN_STATE_STYLES

REFRESH_SECONDS = 1.0


class GraphScreen(SupervisorAppAccess, Screen[None]):
    """Every plugin on its level (0: needs nothing), with its state, group and what it needs."""

    BINDINGS: ClassVar = [
        Binding("escape,q,g", "close", "Back", id="graph.close"),
        Binding("m", "toggle_mermaid", "Mermaid", id="graph.mermaid", tooltip="Show the graph as a mermaid block"),
    ]

    DEFAULT_CSS = """
    GraphScreen VerticalScroll { padding: 0 1; }
    GraphScreen #graph-title { text-style: bold; margin-bottom: 1; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.mermaid = False

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static("Dependency graph", id="graph-title")
            yield Static(id="graph-body")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.refresh_graph()
        self.set_interval(REFRESH_SECONDS, self.refresh_graph)

    def graph(self) -> DependencyGraph:
        view = self.sup_app.view
        plugins = [view.plugins_by_key[k] for k in view.plugin_order]
        return DependencyGraph.build((p.key, p.state, p.group, p.depends_on) for p in plugins)

    def refresh_graph(self) -> None:
        graph = self.graph()
        body = self.query_one("#graph-body", Static)
        if self.mermaid:
            body.update(Text("\n".join(render_mermaid(graph))))
            return
        body.update(render_levels(graph))

    def action_toggle_mermaid(self) -> None:
        self.mermaid = not self.mermaid
        self.refresh_graph()

    def action_close(self) -> None:
        self.dismiss(None)


def render_levels(graph: DependencyGraph) -> Text:
    """The graph's levels with states in their colours (names through printable)."""
    if not graph.nodes:
        return Text("no plugins", style=DIM_STYLE)
    width = max(len(printable(k)) for k in graph.nodes)
    out = Text()
    for number, nodes in enumerate(graph.levels()):
        out.append(f"level {number}" + (" (needs nothing)" if number == 0 else "") + "\n", style="bold")
        for n in nodes:
            out.append(f"  {printable(n.key):<{width}}  ")
            out.append(f"{n.state:<8}", style=PLUGIN_STATE_STYLES.get(n.state, "bold #ff5f5f"))
            if n.group:
                out.append(f"  group {printable(n.group)}", style="#87afd7")
            if n.depends_on:
                out.append(f"  needs {printable(', '.join(n.depends_on))}", style=DIM_STYLE)
            out.append("\n")
    return out
