"""The one interface the TUI talks to: a supervisor seen through snapshots, queries, events and actions.

Two implementations behave the same for the UI: ``InProcessClient`` (embedded mode, over the core Supervisor
object) and ``RemoteClient`` (attach mode, over the admin API and ``/ws/events``); ``DemoClient`` serves a
deterministic supervisor for snapshots, screenshots and the load benchmark. Plugins cross this boundary as the
core's own Structs (plugins/model.py: PluginSnapshot, LogEntry, MetricPoint), and so do the route export and the
fleet's nodes (core/status.py: RouteExportStatus, NodeStatus) and the events (core/events.py): the in-process
client hands them over as they are, the remote one decodes the admin API's answers and ``/ws/events`` into them
with typed decoders, so both modes render identically and a field added to a Struct reaches the TUI without a
parser.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec

from supervisor_tui.consoles import wire
from supervisor_tui.core.events import Event, with_topic
from supervisor_tui.core.status import NodeStatus, RouteExportStatus
from supervisor_tui.plugins.model import LogEntry, MetricPoint, PluginSnapshot

CONSOLE_STATES = ("active", "busy", "idle", "error", "inactive")
WireT = TypeVar("WireT", bound=msgspec.Struct)


@with_topic
class ConnectionChange(Event, frozen=True, tag="client.connection"):
    """The link to the supervisor went down or came back; ``message`` says why. An event of the clients' own,
    among the supervisor's (never on the bus, never on the wire)."""

    connected: bool
    message: str = ""


class ClientError(Exception):
    """An action or query failed; ``message`` is what the operator reads."""

    def __init__(self, message: str, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


def _float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    # ISO-8601 timestamps (the console API may send them as strings).
    from datetime import datetime

    try:
        text = str(value).replace("Z", "+00:00")
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_time(value: Any) -> float | None:
    """A Unix timestamp from a number or an ISO-8601 string (None when neither)."""
    return _float(value)


@dataclass(frozen=True, slots=True)
class ConsoleInfo:
    """A console (remote worker machine) as the TUI shows it."""

    id: str
    name: str = ""
    state: str = "idle"
    host: str = ""
    current_job: str = ""
    last_seen: float | None = None
    last_error: str = ""
    registered_at: float | None = None
    system: Mapping[str, Any] = field(default_factory=dict)
    last_activity: float | None = None

    @property
    def short_id(self) -> str:
        return self.id[:8]

    @classmethod
    def of(cls, s: wire.ConsoleSnapshot) -> ConsoleInfo:
        """The console API's snapshot as the TUI shows it."""
        err = s.last_error
        if isinstance(err, Mapping):  # free-form: whatever the console sent; a message field when there is one
            err = err.get("message") or err.get("mensaje") or str(dict(err))
        return cls(
            id=s.id,
            name=s.name,
            state=s.state.value,
            host=s.hostname or "",
            current_job=s.current_job or "",
            last_seen=parse_time(s.last_seen),
            last_error=str(err or ""),
            registered_at=parse_time(s.first_seen),
            system=s.system or {},
            last_activity=parse_time(s.last_activity),
        )


@dataclass(frozen=True, slots=True)
class ConsolePage:
    """One page of a console query and how many consoles matched in all."""

    consoles: list[ConsoleInfo]
    total: int


@dataclass(frozen=True, slots=True)
class HeartbeatInfo:
    """One received heartbeat of a console."""

    ts: float
    state: str
    job: str = ""

    @classmethod
    def of(cls, r: wire.HeartbeatRecord) -> HeartbeatInfo:
        return cls(ts=parse_time(r.received_at) or 0.0, state=r.state.value, job=r.current_job or "")


@dataclass(frozen=True, slots=True)
class TransitionInfo:
    """One state change of a console."""

    at: float
    from_state: str
    to_state: str
    reason: str = ""

    @classmethod
    def of(cls, r: wire.TransitionRecord) -> TransitionInfo:
        from_state = r.from_state.value if r.from_state is not None else ""
        return cls(at=parse_time(r.at) or 0.0, from_state=from_state, to_state=r.to_state.value, reason=r.reason)


def console_answer(body: Any, shape: type[WireT]) -> WireT:
    """A console API answer (parsed JSON) as its Struct of consoles.wire; another shape is a ClientError."""
    try:
        return msgspec.convert(body, shape)
    except msgspec.ValidationError as exc:
        raise ClientError(f"the console API answered in an unexpected shape: {exc}", "bad_response") from None


@dataclass(slots=True)
class ClientInfo:
    """What the header shows about the connection itself."""

    mode: str  # "embedded" | "attached" | "demo"
    api_url: str
    read_only: bool = False
    version: str = ""
    inactive_after: float = 600.0
    keymap: dict[str, str] = field(default_factory=dict)


class SupervisorClient(abc.ABC):
    """A supervisor as the TUI sees it; implementations must never block the event loop for long."""

    info: ClientInfo

    # -- connection ----------------------------------------------------------------------------------
    async def connect(self) -> None:  # noqa: B027 - optional hook
        """Check the supervisor is reachable (raises ClientError when not)."""

    @property
    def connected(self) -> bool:
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and subscriptions."""

    def now(self) -> float:
        """The clock the UI uses for ages and uptimes (fixed in the demo)."""
        return time.time()

    # -- plugins -------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def plugins(self) -> list[PluginSnapshot]:
        """Every plugin, in the supervisor's order."""

    @abc.abstractmethod
    async def plugin(self, key: str) -> PluginSnapshot:
        """One plugin with its endpoints' gateway URLs (ClientError when unknown)."""

    @abc.abstractmethod
    async def start(self, key: str) -> PluginSnapshot:
        """Start and wait for RUNNING; ClientError with the reason otherwise."""

    @abc.abstractmethod
    async def stop(self, key: str) -> PluginSnapshot:
        """Stop and wait for the process to be gone."""

    @abc.abstractmethod
    async def restart(self, key: str) -> PluginSnapshot:
        """Stop then start, waiting for RUNNING."""

    async def group_action(self, verb: str, group: str) -> list[PluginSnapshot]:
        """start/stop/restart every plugin of ``group`` and wait; ClientError naming the members that failed.

        This default acts on each member itself (the supervisor's clients ask it to do the group at once)."""
        members = [p.key for p in await self.plugins() if p.group == group]
        if not members:
            raise ClientError(f"no plugin is in group {group!r}", "group_not_found")
        call = {"start": self.start, "stop": self.stop, "restart": self.restart}[verb]
        results = await asyncio.gather(*(call(k) for k in members), return_exceptions=True)
        failed = [f"{k}: {r.message}" for k, r in zip(members, results, strict=True) if isinstance(r, ClientError)]
        if failed:
            raise ClientError(f"{len(failed)} of {len(members)} failed: {'; '.join(failed)}", "action_failed")
        return [r for r in results if isinstance(r, PluginSnapshot)]

    @abc.abstractmethod
    async def scale(self, key: str, replicas: int) -> PluginSnapshot:
        """Run ``replicas`` replicas of a process plugin; ClientError with the reason when it cannot."""

    @abc.abstractmethod
    async def metrics(self, key: str) -> list[MetricPoint]:
        """Resource samples of the last minutes, oldest first."""

    async def request_counts(self) -> dict[str, int]:
        """Requests proxied to each plugin since the supervisor started (empty when unknown)."""
        return {}

    async def request_rates(self) -> dict[str, float]:
        """Requests/s per plugin the supervisor reports itself (the demo's); empty: the app measures them from
        ``request_counts``."""
        return {}

    async def route_export(self) -> RouteExportStatus:
        """Where the route table is exported and whether the last export worked (target "none" when it is not)."""
        return RouteExportStatus()

    # -- logs ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def logs(self, source: str | None = None, lines: int = 200) -> list[LogEntry]:
        """The last lines of one source, or of all sources merged by time."""

    # -- consoles ------------------------------------------------------------------------------------
    @abc.abstractmethod
    async def consoles(
        self, q: str = "", state: str = "", limit: int = 500, offset: int = 0, sort: str = "name"
    ) -> ConsolePage:
        """Consoles matching a text query and/or state, one page of them."""

    @abc.abstractmethod
    async def console(self, console_id: str) -> ConsoleInfo:
        """One console (ClientError when unknown)."""

    @abc.abstractmethod
    async def console_heartbeats(self, console_id: str, limit: int = 120) -> list[HeartbeatInfo]:
        """The last heartbeats of a console, oldest first."""

    @abc.abstractmethod
    async def console_transitions(self, console_id: str, limit: int = 50) -> list[TransitionInfo]:
        """The last state changes of a console, oldest first."""

    @abc.abstractmethod
    async def console_stats(self) -> dict[str, int]:
        """How many consoles are in each state."""

    # -- fleet ---------------------------------------------------------------------------------------
    async def fleet_nodes(self) -> list[NodeStatus]:
        """The fleet's nodes, this one first (empty when the supervisor is in no fleet)."""
        return []

    async def redis_status(self) -> str:
        """The fleet's Redis as this supervisor sees it: "off" (no redis.url), "up" or "down"."""
        return "off"

    # -- console store -------------------------------------------------------------------------------
    async def console_store_problem(self) -> str:
        """Why the console store cannot be reached now (a PostgreSQL server gone); "" while it is available."""
        return ""

    def client_for(self, url: str) -> SupervisorClient | None:
        """A client of another node's API at ``url`` with this client's admin token (None: no token known)."""
        return None

    # -- events --------------------------------------------------------------------------------------
    @abc.abstractmethod
    def events(self) -> AsyncIterator[list[Event]]:
        """Batches of events, as they arrive: the bus's own Structs (core/events.py) and ``ConnectionChange``; ends
        when the client closes."""
