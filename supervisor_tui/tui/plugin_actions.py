"""``PluginActions``: what the operator does to plugins from the TUI (start, stop, restart, scale, group actions).

Each action runs in a worker, one at a time per plugin; the plugin's row shows it going on (the view model's
pending actions) and a failure becomes a notification. Stop and group actions ask first. A read-only client
refuses them all with one warning.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from supervisor_tui.core.printable import printable
from supervisor_tui.plugins.model import PluginSnapshot
from supervisor_tui.tui.client import ClientError
from supervisor_tui.tui.screens.confirm import ConfirmScreen
from supervisor_tui.tui.screens.group_action import GroupActionScreen

if TYPE_CHECKING:
    from supervisor_tui.tui.app import SupervisorApp

READ_ONLY = "read-only: actions that change state are disabled"


class PluginActions:
    """The plugin actions of one app (``app.actions``), run against its current client."""

    def __init__(self, app: SupervisorApp) -> None:
        self.app = app

    def run(self, verb: str, key: str) -> None:
        """Run start/stop/restart in the background; the row shows progress, failures a notification."""
        client = self.app.client
        call = {"start": client.start, "stop": client.stop, "restart": client.restart}[verb]
        self._launch(key, verb, lambda: call(key), f"{verb} {key}")

    def scale(self, key: str, delta: int) -> None:
        """One replica more or less of a process plugin, in the background (``+``/``-``)."""
        app = self.app
        plugin = app.view.plugins_by_key.get(key)
        if plugin is None or plugin.kind != "process":
            app.notify(printable(f"{key}: only process plugins run replicas"), severity="warning", markup=False)
            return
        count = max(len(plugin.replicas), 1) + delta
        if count < 1:
            message = printable(f"{key}: one replica is the fewest (stop it instead)")
            app.notify(message, severity="warning", markup=False)
            return
        self._launch(key, "scale", lambda: app.client.scale(key, count), f"scale {key} to {count}")

    def confirm_stop(self, key: str) -> None:
        """Ask before stopping ``key``, then stop it."""
        if self._refused():
            return
        detail = self.app.view.stop_detail(key)

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.run("stop", key)

        self.app.push_screen(
            ConfirmScreen(
                f"Stop plugin {key}?",
                f"{key}{detail} will be stopped; requests to it through the gateway fail until it is started.",
                confirm_label="Stop",
            ),
            done,
        )

    def choose_group_action(self, key: str) -> None:
        """Ask what to do with the group of plugin ``key`` (start, stop, restart), then do it for every member."""
        if self._refused():
            return
        app = self.app
        plugin = app.view.plugins_by_key.get(key)
        group = plugin.group if plugin is not None else None
        if group is None:
            app.notify(printable(f'{key} is in no group (a manifest\'s "group" names one)'), severity="warning")
            return
        members = app.view.group_members(group)

        def chosen(verb: str | None) -> None:
            if verb is not None:
                self._run_group_action(verb, group, members)

        app.push_screen(GroupActionScreen(group, members), chosen)

    def _refused(self) -> bool:
        if self.app.client.info.read_only:
            self.app.notify(READ_ONLY, severity="warning")
            return True
        return False

    def _launch(self, key: str, verb: str, call: Callable[[], Awaitable[PluginSnapshot]], what: str) -> None:
        """Run one action on a plugin in a worker, one at a time per plugin; its row shows it going on."""
        if self._refused():
            return
        app = self.app
        running = app.view.begin_action(key, verb, time.monotonic())
        if running is not None:
            app.notify(printable(f"{key}: {running} already in progress"), severity="warning", markup=False)
            return
        app.apply_view()
        app.run_worker(self._run_action(key, call, what), group=f"action-{key}", exit_on_error=False)

    async def _run_action(self, key: str, call: Callable[[], Awaitable[PluginSnapshot]], what: str) -> None:
        app = self.app
        try:
            app.view.set_plugin(await call())
        except ClientError as exc:
            self._failed(f"{what} failed: {exc.message}")
        except Exception as exc:  # a transport error must never take the UI down
            self._failed(f"{what} failed: {exc}")
        finally:
            app.view.end_action(key)
            app.apply_view()

    def _run_group_action(self, verb: str, group: str, members: list[str]) -> None:
        view = self.app.view
        busy = [k for k in members if view.begin_action(k, verb, time.monotonic()) is not None]
        if busy:
            for k in members:
                if k not in busy:
                    view.end_action(k)
            self.app.notify(
                printable(f"group {group}: an action is in progress on {', '.join(busy)}"), severity="warning"
            )
            return
        self.app.apply_view()
        self.app.run_worker(self._group_worker(verb, group, members), group=f"group-{group}", exit_on_error=False)

    async def _group_worker(self, verb: str, group: str, members: list[str]) -> None:
        app = self.app
        try:
            for p in await app.client.group_action(verb, group):
                app.view.set_plugin(p)
        except ClientError as exc:
            self._failed(f"{verb} group {group} failed: {exc.message}")
        except Exception as exc:  # a transport error must never take the UI down
            self._failed(f"{verb} group {group} failed: {exc}")
        finally:
            for k in members:
                app.view.end_action(k)
            app.apply_view()

    def _failed(self, message: str) -> None:
        self.app.notify(printable(message), title="Action failed", severity="error", timeout=8, markup=False)
