"""The ``4`` screen: the fleet's nodes (``redis.url``): status, when last seen, plugin and console counts.

It reads ``client.fleet_nodes()`` when it opens and every ``REFRESH`` seconds while it is shown; esc, q or 4
closes it. ``enter`` on a node attaches the TUI to that node's API (with this TUI's admin token: nodes that share
``auth.admin_token``); ``enter`` on the node the TUI started on comes back. Node names and URLs come from Redis,
where anyone with publish rights may write: they are escaped.
"""

from __future__ import annotations

import time
from typing import ClassVar

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from supervisor_tui.core.printable import printable
from supervisor_tui.core.status import NodeStatus
from supervisor_tui.tui.app_access import SupervisorAppAccess
from supervisor_tui.tui.client import ClientError

REFRESH = 2.0
COLUMNS = ("Node", "Status", "Last seen", "Version", "Plugins", "Consoles", "URL")


def _counts(by_state: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()) if n) or "-"


def node_row(node: NodeStatus, now: float) -> tuple[Text, ...]:
    """One node as the table shows it."""
    seen = f"{max(0, int(now - node.last_seen))}s ago"
    status = Text(node.status, style="#5fd75f" if node.status == "up" else "bold #ff5f5f")
    name = printable(node.node) + (" (this node)" if node.this_node else "")
    cells = (name, status, seen, node.version, _counts(node.plugins), _counts(node.consoles), node.advertise_url)
    return tuple(c if isinstance(c, Text) else Text(printable(str(c))) for c in cells)


class FleetScreen(SupervisorAppAccess, ModalScreen[None]):
    """Every node of the fleet this supervisor sees on Redis."""

    BINDINGS: ClassVar = [
        Binding("escape,q,4", "close", "Close", id="fleet.close"),
    ]

    DEFAULT_CSS = """
    FleetScreen { align: center middle; background: $background 60%; }
    FleetScreen > Vertical {
        width: 110; max-width: 100%; height: auto; max-height: 100%;
        border: thick $accent; background: $panel; padding: 0 1;
    }
    FleetScreen DataTable { height: auto; max-height: 20; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[str, NodeStatus] = {}

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(Text("Fleet", style="bold"), id="fleet-title")
            table: DataTable[Text] = DataTable(id="fleet-table", cursor_type="row", zebra_stripes=True)
            table.add_columns(*COLUMNS)
            yield table
            yield Static("", id="fleet-note")

    async def on_mount(self) -> None:
        await self.reload()
        self.set_interval(REFRESH, self.reload)

    async def reload(self) -> None:
        note = self.query_one("#fleet-note", Static)
        try:
            nodes = await self.sup_app.client.fleet_nodes()
            redis = await self.sup_app.client.redis_status()
        except ClientError as exc:
            note.update(Text(f"cannot read the fleet: {printable(exc.message)}", style="#ff5f5f"))
            return
        app = self.sup_app
        if not app.attached_node:
            app.home_node = next((n.node for n in nodes if n.this_node), app.home_node)
        table = self.query_one("#fleet-table", DataTable)
        selected = self._selected()
        table.clear()
        now = time.time()
        self.nodes = {n.node: n for n in nodes}
        for node in nodes:
            table.add_row(*node_row(node, now), key=node.node)
        if selected in self.nodes:
            table.move_cursor(row=list(self.nodes).index(selected))
        if redis == "off":
            note.update(Text("This supervisor is in no fleet: set redis.url (docs/fleet.md).", style="#8a8a8a"))
        else:
            up = sum(1 for n in nodes if n.status == "up")
            style = "#ff5f5f" if redis == "down" else "#8a8a8a"
            where = f"attached to {printable(app.attached_node)}; " if app.attached_node else ""
            note.update(
                Text(f"{where}Redis {redis}; {up} of {len(nodes)} nodes up. enter attaches, esc closes.", style=style)
            )

    def _selected(self) -> str:
        table = self.query_one("#fleet-table", DataTable)
        if table.row_count == 0:
            return ""
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)

    @on(DataTable.RowSelected)
    async def _row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        await self.action_attach()

    async def action_attach(self) -> None:
        """Attach to the selected node (``enter``), or come back to the home node."""
        node = self.nodes.get(self._selected())
        if node is None:
            return
        app = self.sup_app
        # The home node is the one this TUI started on: this_node is seen from the node shown now.
        home = node.node == app.home_node or (node.this_node and not app.attached_node)
        if await app.attach_node(node.node, node.advertise_url, home=home):
            self.dismiss(None)

    def action_close(self) -> None:
        self.dismiss(None)
