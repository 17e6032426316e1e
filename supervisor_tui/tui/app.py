"""The Textual app: the live loop between a SupervisorClient and the main screen, actions, dialogs, signals.

``SupervisorApp.view`` (a ``ViewModel``) folds events and snapshots into what the panes show; the app fetches
what the view model marks dirty and applies it at most ``FLUSH_HZ`` times a second inside ``batch_update()``,
touching only the cells that changed. The consoles table holds one window of the consoles (``CONSOLE_ROWS``,
the filter narrows it), so 10,000 consoles cost what 500 do. ``notices`` keeps what the operator was told.

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
from dataclasses import dataclass
from typing import Any, ClassVar

from textual import on, work
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.notifications import SeverityLevel
from textual.screen import Screen

from supervisor_tui.core.events import Event
from supervisor_tui.core.printable import printable
from supervisor_tui.tui.client import ClientError, SupervisorClient
from supervisor_tui.tui.commands import SupervisorCommands
from supervisor_tui.tui.driver import HangupSafeDriver
from supervisor_tui.tui.key_order import KeyOrderApp
from supervisor_tui.tui.keys import validate_keymap
from supervisor_tui.tui.plugin_actions import PluginActions
from supervisor_tui.tui.screens.confirm import ConfirmScreen
from supervisor_tui.tui.screens.main import PANES, MainScreen
from supervisor_tui.tui.view_model import RATE_SECONDS, ConnectionChange, ViewModel
from supervisor_tui.tui.widgets.consoles_pane import ConsolesPane
from supervisor_tui.tui.widgets.pane_box import PaneBox
from supervisor_tui.tui.widgets.plugins_pane import PluginsPane

__all__ = ["CONSOLE_ROWS", "PANES", "MainScreen", "Notice", "SupervisorApp"]

FLUSH_HZ = 4
CONSOLE_ROWS = 500
CONSOLE_REFRESH_SECONDS = 1.0
NOTICES = 50


@dataclass(frozen=True, slots=True)
class Notice:
    """One notification the app showed (a toast), as the operator read it."""

    message: str
    title: str
    severity: SeverityLevel


class SupervisorApp(KeyOrderApp[int]):
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
        self.home_client = client  # the supervisor the app was started on; ``attach_node`` comes back to it
        self.attached_node = ""  # the fleet node the app is attached to instead ("" = home)
        self.home_node = ""  # the home supervisor's fleet node name, once the Fleet screen has read it
        merged: dict[str, object] = {**client.info.keymap, **(keymap or {})}
        self.keymap, self.keymap_problems = validate_keymap(merged)
        self.handle_signals = handle_signals
        self.freeze_heap = freeze_heap
        self.view = ViewModel()
        self.notices: deque[Notice] = deque(maxlen=NOTICES)
        self.hangup_reason: str | None = None
        self.actions = PluginActions(self)  # start/stop/restart/scale/group, as the operator asks
        self._flushing = False
        self._live = False
        self._tick = 0
        self._signals_installed: list[int] = []
        self.flushes = 0  # how many batches were applied (the benchmark reads it)

    @property
    def connected(self) -> bool:
        return self.view.connected

    def notify(
        self,
        message: str,
        *,
        title: str = "",
        severity: SeverityLevel = "information",
        timeout: float | None = None,
        markup: bool = True,
    ) -> None:
        """Show a toast, and keep it in ``notices`` (newest last)."""
        self.notices.append(Notice(str(message), title, severity))
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

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
        """Requests/s per plugin from the gateway's counts; the fleet's size (Node column) and the header's warnings."""
        try:
            counts = await self.client.request_counts()
            if self.view.redis != "off":
                await self._count_nodes()
        except ClientError:
            return
        if counts:
            self.view.fold_counts(counts, time.monotonic(), self.client.now())
        try:
            export = await self.client.route_export()
            store_problem = await self.client.console_store_problem()
        except ClientError:
            return
        if self.view.set_problems(export.problem, store_problem):
            self.apply_view()

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
            self.view.set_plugins(plugins)
            self.view.set_request_rates(await self.client.request_rates())
            self.view.add_logs(await self.client.logs(None, 500))
            self.view.record_current_states(plugins, self.client.now())
            self.view.redis = await self.client.redis_status()
            if self.view.redis != "off":
                await self._count_nodes()
            self.view.console_store_problem = await self.client.console_store_problem()
        except ClientError as exc:
            self._set_connection(ConnectionChange(False, exc.message))
        await self._refresh_consoles(force=True)
        self.apply_view()

    # -- events ------------------------------------------------------------------------------------------
    async def _consume_events(self) -> None:
        async for batch in self.client.events():
            self.ingest(batch)

    def ingest(self, batch: list[Event]) -> None:
        """Fold a batch of events into the view model; the next flush shows it."""
        for change in self.view.fold(batch, self.client.now()):
            self._set_connection(change)
            if change.connected:
                self.run_worker(self._resync_logs(), group="logs-resync", exclusive=True, exit_on_error=False)

    async def _resync_logs(self) -> None:
        """After (re)connecting: the lines written while the event stream was down."""
        try:
            self.view.add_logs(await self.client.logs(None, 500))
        except ClientError:
            pass

    def _set_connection(self, change: ConnectionChange) -> None:
        self.view.set_connection(change)
        with contextlib.suppress(LookupError, NoMatches):
            self.main.show_connection(change)

    # -- flushing ----------------------------------------------------------------------------------------
    async def _apply_pending(self) -> None:
        if self._flushing:
            return
        self._flushing = True
        view = self.view
        try:
            self._tick += 1
            if view.dirty_plugins:
                view.dirty_plugins = False
                try:
                    view.set_plugins(await self.client.plugins())
                except ClientError as exc:
                    view.dirty_plugins = True
                    if view.connected:
                        self.log.warning(f"plugins refresh failed: {exc.message}")
            await self._refresh_consoles()
            self.apply_view()
            self.flushes += 1
        finally:
            self._flushing = False

    async def _refresh_consoles(self, force: bool = False) -> None:
        if not (force or self._consoles_visible()):
            return
        # Once a second: ages tick by the second, and heartbeats arriving faster than that are folded together.
        if not self.view.consoles_due(time.monotonic(), CONSOLE_REFRESH_SECONDS, force):
            return
        try:
            state, q = self.main.consoles_pane.console_query()
        except (LookupError, NoMatches):
            state, q = "", ""
        try:
            page = await self.client.consoles(q=q, state=state, limit=CONSOLE_ROWS)
            stats = await self.client.console_stats()
        except ClientError as exc:
            self.view.dirty_consoles = True
            self.log.warning(f"consoles refresh failed: {exc.message}")
            return
        self.view.set_consoles(page, stats)

    def _consoles_visible(self) -> bool:
        try:
            main = self.main
        except LookupError:
            return False
        return main.wide or main.active_pane == "consoles" or self.screen is not main

    def apply_view(self) -> None:
        """Push the view model into the panes and the header, inside one batch."""
        try:
            main = self.main
        except LookupError:
            return
        view = self.view
        now = self.client.now()
        try:
            with self.batch_update():
                main.plugins_pane.show(view, now, time.monotonic(), self._tick)
                if view.consoles_changed:
                    view.consoles_changed = False
                    main.consoles_pane.show(view, now, self.client.info.inactive_after)
                logs = view.take_logs()
                if logs:
                    main.logs_pane.view.append(logs)
                main.header.set_markup(view.header_markup(main.wide))
        except NoMatches:  # a last timer tick while the app is closing and its widgets are gone
            return

    @on(PaneBox.FilterChanged)
    def _filter_changed(self, event: PaneBox.FilterChanged) -> None:
        if isinstance(event.pane, PluginsPane):
            self.apply_view()
        elif isinstance(event.pane, ConsolesPane):
            self.refresh_consoles_now()  # the window is fetched for the new filter

    @work(exclusive=True, group="consoles-refresh")
    async def refresh_consoles_now(self) -> None:
        await self._refresh_consoles(force=True)
        self.apply_view()

    def layout_changed(self) -> None:
        """Columns were rebuilt for a new terminal size: show every row again."""
        self.view.consoles_changed = bool(self.view.console_page)
        self.apply_view()

    def on_pane_shown(self, name: str) -> None:
        if name == "consoles":
            self.refresh_consoles_now()

    def toggle_pause(self) -> None:
        paused = self.main.logs_pane.toggle_pause()
        self.notify("log paused" if paused else "log following", timeout=1.5)

    def request_quit(self) -> None:
        if isinstance(self.screen, ConfirmScreen):
            return
        message = self.view.quit_message(self.client.info.mode, self.client.info.api_url)

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

    async def attach_node(self, node: str, url: str, home: bool) -> bool:
        """Show node ``node`` (its API at ``url``) instead of this one, or go back ``home``; False when refused."""
        client: SupervisorClient | None = self.home_client
        if not home:
            client = self.home_client.client_for(url)
            if client is None:
                self.notify(f"cannot attach to {printable(node)}: no admin token to present", severity="warning")
                return False
            try:
                await client.connect()
            except ClientError as exc:
                await client.close()
                self.notify(
                    printable(f"cannot attach to {node}: {exc.message} (attaching needs a shared auth.admin_token)"),
                    severity="error",
                    markup=False,
                )
                return False
        if client is self.client or client is None:
            return True
        self.workers.cancel_group(self, "events")
        previous, self.client = self.client, client
        if previous is not self.home_client:
            await previous.close()
        self.attached_node = "" if home else node
        self.sub_title = f"attached to {printable(node)}" if not home else ""
        self.view = ViewModel()
        with contextlib.suppress(LookupError, NoMatches):
            self.main.logs_pane.view.clear()
        await self._load_initial()
        self.run_worker(self._consume_events(), name="events", group="events", exit_on_error=False)
        return True

    async def _count_nodes(self) -> None:
        size = max(1, len(await self.client.fleet_nodes()))
        if size != self.view.fleet_size:
            self.view.fleet_size = size
            with contextlib.suppress(LookupError, NoMatches):
                self.main.relayout()

    def action_fleet(self) -> None:
        from supervisor_tui.tui.screens.fleet import FleetScreen

        if not isinstance(self.screen, FleetScreen):
            self.push_screen(FleetScreen())

    def open_graph(self) -> None:
        from supervisor_tui.tui.screens.graph import GraphScreen

        if not isinstance(self.screen, GraphScreen):
            self.push_screen(GraphScreen())

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
