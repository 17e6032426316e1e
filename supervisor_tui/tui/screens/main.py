"""The main screen: status header, connection banner, pane strip, the three panes, footer; the keys of the panes.

Narrow terminals show one pane at a time (tab and 1/2/3 switch), wide ones all three (``WIDE_MIN``), very wide
ones the consoles and logs side by side. The screen binds keys and forwards them to the app, which owns the
view model and the client; the panes own their titles and filters.
"""

from __future__ import annotations

from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Container
from textual.css.query import NoMatches
from textual.events import Resize
from textual.screen import Screen
from textual.widgets import Footer, Input, Static

from supervisor_tui.core.printable import printable
from supervisor_tui.tui.app_access import SupervisorAppAccess
from supervisor_tui.tui.cells import (
    CONSOLE_COLUMNS,
    CONSOLE_COLUMNS_NARROW,
    PLUGIN_COLUMNS,
    PLUGIN_COLUMNS_NARROW,
    with_node_column,
)
from supervisor_tui.tui.keys import main_bindings
from supervisor_tui.tui.view_model import ConnectionChange
from supervisor_tui.tui.widgets.consoles_pane import ConsolesPane
from supervisor_tui.tui.widgets.keyed_table import KeyedTable
from supervisor_tui.tui.widgets.log_view import LogView
from supervisor_tui.tui.widgets.logs_pane import LogsPane
from supervisor_tui.tui.widgets.pane_box import PaneBox
from supervisor_tui.tui.widgets.plugins_pane import PluginsPane
from supervisor_tui.tui.widgets.status_header import StatusHeader

PANES = ("plugins", "consoles", "logs")
PANE_LABELS = {"plugins": "1 Plugins", "consoles": "2 Consoles", "logs": "3 Logs"}
# At least this many columns and rows show every pane at once; smaller terminals show one pane at a time.
WIDE_MIN = (120, 34)
SIDE_BY_SIDE_MIN_WIDTH = 200


class MainScreen(SupervisorAppAccess, Screen[None]):
    """The main screen: header, pane strip, panes, footer."""

    BINDINGS: ClassVar = [*main_bindings(), Binding("escape", "clear_filter", show=False)]

    def __init__(self) -> None:
        super().__init__(id="main")
        self.active_pane = "plugins"

    def compose(self) -> ComposeResult:
        yield StatusHeader(id="status")
        yield Static("", id="banner", markup=False)
        yield Static("", id="tabs")
        with Container(id="panes"):
            yield PluginsPane()
            with Container(id="lower"):
                yield ConsolesPane()
                yield LogsPane()
        yield Footer(compact=True)

    # -- the parts -----------------------------------------------------------------------------------------
    @property
    def plugins_pane(self) -> PluginsPane:
        return self.query_one(PluginsPane)

    @property
    def consoles_pane(self) -> ConsolesPane:
        return self.query_one(ConsolesPane)

    @property
    def logs_pane(self) -> LogsPane:
        return self.query_one(LogsPane)

    @property
    def header(self) -> StatusHeader:
        return self.query_one("#status", StatusHeader)

    @property
    def banner(self) -> Static:
        return self.query_one("#banner", Static)

    def pane_box(self, name: str) -> PaneBox:
        return self.query_one(f"#{name}-pane", PaneBox)

    def pane_widget(self, name: str) -> KeyedTable | LogView:
        if name == "logs":
            return self.query_one("#log-view", LogView)
        return self.query_one(f"#{name}-table", KeyedTable)

    def show_connection(self, change: ConnectionChange) -> None:
        """The banner while the link to the supervisor is down; a toast when it comes back saying something."""
        banner = self.banner
        if change.connected:
            banner.remove_class("-shown")
            banner.update("")
            if change.message:
                self.notify(printable(change.message), title="Connected", markup=False)
        else:
            banner.add_class("-shown")
            banner.update(printable(f" ⚠ connection lost: {change.message or 'reconnecting'} — reconnecting…"))

    # -- layout --------------------------------------------------------------------------------------------
    async def on_mount(self) -> None:
        try:
            self._apply_layout(self.size.width, self.size.height)
            self.query_one("#plugins-table", KeyedTable).focus()
        except NoMatches:  # the app is already closing (terminal gone at startup)
            return
        await self.sup_app.start_live()

    def on_resize(self, event: Resize) -> None:
        self._apply_layout(event.size.width, event.size.height)

    def relayout(self) -> None:
        """Lay the screen out again at its size (the columns depend on more than the size: the fleet's nodes)."""
        self._apply_layout(self.size.width, self.size.height)

    def _apply_layout(self, width: int, height: int) -> None:
        wide = width >= WIDE_MIN[0] and height >= WIDE_MIN[1]
        self.set_class(wide, "-wide")
        self.set_class(not wide, "-narrow")
        self.set_class(wide and width >= SIDE_BY_SIDE_MIN_WIDTH, "-side")
        try:
            plugins = self.query_one("#plugins-table", KeyedTable)
            consoles = self.query_one("#consoles-table", KeyedTable)
        except NoMatches:  # a resize before the panes are composed; on_mount lays them out
            return
        # At 80 columns the footer has room for the pane's keys only; ctrl+p is in the help screen.
        for footer in self.query(Footer):
            footer.show_command_palette = width >= 100
        columns = PLUGIN_COLUMNS if wide else PLUGIN_COLUMNS_NARROW
        plugins.show_columns(with_node_column(columns) if self.sup_app.view.fleet_size > 1 else columns)
        consoles.show_columns(CONSOLE_COLUMNS if width >= 110 else CONSOLE_COLUMNS_NARROW)
        if self.is_mounted:
            self.sup_app.layout_changed()
        self._show_active()

    @property
    def wide(self) -> bool:
        return self.has_class("-wide")

    def _show_active(self) -> None:
        for name in PANES:
            self.pane_box(name).set_class(name == self.active_pane, "-active")
        self.query_one("#lower").set_class(self.active_pane != "plugins", "-active")
        self._render_tabs()

    def _render_tabs(self) -> None:
        parts = []
        for name in PANES:
            if name == self.active_pane:
                parts.append(f"[reverse bold] {PANE_LABELS[name]} [/]")
            else:
                parts.append(f"[@click=screen.show_pane('{name}')] {PANE_LABELS[name]} [/]")
        info = self.sup_app.client.info
        mode = info.mode + (" · read-only" if info.read_only else "")
        grid = Table.grid(expand=True)
        grid.add_column(no_wrap=True)
        grid.add_column(justify="right", no_wrap=True, overflow="ellipsis")
        grid.add_row(Text.from_markup(" ".join(parts)), Text.assemble((mode, "bold"), f" · API {info.api_url}"))
        self.query_one("#tabs", Static).update(grid)

    def show_pane(self, name: str, focus: bool = True) -> None:
        if name not in PANES:
            return
        self.active_pane = name
        self._show_active()
        if focus:
            self.pane_widget(name).focus()
        self.sup_app.on_pane_shown(name)
        self.refresh_bindings()

    def on_descendant_focus(self) -> None:
        focused = self.focused
        for name in PANES:
            box = self.pane_box(name)
            if focused is not None and box in focused.ancestors_with_self and name != self.active_pane:
                self.active_pane = name
                self._show_active()
                self.sup_app.on_pane_shown(name)
                break
        self.refresh_bindings()

    # -- actions -------------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("start", "stop", "restart", "scale", "group"):
            if self.sup_app.client.info.read_only:
                return False
            return self.active_pane == "plugins"
        if action == "plugin_logs":
            return self.active_pane == "plugins"
        if action == "details":
            return self.active_pane in ("plugins", "consoles")
        return True

    def selected_plugin(self) -> str | None:
        """The selected plugin's key (a replica's sub-row, "key#N", selects its plugin)."""
        key = self.query_one("#plugins-table", KeyedTable).selected_key
        return key.split("#", 1)[0] if key else key

    def action_scale(self, delta: int) -> None:
        key = self.selected_plugin()
        if key:
            self.sup_app.actions.scale(key, delta)

    def action_start(self) -> None:
        key = self.selected_plugin()
        if key:
            self.sup_app.actions.run("start", key)

    def action_restart(self) -> None:
        key = self.selected_plugin()
        if key:
            self.sup_app.actions.run("restart", key)

    def action_stop(self) -> None:
        key = self.selected_plugin()
        if key:
            self.sup_app.actions.confirm_stop(key)

    def action_group(self) -> None:
        key = self.selected_plugin()
        if key:
            self.sup_app.actions.choose_group_action(key)

    def action_graph(self) -> None:
        self.sup_app.open_graph()

    def action_details(self) -> None:
        if self.active_pane == "plugins":
            key = self.selected_plugin()
            if key:
                self.sup_app.open_plugin(key)
        elif self.active_pane == "consoles":
            cid = self.query_one("#consoles-table", KeyedTable).selected_key
            if cid:
                self.sup_app.open_console(cid)

    @on(KeyedTable.RowSelected)
    def _row_selected(self, event: KeyedTable.RowSelected) -> None:
        event.stop()
        key = str(event.row_key.value)
        if event.data_table.id == "plugins-table":
            self.sup_app.open_plugin(key)
        elif event.data_table.id == "consoles-table":
            self.sup_app.open_console(key)

    def action_fleet(self) -> None:
        self.sup_app.action_fleet()

    def action_plugin_logs(self) -> None:
        key = self.selected_plugin()
        if key:
            self.show_logs_of(key)

    def show_logs_of(self, source: str | None) -> None:
        self.logs_pane.show_source(source)
        self.show_pane("logs")

    def action_show_pane(self, name: str) -> None:
        self.show_pane(name)

    def action_next_pane(self) -> None:
        index = PANES.index(self.active_pane)
        self.show_pane(PANES[(index + 1) % len(PANES)])

    def action_toggle_pause(self) -> None:
        self.sup_app.toggle_pause()

    def action_request_quit(self) -> None:
        self.sup_app.request_quit()

    # -- filters -------------------------------------------------------------------------------------------
    def action_filter(self) -> None:
        self.pane_box(self.active_pane).open_filter()

    def action_clear_filter(self) -> None:
        self._clear_filter(self.active_pane)

    def _clear_filter(self, pane: str) -> None:
        box = self.pane_box(pane)
        had_filter = box.close_filter()
        if pane == "logs":
            self.logs_pane.clear_source()
        if had_filter or self.focused is box.filter_field:
            self.pane_widget(pane).focus()

    def on_key(self, event: Any) -> None:
        # esc inside a filter field clears it (Input does not bind escape itself).
        if event.key == "escape" and isinstance(self.focused, Input) and self.focused.has_class("filter"):
            event.stop()
            self._clear_filter((self.focused.id or "").removesuffix("-filter"))
