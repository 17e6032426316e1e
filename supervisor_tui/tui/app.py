"""The Textual app: header, plugins / consoles / logs panes, detail screens, actions, live updates.

Events from the client are collected as they arrive and applied at most ``FLUSH_HZ`` times a second inside
``batch_update()``, touching only the cells that changed. The consoles table holds one window of the
consoles (``CONSOLE_ROWS``, the filter narrows it), so 10,000 consoles cost what 500 do.

Embedding: ``await SupervisorApp(client=...).run_async()`` runs in the caller's event loop next to the
supervisor and its HTTP server. The app never stops plugins itself: when it returns, the caller closes the
supervisor (embedded) or just disconnects (attached). SIGHUP or stdin at EOF make it return too.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

from rich.table import Table
from rich.text import Text
from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Container, Vertical
from textual.css.query import NoMatches
from textual.events import Resize
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Footer, Input, Static

from supervisor_tui.core.printable import printable
from supervisor_tui.tui.app_access import SupervisorAppAccess
from supervisor_tui.tui.cells import (
    CONSOLE_COLUMNS,
    CONSOLE_COLUMNS_NARROW,
    CONSOLE_STATE_STYLES,
    DANGER_STYLE,
    PLUGIN_COLUMNS,
    PLUGIN_COLUMNS_NARROW,
    PLUGIN_STATE_STYLES,
    WARNING_STYLE,
    console_cells,
    escape,
    plugin_cells,
)
from supervisor_tui.tui.client import (
    CONNECTION_TOPIC,
    CONSOLE_STATES,
    ClientError,
    ConsoleInfo,
    LogEntry,
    MetricPoint,
    PluginInfo,
    SupervisorClient,
)
from supervisor_tui.tui.commands import SupervisorCommands
from supervisor_tui.tui.driver import HangupSafeDriver
from supervisor_tui.tui.keys import main_bindings, validate_keymap
from supervisor_tui.tui.screens.confirm import ConfirmScreen
from supervisor_tui.tui.widgets.keyed_table import KeyedTable
from supervisor_tui.tui.widgets.log_view import LogView

FLUSH_HZ = 4
CONSOLE_ROWS = 500
LOG_LINES = 10_000
HISTORY_SECONDS = 300.0
RATE_SECONDS = 2.0
CONSOLE_REFRESH_SECONDS = 1.0
PANES = ("plugins", "consoles", "logs")
# At least this many columns and rows show every pane at once; smaller terminals show one pane at a time.
WIDE_MIN = (120, 34)
SIDE_BY_SIDE_MIN_WIDTH = 200


class StatusHeader(Widget):
    """The one-line summary: plugins, consoles by state, warnings. Repaints without a layout pass."""

    DEFAULT_CSS = "StatusHeader { height: 1; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._text = Text("")

    def set_markup(self, markup: str) -> None:
        self._text = Text.from_markup(markup, overflow="ellipsis")
        self._text.no_wrap = True
        self.refresh()

    def render(self) -> Text:
        return self._text


class PaneBox(Vertical):
    """One pane: a bordered box holding a table or the log, plus its filter field."""

    DEFAULT_CSS = """
    PaneBox { border: round $panel-lighten-2; height: 1fr; }
    PaneBox:focus-within { border: round $accent; }
    PaneBox > Input.filter { display: none; height: 1; border: none; padding: 0 1; background: $boost; }
    PaneBox > Input.filter.-shown { display: block; }
    """

    def __init__(self, name: str, title: str, *children: Any) -> None:
        super().__init__(*children, id=f"{name}-pane")
        self.pane_name = name
        self.border_title = title


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
            yield PaneBox(
                "plugins",
                "Plugins",
                KeyedTable(PLUGIN_COLUMNS, id="plugins-table"),
                Input(placeholder="filter plugins (key, name, state)", id="plugins-filter", classes="filter"),
            )
            with Container(id="lower"):
                yield PaneBox(
                    "consoles",
                    "Consoles",
                    KeyedTable(CONSOLE_COLUMNS, id="consoles-table"),
                    Input(
                        placeholder="filter consoles (name, id, host, job, state)",
                        id="consoles-filter",
                        classes="filter",
                    ),
                )
                yield PaneBox(
                    "logs",
                    "Logs",
                    LogView(LOG_LINES, id="log-view"),
                    Input(placeholder="filter logs: text, source:NAME", id="logs-filter", classes="filter"),
                )
        yield Footer(compact=True)

    async def on_mount(self) -> None:
        try:
            self._apply_layout(self.size.width, self.size.height)
            self.query_one("#plugins-table", KeyedTable).focus()
        except NoMatches:  # the app is already closing (terminal gone at startup)
            return
        await self.sup_app.start_live()

    def on_resize(self, event: Resize) -> None:
        self._apply_layout(event.size.width, event.size.height)

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
        plugins.show_columns(PLUGIN_COLUMNS if wide else PLUGIN_COLUMNS_NARROW)
        consoles.show_columns(CONSOLE_COLUMNS if width >= 110 else CONSOLE_COLUMNS_NARROW)
        if self.is_mounted:
            self.sup_app.layout_changed()
        self._show_active()

    @property
    def wide(self) -> bool:
        return self.has_class("-wide")

    def _show_active(self) -> None:
        for name in PANES:
            self.query_one(f"#{name}-pane", PaneBox).set_class(name == self.active_pane, "-active")
        self.query_one("#lower").set_class(self.active_pane != "plugins", "-active")
        self._render_tabs()

    def _render_tabs(self) -> None:
        labels = {"plugins": "1 Plugins", "consoles": "2 Consoles", "logs": "3 Logs"}
        parts = []
        for name in PANES:
            if name == self.active_pane:
                parts.append(f"[reverse bold] {labels[name]} [/]")
            else:
                parts.append(f"[@click=screen.show_pane('{name}')] {labels[name]} [/]")
        info = self.sup_app.client.info
        mode = info.mode + (" · read-only" if info.read_only else "")
        grid = Table.grid(expand=True)
        grid.add_column(no_wrap=True)
        grid.add_column(justify="right", no_wrap=True, overflow="ellipsis")
        grid.add_row(Text.from_markup(" ".join(parts)), Text.assemble((mode, "bold"), f" · API {info.api_url}"))
        self.query_one("#tabs", Static).update(grid)

    def pane_widget(self, name: str) -> KeyedTable | LogView:
        if name == "logs":
            return self.query_one("#log-view", LogView)
        return self.query_one(f"#{name}-table", KeyedTable)

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
            box = self.query_one(f"#{name}-pane", PaneBox)
            if focused is not None and box in focused.ancestors_with_self and name != self.active_pane:
                self.active_pane = name
                self._show_active()
                self.sup_app.on_pane_shown(name)
                break
        self.refresh_bindings()

    # -- actions -----------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        app = self.sup_app
        if action in ("start", "stop", "restart"):
            if app.client.info.read_only:
                return False
            return self.active_pane == "plugins"
        if action == "plugin_logs":
            return self.active_pane == "plugins"
        if action == "details":
            return self.active_pane in ("plugins", "consoles")
        if action == "toggle_pause":
            return True
        return True

    def selected_plugin(self) -> str | None:
        return self.query_one("#plugins-table", KeyedTable).selected_key

    def action_start(self) -> None:
        key = self.selected_plugin()
        if key:
            self.sup_app.plugin_action("start", key)

    def action_restart(self) -> None:
        key = self.selected_plugin()
        if key:
            self.sup_app.plugin_action("restart", key)

    def action_stop(self) -> None:
        key = self.selected_plugin()
        if key:
            self.sup_app.confirm_stop(key)

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

    def action_plugin_logs(self) -> None:
        key = self.selected_plugin()
        if key:
            self.show_logs_of(key)

    def show_logs_of(self, source: str | None) -> None:
        view = self.query_one("#log-view", LogView)
        view.set_filter(source=source)
        self.show_pane("logs")
        self.sup_app.update_log_title()

    def action_show_pane(self, name: str) -> None:
        self.show_pane(name)

    def action_next_pane(self) -> None:
        index = PANES.index(self.active_pane)
        self.show_pane(PANES[(index + 1) % len(PANES)])

    def action_toggle_pause(self) -> None:
        self.sup_app.toggle_pause()

    def action_request_quit(self) -> None:
        self.sup_app.request_quit()

    def action_filter(self) -> None:
        field = self.query_one(f"#{self.active_pane}-filter", Input)
        field.add_class("-shown")
        field.focus()

    def action_clear_filter(self) -> None:
        self._clear_filter(self.active_pane)

    def _clear_filter(self, pane: str) -> None:
        field = self.query_one(f"#{pane}-filter", Input)
        had_filter = bool(field.value) or field.has_class("-shown")
        field.value = ""
        field.remove_class("-shown")
        self.sup_app.apply_filter(pane, "")
        if pane == "logs":
            view = self.query_one("#log-view", LogView)
            if view.source_filter is not None:
                view.set_filter(source=None)
                self.sup_app.update_log_title()
        if had_filter or self.focused is field:
            self.pane_widget(pane).focus()

    @on(Input.Changed, ".filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        pane = (event.input.id or "").removesuffix("-filter")
        self.sup_app.apply_filter(pane, event.value)

    @on(Input.Submitted, ".filter")
    def _filter_submitted(self, event: Input.Submitted) -> None:
        pane = (event.input.id or "").removesuffix("-filter")
        if not event.value:
            event.input.remove_class("-shown")
        self.pane_widget(pane).focus()

    def on_key(self, event: Any) -> None:
        # esc inside a filter field clears it (Input does not bind escape itself).
        if event.key == "escape" and isinstance(self.focused, Input) and self.focused.has_class("filter"):
            event.stop()
            self._clear_filter((self.focused.id or "").removesuffix("-filter"))


class SupervisorApp(App[int]):
    """The supervisor TUI over any SupervisorClient (in-process, remote or demo)."""

    CSS_PATH = "supervisor.tcss"
    TITLE = "supervisor-tui"
    COMMANDS: ClassVar = {SupervisorCommands}
    ENABLE_COMMAND_PALETTE = True
    BINDINGS: ClassVar = [
        Binding("question_mark", "help", "Help", id="help", tooltip="Every key and what it does"),
        Binding(
            "ctrl+p",
            "command_palette",
            "Commands",
            id="palette",
            show=False,
            priority=True,
            tooltip="Start/stop/restart a plugin by name, jump to a console, switch pane",
        ),
        Binding("ctrl+q", "request_quit", "Quit", show=False, priority=True, id="quit_now"),
    ]

    def __init__(
        self,
        client: SupervisorClient,
        *,
        keymap: Mapping[str, object] | None = None,
        handle_signals: bool = True,
        freeze_heap: bool = True,
    ) -> None:
        super().__init__()
        self.driver_class = HangupSafeDriver
        self.client = client
        merged: dict[str, object] = {**client.info.keymap, **(keymap or {})}
        self.keymap, self.keymap_problems = validate_keymap(merged)
        self.handle_signals = handle_signals
        self.freeze_heap = freeze_heap
        self.plugins_by_key: dict[str, PluginInfo] = {}
        self.plugin_order: list[str] = []
        self.state_history: dict[str, deque[tuple[float, str, str, str]]] = {}
        self.metrics_history: dict[str, deque[MetricPoint]] = {}
        self.pending_actions: dict[str, tuple[str, float]] = {}
        self.rate_history: dict[str, deque[tuple[float, float]]] = {}
        self._last_counts: dict[str, tuple[int, float]] = {}
        self.console_stats: dict[str, int] = {}
        self.console_total = 0
        self.console_shown = 0
        self.plugin_filter = ""
        self.console_filter = ""
        self.connected = True
        self.connection_message = ""
        self.hangup_reason: str | None = None
        self._dirty_plugins = False
        self._dirty_consoles = True
        self._pending_logs: list[LogEntry] = []
        self._log_horizon = 0.0
        self._console_page: list[ConsoleInfo] = []
        self._consoles_changed = False
        self._last_console_refresh = 0.0
        self._flushing = False
        self._header_text = ""
        self._live = False
        self._tick = 0
        self._signals_installed: list[int] = []
        self.flushes = 0  # how many batches were applied (the benchmark reads it)

    # -- lifecycle ---------------------------------------------------------------------------------------
    def get_default_screen(self) -> Screen[Any]:
        return MainScreen()

    @property
    def main(self) -> MainScreen:
        """The main screen (at the bottom of the stack); LookupError before it is mounted."""
        for s in self.screen_stack:
            if isinstance(s, MainScreen):
                return s
        raise LookupError("main screen not mounted")

    async def on_mount(self) -> None:
        if self.keymap:
            self.set_keymap(self.keymap)
        for problem in self.keymap_problems:
            self.notify(printable(problem), severity="warning", timeout=8, markup=False)
        if self.client.info.read_only:
            self.sub_title = "read-only"
        self._install_signal_handlers()

    async def start_live(self) -> None:
        """Load what the supervisor has now, then follow its events (called once the main screen exists)."""
        if self._live:
            return
        self._live = True
        await self._load_initial()
        if self.freeze_heap:
            # Everything alive now (widgets, the first page of data, the supervisor in embedded mode) lives as
            # long as the app; keeping it out of the collector's full passes removes 50-80 ms pauses that
            # otherwise land on key presses once the heap holds thousands of consoles.
            gc.collect()
            gc.freeze()
        self.run_worker(self._consume_events(), name="events", group="events", exit_on_error=False)
        self.set_interval(1 / FLUSH_HZ, self._apply_pending, name="flush")
        self.set_interval(RATE_SECONDS, self._sample_rates, name="rates")

    async def _sample_rates(self) -> None:
        """Requests/s per plugin from the gateway's cumulative counts."""
        try:
            counts = await self.client.request_counts()
        except ClientError:
            return
        if not counts:
            return
        now = time.monotonic()
        wall = self.client.now()

        for key, count in counts.items():
            before = self._last_counts.get(key)
            self._last_counts[key] = (count, now)
            if before is None or now <= before[1]:
                continue
            rate = max(0.0, (count - before[0]) / (now - before[1]))
            self.rate_history.setdefault(key, deque(maxlen=int(HISTORY_SECONDS // RATE_SECONDS) + 5)).append(
                (wall, rate)
            )
            p = self.plugins_by_key.get(key)
            if p is not None:
                self.plugins_by_key[key] = replace(p, requests_per_s=rate)

    def _install_signal_handlers(self) -> None:
        """SIGHUP (terminal closed) and SIGTERM (kill, service stop) end the app; the caller then cleans up."""
        if not self.handle_signals:
            return
        loop = asyncio.get_running_loop()
        reasons = {signal.SIGHUP: "terminal closed (SIGHUP)", signal.SIGTERM: "asked to stop (SIGTERM)"}
        codes = {signal.SIGHUP: 129, signal.SIGTERM: 143}
        for sig, reason in reasons.items():
            with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
                loop.add_signal_handler(sig, self.hangup, reason, codes[sig])
                self._signals_installed.append(sig)

    def hangup(self, reason: str = "terminal closed", code: int = 129) -> None:
        """The terminal went away (or a stop was asked for): leave at once; the caller stops plugins."""
        if self.hangup_reason is None:
            self.hangup_reason = reason
            self.exit(code, return_code=code)

    async def on_unmount(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in self._signals_installed:
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(sig)
            if sig == signal.SIGHUP and self.hangup_reason is not None:
                # The caller is stopping plugins now; a second SIGHUP must not kill it halfway.
                with contextlib.suppress(ValueError, OSError):
                    signal.signal(sig, signal.SIG_IGN)
        self._signals_installed.clear()

    async def _load_initial(self) -> None:
        try:
            plugins = await self.client.plugins()
            self._set_plugins(plugins)
            logs = await self.client.logs(None, 500)
            self._add_logs(logs)
            for p in plugins:
                self.state_history.setdefault(p.key, deque(maxlen=100)).append(
                    (p.started_at or self.client.now(), "", p.state, p.detail or "current state")
                )
        except ClientError as exc:
            self._set_connection(False, exc.message)
        await self._refresh_consoles(force=True)
        self._apply()

    # -- events ------------------------------------------------------------------------------------------
    async def _consume_events(self) -> None:
        async for batch in self.client.events():
            self.ingest(batch)

    def ingest(self, batch: list[dict[str, Any]]) -> None:
        """Fold a batch of events into the pending state; the next flush shows it."""
        for ev in batch:
            topic = str(ev.get("topic", ""))
            if topic == "log":
                entry = LogEntry.from_dict(ev)
                # Lines up to the horizon came with a snapshot (initial load, resync after a reconnect).
                if entry.ts > self._log_horizon:
                    self._log_horizon = entry.ts
                    self._pending_logs.append(entry)
            elif topic == "plugin.metrics":
                self._ingest_metrics(ev)
            elif topic.startswith("plugin"):
                self._dirty_plugins = True
                if topic == "plugin.state":
                    key = str(ev.get("key"))
                    self.state_history.setdefault(key, deque(maxlen=100)).append(
                        (
                            float(ev.get("ts") or self.client.now()),
                            str(ev.get("from_state") or ""),
                            str(ev.get("to_state") or ""),
                            str(ev.get("reason") or ""),
                        )
                    )
            elif topic.startswith("console"):
                self._dirty_consoles = True
            elif topic == CONNECTION_TOPIC:
                self._set_connection(bool(ev.get("connected")), str(ev.get("message") or ""))
                if ev.get("connected"):
                    self._dirty_plugins = True
                    self._dirty_consoles = True
                    self.run_worker(self._resync_logs(), group="logs-resync", exclusive=True, exit_on_error=False)

    def _add_logs(self, entries: list[LogEntry]) -> None:
        """Queue snapshot lines newer than anything shown, and move the horizon past them."""
        fresh = [e for e in sorted(entries, key=lambda e: e.ts) if e.ts > self._log_horizon]
        if fresh:
            self._log_horizon = fresh[-1].ts
            self._pending_logs.extend(fresh)

    async def _resync_logs(self) -> None:
        """After (re)connecting: the lines written while the event stream was down."""
        try:
            self._add_logs(await self.client.logs(None, 500))
        except ClientError:
            pass

    def _ingest_metrics(self, ev: Mapping[str, Any]) -> None:
        key = str(ev.get("key"))
        point = MetricPoint.from_dict(ev)
        history = self.metrics_history.setdefault(key, deque(maxlen=int(HISTORY_SECONDS // 2) + 10))
        history.append(point)
        p = self.plugins_by_key.get(key)
        if p is not None:
            rps = point.requests_per_s if point.requests_per_s is not None else p.requests_per_s
            self.plugins_by_key[key] = replace(p, cpu_percent=point.cpu_percent, rss=point.rss, requests_per_s=rps)

    def _set_connection(self, connected: bool, message: str) -> None:
        self.connected = connected
        self.connection_message = message
        try:
            banner = self.main.query_one("#banner", Static)
        except LookupError:
            return
        except Exception:
            return
        if connected:
            banner.remove_class("-shown")
            banner.update("")
            if message:
                self.notify(printable(message), title="Connected", markup=False)
        else:
            banner.add_class("-shown")
            banner.update(printable(f" ⚠ connection lost: {message or 'reconnecting'} — reconnecting…"))

    # -- flushing ----------------------------------------------------------------------------------------
    async def _apply_pending(self) -> None:
        if self._flushing:
            return
        self._flushing = True
        try:
            self._tick += 1
            if self._dirty_plugins:
                self._dirty_plugins = False
                try:
                    self._set_plugins(await self.client.plugins())
                except ClientError as exc:
                    self._dirty_plugins = True
                    if self.connected:
                        self.log.warning(f"plugins refresh failed: {exc.message}")
            await self._refresh_consoles()
            self._apply()
            self.flushes += 1
        finally:
            self._flushing = False

    def _set_plugins(self, plugins: list[PluginInfo]) -> None:
        by_key = {}
        for p in plugins:
            old = self.plugins_by_key.get(p.key)
            # Live metrics come by event between snapshots; keep them when the snapshot has none.
            if old is not None and p.cpu_percent is None and old.cpu_percent is not None and p.pid == old.pid:
                p = replace(
                    p,
                    cpu_percent=old.cpu_percent,
                    rss=old.rss,
                    requests_per_s=p.requests_per_s if p.requests_per_s is not None else old.requests_per_s,
                )
            elif old is not None and p.requests_per_s is None and old.requests_per_s is not None:
                p = replace(p, requests_per_s=old.requests_per_s)
            by_key[p.key] = p
        self.plugins_by_key = by_key
        self.plugin_order = [p.key for p in plugins]

    async def _refresh_consoles(self, force: bool = False) -> None:
        now = time.monotonic()
        visible = force or self._consoles_visible()
        # Once a second: ages tick by the second, and heartbeats arriving faster than that are folded together.
        due = now - self._last_console_refresh >= CONSOLE_REFRESH_SECONDS
        if not visible or not (due or force):
            return
        self._last_console_refresh = now
        self._dirty_consoles = False
        state, q = self._parse_console_filter(self.console_filter)
        try:
            page = await self.client.consoles(q=q, state=state, limit=CONSOLE_ROWS)
            self.console_stats = await self.client.console_stats()
        except ClientError as exc:
            self._dirty_consoles = True
            self.log.warning(f"consoles refresh failed: {exc.message}")
            return
        self._console_page = page.consoles
        self.console_total = page.total
        self._consoles_changed = True

    def _consoles_visible(self) -> bool:
        try:
            main = self.main
        except LookupError:
            return False
        return main.wide or main.active_pane == "consoles" or self.screen is not main

    @staticmethod
    def _parse_console_filter(text: str) -> tuple[str, str]:
        words = text.strip().lower().split()
        state = ""
        rest = []
        for w in words:
            if w in CONSOLE_STATES and not state:
                state = w
            elif w.startswith("state:") and w[6:] in CONSOLE_STATES:
                state = w[6:]
            else:
                rest.append(w)
        return state, " ".join(rest)

    def _apply(self) -> None:
        """Push pending state into the widgets, inside one batch."""
        try:
            main = self.main
        except LookupError:
            return
        now = self.client.now()
        mono = time.monotonic()
        try:
            with self.batch_update():
                self._apply_plugins(main, now, mono)
                if self._consoles_changed:
                    self._consoles_changed = False
                    self._apply_consoles(main, now)
                if self._pending_logs:
                    logs, self._pending_logs = self._pending_logs, []
                    main.query_one("#log-view", LogView).append(logs)
                self._apply_header(main)
        except NoMatches:  # a last timer tick while the app is closing and its widgets are gone
            return

    def _apply_plugins(self, main: MainScreen, now: float, mono: float) -> None:
        table = main.query_one("#plugins-table", KeyedTable)
        needle = self.plugin_filter.strip().lower()
        rows = {}
        for key in self.plugin_order:
            p = self.plugins_by_key[key]
            if needle and not any(needle in s.lower() for s in (p.key, p.name, p.state, p.kind)):
                continue
            pending = self.pending_actions.get(key)
            progress = (pending[0], mono - pending[1]) if pending else None
            rows[key] = plugin_cells(p, now, progress, self._tick)
        table.reconcile(rows, list(rows))
        total = len(self.plugins_by_key)
        running = sum(1 for p in self.plugins_by_key.values() if p.state == "RUNNING")
        title = f"Plugins {running}/{total} running"
        if needle:
            title += f" — filter: {escape(self.plugin_filter.strip())} ({len(rows)} shown)"
        main.query_one("#plugins-pane", PaneBox).border_title = title

    def _apply_consoles(self, main: MainScreen, now: float) -> None:
        table = main.query_one("#consoles-table", KeyedTable)
        inactive_after = self.client.info.inactive_after
        consoles = self._console_page
        rows = {c.id: console_cells(c, now, inactive_after) for c in consoles}
        table.reconcile(rows, list(rows))
        self.console_shown = len(rows)
        title = f"Consoles {self.console_total:,}"
        if self.console_filter.strip():
            title += f" matching “{escape(self.console_filter.strip())}”"
        if self.console_total > len(rows):
            title += f" — showing {len(rows):,}, / to narrow"
        main.query_one("#consoles-pane", PaneBox).border_title = title

    def update_log_title(self) -> None:
        try:
            main = self.main
            view = main.query_one("#log-view", LogView)
        except (LookupError, NoMatches):
            return
        title = "Logs"
        if view.source_filter:
            title += f" of {escape(view.source_filter)}"
        if view.text_filter:
            title += f" matching “{escape(view.text_filter)}”"
        box = main.query_one("#logs-pane", PaneBox)
        box.border_title = title
        if view.paused:
            extra = f" — {view.pending} new" if view.pending else ""
            box.border_subtitle = f"[bold black on #ffaf00] PAUSED{extra} [/] space resumes"
        elif view.following:
            box.border_subtitle = "following"
        else:
            box.border_subtitle = "scrolled back — end follows"

    @on(LogView.StatusChanged)
    def _log_status(self) -> None:
        self.update_log_title()

    def _apply_header(self, main: MainScreen) -> None:
        plugins = self.plugins_by_key.values()
        total = len(self.plugins_by_key)
        running = sum(1 for p in plugins if p.state == "RUNNING")
        fatal = [p.key for p in plugins if p.state in ("FATAL", "LOST", "INVALID", "BACKOFF")]
        parts = [f"[b]plugins[/b] [#5fd75f]{running}[/]/{total}"]
        stats = self.console_stats
        ctotal = sum(stats.values())
        narrow = not main.wide
        short = {"active": "act", "busy": "busy", "idle": "idle", "error": "err", "inactive": "inact"}
        states = " ".join(
            f"[{CONSOLE_STATE_STYLES.get(s, '')}]{stats.get(s, 0):,} {short[s] if narrow else s}[/]"
            for s in CONSOLE_STATES
            if stats.get(s)
        )
        parts.append(f"[b]consoles[/b] {ctotal:,}" + (f": {states}" if states else ""))
        warnings = []
        if fatal:
            warnings.append(
                f"[{PLUGIN_STATE_STYLES['FATAL']}] {len(fatal)} plugin{'s' if len(fatal) > 1 else ''}"
                f" {'/'.join(sorted({self.plugins_by_key[k].state for k in fatal}))} [/]"
            )
        bad = stats.get("error", 0)
        gone = stats.get("inactive", 0)
        if narrow:
            bad = gone = 0  # already in the coloured counts; the room is for FATAL plugins
        if bad:
            warnings.append(f"[{DANGER_STYLE}]{bad:,} error[/]")
        if gone:
            warnings.append(f"[{WARNING_STYLE}]{gone:,} inactive[/]")
        if not self.connected:
            warnings.append(f"[{DANGER_STYLE}]disconnected[/]")
        if warnings:
            parts.append("⚠ " + " ".join(warnings))
        text = " │ ".join(parts)
        if text != self._header_text:  # an unchanged header must not cost a repaint
            self._header_text = text
            main.query_one("#status", StatusHeader).set_markup(text)

    # -- filters -----------------------------------------------------------------------------------------
    def apply_filter(self, pane: str, text: str) -> None:
        if pane == "plugins":
            self.plugin_filter = text
            self._apply()
        elif pane == "consoles":
            self.console_filter = text
            self._dirty_consoles = True
            self._last_console_refresh = 0.0
            self.refresh_consoles_now()
        elif pane == "logs":
            view = self.main.query_one("#log-view", LogView)
            source: str | bool | None = False
            words = []
            for w in text.split():
                if w.startswith("source:"):
                    source = w[7:] or None
                else:
                    words.append(w)
            view.set_filter(" ".join(words), source)
            self.update_log_title()

    @work(exclusive=True, group="consoles-refresh")
    async def refresh_consoles_now(self) -> None:
        await self._refresh_consoles(force=True)
        self._apply()

    def layout_changed(self) -> None:
        """Columns were rebuilt for a new terminal size: show every row again."""
        self._consoles_changed = bool(self._console_page)
        self._apply()

    def on_pane_shown(self, name: str) -> None:
        if name == "consoles":
            self._last_console_refresh = 0.0
            self.refresh_consoles_now()

    def toggle_pause(self) -> None:
        view = self.main.query_one("#log-view", LogView)
        paused = view.toggle_pause()
        self.update_log_title()
        self.notify("log paused" if paused else "log following", timeout=1.5)

    # -- plugin actions ----------------------------------------------------------------------------------
    def plugin_action(self, verb: str, key: str) -> None:
        """Run start/stop/restart in the background; the row shows progress, failures a notification."""
        if self.client.info.read_only:
            self.notify("read-only: actions that change state are disabled", severity="warning")
            return
        if key in self.pending_actions:
            self.notify(
                printable(f"{key}: {self.pending_actions[key][0]} already in progress"),
                severity="warning",
                markup=False,
            )
            return
        label = f"{verb}…"
        self.pending_actions[key] = (label, time.monotonic())
        self._apply()
        self.run_worker(self._run_action(verb, key), group=f"action-{key}", exit_on_error=False)

    async def _run_action(self, verb: str, key: str) -> None:
        try:
            call = {"start": self.client.start, "stop": self.client.stop, "restart": self.client.restart}[verb]
            result = await call(key)
            self.plugins_by_key[key] = result
            if key not in self.plugin_order:
                self.plugin_order.append(key)
        except ClientError as exc:
            self._action_failed(f"{verb} {key} failed: {exc.message}")
        except Exception as exc:  # a transport error must never take the UI down
            self._action_failed(f"{verb} {key} failed: {exc}")
        finally:
            self.pending_actions.pop(key, None)
            self._dirty_plugins = True
            self._apply()

    def _action_failed(self, message: str) -> None:
        self.notify(printable(message), title="Action failed", severity="error", timeout=8, markup=False)

    def confirm_stop(self, key: str) -> None:
        if self.client.info.read_only:
            self.notify("read-only: actions that change state are disabled", severity="warning")
            return
        p = self.plugins_by_key.get(key)
        detail = f" (pid {p.pid}, {p.state})" if p and p.pid else (f" ({p.state})" if p else "")

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.plugin_action("stop", key)

        self.push_screen(
            ConfirmScreen(
                f"Stop plugin {key}?",
                f"{key}{detail} will be stopped; requests to it through the gateway fail until it is started.",
                confirm_label="Stop",
            ),
            done,
        )

    def request_quit(self) -> None:
        if isinstance(self.screen, ConfirmScreen):
            return
        running = [p.key for p in self.plugins_by_key.values() if p.state in ("RUNNING", "STARTING", "BACKOFF")]
        info = self.client.info
        if info.mode == "attached":
            message = (
                f"The supervisor at {info.api_url} keeps running; its {len(running)} running plugin"
                f"{'s' if len(running) != 1 else ''} keep running."
            )
        else:
            names = ", ".join(running[:6]) + ("…" if len(running) > 6 else "")
            message = (
                f"This supervisor stops with the TUI: {len(running)} running plugin"
                f"{'s' if len(running) != 1 else ''} will be stopped"
                + (f" ({names})." if running else ".")
                + " Use --headless to keep plugins running without a UI."
            )

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.exit(0)

        self.push_screen(ConfirmScreen("Quit supervisor-tui?", message, confirm_label="Quit"), done)

    def action_request_quit(self) -> None:
        self.request_quit()

    # -- screens -----------------------------------------------------------------------------------------
    def open_plugin(self, key: str) -> None:
        from supervisor_tui.tui.screens.plugin_detail import PluginDetailScreen

        self.push_screen(PluginDetailScreen(key))

    def open_console(self, console_id: str) -> None:
        from supervisor_tui.tui.screens.console_detail import ConsoleDetailScreen

        self.push_screen(ConsoleDetailScreen(console_id))

    def action_help(self) -> None:
        from supervisor_tui.tui.screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def show_pane(self, name: str) -> None:
        """Back to the main screen with ``name`` shown (palette, detail screens)."""
        while len(self.screen_stack) > 1 and not isinstance(self.screen, MainScreen):
            self.pop_screen()
        self.main.show_pane(name)

    def toggle_follow(self) -> None:
        self.show_pane("logs")
        self.toggle_pause()

    async def action_quit(self) -> None:
        self.request_quit()
