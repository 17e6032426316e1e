"""The in-process client (embedded mode): the core Supervisor object and its console service, no HTTP.

Plugins cross into the TUI as the core's Structs, untouched but for the figures the admin API adds too
(``for_views``: gateway URLs, requests, uptime), so the embedded and the attached UI cannot drift apart.
"""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

from supervisor_tui.consoles import wire
from supervisor_tui.consoles.errors import ConsoleError, ConsoleNotFound
from supervisor_tui.core.actions import acting_as
from supervisor_tui.core.events import Event
from supervisor_tui.core.groups import act_on_group
from supervisor_tui.core.status import NodeStatus, RouteExportStatus
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.plugins.model import (
    GroupNotFound,
    LogEntry,
    MetricPoint,
    PluginActionError,
    PluginNotFound,
    PluginSnapshot,
    for_views,
)
from supervisor_tui.tui.client import (
    CONSOLE_STATES,
    ClientError,
    ClientInfo,
    ConsoleInfo,
    ConsolePage,
    HeartbeatInfo,
    SupervisorClient,
    TransitionInfo,
)

if TYPE_CHECKING:
    from supervisor_tui.fleet.node import FleetNode  # the Redis client loads only with redis.url set

EVENT_TOPICS = ("plugin", "log", "console", "fleet")


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


@contextlib.contextmanager
def _console_errors(console_id: str = "") -> Iterator[None]:
    """The console service's errors as the TUI's: an unknown console, or a store that cannot be reached (the
    header says so and the TUI goes on, as with a remote supervisor's 503)."""
    try:
        yield
    except ConsoleNotFound:
        raise ClientError(f"no console {console_id!r}", "console_not_found") from None
    except ConsoleError as exc:
        raise ClientError(exc.message, exc.code) from None


class InProcessClient(SupervisorClient):
    """A SupervisorClient over a Supervisor running in this process and event loop."""

    def __init__(
        self,
        sup: Supervisor,
        api_url: str,
        *,
        read_only: bool | None = None,
        request_counts: Callable[[], dict[str, int]] | None = None,
        route_export: Callable[[], RouteExportStatus] | None = None,
        keymap: dict[str, str] | None = None,
        fleet: FleetNode | None = None,
        admin_token: str = "",
    ) -> None:
        settings = sup.settings
        self.fleet = fleet
        self._admin_token = admin_token  # for attaching to other nodes that share it (auth.admin_token)
        keys = keymap if keymap is not None else settings.tables.get("keys", {})
        self.info = ClientInfo(
            mode="embedded",
            api_url=api_url,
            read_only=settings.ui.read_only if read_only is None else read_only,
            inactive_after=settings.consoles.inactive_after,
            keymap={str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {},
        )
        self.sup = sup
        self._request_counts = request_counts
        self._route_export = route_export
        # Subscribed now, before the app takes its first snapshot, so nothing falls between the two.
        self._subscription = sup.bus.subscribe(EVENT_TOPICS, maxsize=50_000)
        self._closed = False

    # -- fleet ---------------------------------------------------------------------------------------
    async def fleet_nodes(self) -> list[NodeStatus]:
        return await self.fleet.nodes() if self.fleet is not None else []

    async def redis_status(self) -> str:
        return self.fleet.status().redis if self.fleet is not None else "off"

    # -- console store -------------------------------------------------------------------------------
    async def console_store_problem(self) -> str:
        consoles = self.sup.consoles
        return str(consoles.store_status()["problem"] or "") if consoles is not None else ""

    def client_for(self, url: str) -> SupervisorClient | None:
        from supervisor_tui.tui.client_remote import RemoteClient

        return RemoteClient(url, self._admin_token, keymap=self.info.keymap) if self._admin_token else None

    # -- plugins -------------------------------------------------------------------------------------
    def _view(self, snap: PluginSnapshot, counts: dict[str, int] | None = None) -> PluginSnapshot:
        if counts is None:
            counts = self._request_counts() if self._request_counts is not None else {}
        return for_views(snap, self.info.api_url, counts.get(snap.key, 0))

    async def plugins(self) -> list[PluginSnapshot]:
        counts = self._request_counts() if self._request_counts is not None else {}
        return [self._view(s, counts) for s in self.sup.plugins()]

    async def plugin(self, key: str) -> PluginSnapshot:
        try:
            return self._view(self.sup.plugin(key))
        except PluginNotFound:
            raise ClientError(f"no plugin named {key!r}", "plugin_not_found") from None

    async def _act(self, verb: str, key: str) -> PluginSnapshot:
        if self.info.read_only:
            raise ClientError("read-only: actions that change state are disabled", "read_only")
        action = {"start": self.sup.start, "stop": self.sup.stop, "restart": self.sup.restart}[verb]
        try:
            with acting_as("tui", _user()):  # the audit log says who acted, from where
                snap = await action(key)
        except PluginNotFound:
            raise ClientError(f"no plugin named {key!r}", "plugin_not_found") from None
        except PluginActionError as exc:
            raise ClientError(exc.message, "action_failed") from None
        return self._view(snap)

    async def start(self, key: str) -> PluginSnapshot:
        return await self._act("start", key)

    async def stop(self, key: str) -> PluginSnapshot:
        return await self._act("stop", key)

    async def restart(self, key: str) -> PluginSnapshot:
        return await self._act("restart", key)

    async def scale(self, key: str, replicas: int) -> PluginSnapshot:
        if self.info.read_only:
            raise ClientError("read-only: actions that change state are disabled", "read_only")
        try:
            with acting_as("tui", _user()):
                snap = await self.sup.scale(key, replicas)
        except PluginNotFound:
            raise ClientError(f"no plugin named {key!r}", "plugin_not_found") from None
        except PluginActionError as exc:
            raise ClientError(exc.message, "action_failed") from None
        return self._view(snap)

    async def group_action(self, verb: str, group: str) -> list[PluginSnapshot]:
        if self.info.read_only:
            raise ClientError("read-only: actions that change state are disabled", "read_only")
        try:
            with acting_as("tui", _user()):
                result = await act_on_group(self.sup, verb, group)
        except GroupNotFound:
            raise ClientError(f"no plugin is in group {group!r}", "group_not_found") from None
        if result.failures:
            raise ClientError(result.failure_message(), "action_failed")
        return [self._view(s) for s in result.plugins]

    async def metrics(self, key: str) -> list[MetricPoint]:
        try:
            return [MetricPoint.of(s) for s in self.sup.metrics(key)]
        except PluginNotFound:
            raise ClientError(f"no plugin named {key!r}", "plugin_not_found") from None

    async def request_counts(self) -> dict[str, int]:
        return dict(self._request_counts()) if self._request_counts is not None else {}

    async def route_export(self) -> RouteExportStatus:
        return self._route_export() if self._route_export is not None else RouteExportStatus()

    # -- logs ----------------------------------------------------------------------------------------
    async def logs(self, source: str | None = None, lines: int = 200) -> list[LogEntry]:
        return [LogEntry.of(r) for r in self.sup.logs.tail(source, lines)]

    # -- consoles ------------------------------------------------------------------------------------
    @property
    def _consoles(self) -> Any:
        service = self.sup.consoles
        if service is None:
            raise ClientError("consoles are not enabled in this supervisor", "consoles_unavailable")
        return service

    async def consoles(
        self, q: str = "", state: str = "", limit: int = 500, offset: int = 0, sort: str = "name"
    ) -> ConsolePage:
        if self.sup.consoles is None:
            return ConsolePage([], 0)
        with _console_errors():
            records, total = await self._consoles.list_consoles(
                state=state or None, search=q or None, limit=limit, offset=offset, sort=sort
            )
        return ConsolePage([ConsoleInfo.of(s) for s in wire.snapshots(records)], int(total))

    async def console(self, console_id: str) -> ConsoleInfo:
        with _console_errors(console_id):
            return ConsoleInfo.of(wire.snapshot(await self._consoles.get(console_id)))

    async def console_heartbeats(self, console_id: str, limit: int = 120) -> list[HeartbeatInfo]:
        with _console_errors(console_id):
            rows = await self._consoles.heartbeats(console_id, limit)
        return [HeartbeatInfo.of(r) for r in reversed(wire.heartbeat_records(rows))]

    async def console_transitions(self, console_id: str, limit: int = 50) -> list[TransitionInfo]:
        with _console_errors(console_id):
            rows = await self._consoles.transitions(console_id, limit)
        return [TransitionInfo.of(r) for r in reversed(wire.transition_records(rows))]

    async def console_stats(self) -> dict[str, int]:
        if self.sup.consoles is None:
            return dict.fromkeys(CONSOLE_STATES, 0)
        return {str(k): int(v) for k, v in self._consoles.counts_by_state().items()}

    # -- events --------------------------------------------------------------------------------------
    async def events(self) -> AsyncIterator[list[Event]]:
        sub = self._subscription
        try:
            while not self._closed and not sub.closed:
                batch = await sub.get_batch(1.0)
                if batch:
                    yield batch  # the bus's Structs, untouched (frozen: the view model cannot change them)
        finally:
            sub.close()

    async def close(self) -> None:
        self._closed = True
        self._subscription.close()
