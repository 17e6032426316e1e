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
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from textual import on, work
from textual.app import App
from textual.binding import Binding
from textual.css.query import NoMatches
from textual.notifications import SeverityLevel
from textual.screen import Screen

from supervisor_tui.core.log_search import LogSearchError, PatternTooSlow
from supervisor_tui.core.printable import printable
from supervisor_tui.plugins.model import PluginSnapshot
from supervisor_tui.tui.client import ClientError, SupervisorClient
from supervisor_tui.tui.commands import SupervisorCommands
from supervisor_tui.tui.driver import HangupSafeDriver
from supervisor_tui.tui.keys import validate_keymap
from supervisor_tui.tui.screens.confirm import ConfirmScreen
from supervisor_tui.tui.screens.group_action import GroupActionScreen
from supervisor_tui.tui.screens.main import PANES, MainScreen
from supervisor_tui.tui.view_model import RATE_SECONDS, ConnectionChange, ViewModel
from supervisor_tui.tui.widgets.log_view import LogView

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
        self._last_console_refresh = 0.0
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
        if (export.problem, store_problem) != (self.view.route_export_problem, self.view.console_store_problem):
            self.view.route_export_problem = export.problem
            self.view.console_store_problem = store_problem
            self._apply()

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
        self._apply()

    # -- events ------------------------------------------------------------------------------------------
    async def _consume_events(self) -> None:
        async for batch in self.client.events():
            self.ingest(batch)

    def ingest(self, batch: list[dict[str, Any]]) -> None:
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
        try:
            banner = self.main.banner
        except LookupError:
            return
        except Exception:
            return
        if change.connected:
            banner.remove_class("-shown")
            banner.update("")
            if change.message:
                self.notify(printable(change.message), title="Connected", markup=False)
        else:
            banner.add_class("-shown")
            banner.update(printable(f" ⚠ connection lost: {change.message or 'reconnecting'} — reconnecting…"))

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
            self._apply()
            self.flushes += 1
        finally:
            self._flushing = False

    async def _refresh_consoles(self, force: bool = False) -> None:
        now = time.monotonic()
        visible = force or self._consoles_visible()
        # Once a second: ages tick by the second, and heartbeats arriving faster than that are folded together.
        due = now - self._last_console_refresh >= CONSOLE_REFRESH_SECONDS
        if not visible or not (due or force):
            return
        self._last_console_refresh = now
        self.view.dirty_consoles = False
        state, q = self.view.console_query()
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

    def _apply(self) -> None:
        """Push the view model into the widgets, inside one batch."""
        try:
            main = self.main
        except LookupError:
            return
        view = self.view
        now = self.client.now()
        try:
            with self.batch_update():
                running, total = view.plugin_counts()
                rows = view.plugin_rows(now, time.monotonic(), self._tick)
                main.plugins_pane.show(rows, running, total, view.plugin_filter.strip())
                if view.consoles_changed:
                    view.consoles_changed = False
                    consoles = view.console_rows(now, self.client.info.inactive_after)
                    main.consoles_pane.show(consoles, view.console_total, view.console_filter.strip())
                logs = view.take_logs()
                if logs:
                    main.logs_pane.view.append(logs)
                main.header.set_markup(view.header_markup(main.wide))
        except NoMatches:  # a last timer tick while the app is closing and its widgets are gone
            return

    @on(LogView.StatusChanged)
    def _log_status(self) -> None:
        with contextlib.suppress(LookupError, NoMatches):
            self.main.logs_pane.update_title()

    # -- filters -----------------------------------------------------------------------------------------
    def apply_filter(self, pane: str, text: str) -> None:
        if pane == "plugins":
            self.view.plugin_filter = text
            self._apply()
        elif pane == "consoles":
            self.view.console_filter = text
            self.view.dirty_consoles = True
            self._last_console_refresh = 0.0
            self.refresh_consoles_now()
        elif pane == "logs":
            self.apply_log_filter(text, submitted=False)

    def apply_log_filter(self, text: str, submitted: bool) -> bool:
        """The logs filter; a ``re:`` pattern that is not valid keeps the filter as it was (said once the field
        is submitted, not at every key of a pattern being typed), one too slow is said at once."""
        try:
            self.main.logs_pane.apply_filter(text)
        except PatternTooSlow as exc:
            self.notify(printable(str(exc)), title="Log filter", severity="error", timeout=8, markup=False)
            return False
        except LogSearchError as exc:
            if submitted:
                self.notify(printable(str(exc)), title="Log filter", severity="error", timeout=8, markup=False)
            return False
        return True

    @work(exclusive=True, group="consoles-refresh")
    async def refresh_consoles_now(self) -> None:
        await self._refresh_consoles(force=True)
        self._apply()

    def layout_changed(self) -> None:
        """Columns were rebuilt for a new terminal size: show every row again."""
        self.view.consoles_changed = bool(self.view.console_page)
        self._apply()

    def on_pane_shown(self, name: str) -> None:
        if name == "consoles":
            self._last_console_refresh = 0.0
            self.refresh_consoles_now()

    def toggle_pause(self) -> None:
        paused = self.main.logs_pane.toggle_pause()
        self.notify("log paused" if paused else "log following", timeout=1.5)

    # -- plugin actions ----------------------------------------------------------------------------------
    def plugin_action(self, verb: str, key: str) -> None:
        """Run start/stop/restart in the background; the row shows progress, failures a notification."""
        call = {"start": self.client.start, "stop": self.client.stop, "restart": self.client.restart}[verb]
        self._launch(key, verb, lambda: call(key), f"{verb} {key}")

    def scale_plugin(self, key: str, delta: int) -> None:
        """One replica more or less of a process plugin, in the background (``+``/``-``)."""
        plugin = self.view.plugins_by_key.get(key)
        if plugin is None or plugin.kind != "process":
            self.notify(printable(f"{key}: only process plugins run replicas"), severity="warning", markup=False)
            return
        count = max(len(plugin.replicas), 1) + delta
        if count < 1:
            self.notify(
                printable(f"{key}: one replica is the fewest (stop it instead)"), severity="warning", markup=False
            )
            return
        self._launch(key, "scale", lambda: self.client.scale(key, count), f"scale {key} to {count}")

    def _launch(self, key: str, verb: str, call: Callable[[], Awaitable[PluginSnapshot]], what: str) -> None:
        """Run one action on a plugin in a worker, one at a time per plugin; its row shows it going on."""
        if self.client.info.read_only:
            self.notify("read-only: actions that change state are disabled", severity="warning")
            return
        running = self.view.begin_action(key, verb, time.monotonic())
        if running is not None:
            self.notify(printable(f"{key}: {running} already in progress"), severity="warning", markup=False)
            return
        self._apply()
        self.run_worker(self._run_action(key, call, what), group=f"action-{key}", exit_on_error=False)

    async def _run_action(self, key: str, call: Callable[[], Awaitable[PluginSnapshot]], what: str) -> None:
        try:
            self.view.set_plugin(await call())
        except ClientError as exc:
            self._action_failed(f"{what} failed: {exc.message}")
        except Exception as exc:  # a transport error must never take the UI down
            self._action_failed(f"{what} failed: {exc}")
        finally:
            self.view.end_action(key)
            self._apply()

    def choose_group_action(self, key: str) -> None:
        """Ask what to do with the group of plugin ``key`` (start, stop, restart), then do it for every member."""
        if self.client.info.read_only:
            self.notify("read-only: actions that change state are disabled", severity="warning")
            return
        plugin = self.view.plugins_by_key.get(key)
        group = plugin.group if plugin is not None else None
        if group is None:
            self.notify(printable(f'{key} is in no group (a manifest\'s "group" names one)'), severity="warning")
            return
        members = self.view.group_members(group)

        def chosen(verb: str | None) -> None:
            if verb is not None:
                self._run_group_action(verb, group, members)

        self.push_screen(GroupActionScreen(group, members), chosen)

    def _run_group_action(self, verb: str, group: str, members: list[str]) -> None:
        busy = [k for k in members if self.view.begin_action(k, verb, time.monotonic()) is not None]
        if busy:
            for k in members:
                if k not in busy:
                    self.view.end_action(k)
            self.notify(printable(f"group {group}: an action is in progress on {', '.join(busy)}"), severity="warning")
            return
        self._apply()
        self.run_worker(self._group_worker(verb, group, members), group=f"group-{group}", exit_on_error=False)

    async def _group_worker(self, verb: str, group: str, members: list[str]) -> None:
        try:
            for p in await self.client.group_action(verb, group):
                self.view.set_plugin(p)
        except ClientError as exc:
            self._action_failed(f"{verb} group {group} failed: {exc.message}")
        except Exception as exc:  # a transport error must never take the UI down
            self._action_failed(f"{verb} group {group} failed: {exc}")
        finally:
            for k in members:
                self.view.end_action(k)
            self._apply()

    def _action_failed(self, message: str) -> None:
        self.notify(printable(message), title="Action failed", severity="error", timeout=8, markup=False)

    def confirm_stop(self, key: str) -> None:
        if self.client.info.read_only:
            self.notify("read-only: actions that change state are disabled", severity="warning")
            return
        detail = self.view.stop_detail(key)

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
