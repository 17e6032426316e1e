"""The supervisor as a whole, one msgspec Struct per concept: the wire shape of ``/api/v1/status``,
``/api/v1/routes`` and ``/api/v1/fleet/nodes``.

The server fills them and encodes them as they are (server/struct_openapi.py puts their JSON Schemas in
/openapi.json); the attached TUI decodes the answers into them with typed decoders and the embedded one gets them
from the running parts untouched, so a field added here reaches the API, its documentation and both TUIs at once.
A base-layer module (msgspec only): the server, the fleet and the TUI all import it, and a headless run without
Redis loads no fleet code for it.
"""

from __future__ import annotations

from typing import Annotated

import msgspec


def _doc(text: str) -> msgspec.Meta:
    return msgspec.Meta(description=text)


class RouteExportStatus(msgspec.Struct, kw_only=True):
    """Where the route table is exported (routes.export) and how the last attempt went (times are Unix
    timestamps, null = never). The Caddy export updates its own in place as attempts end."""

    target: Annotated[str, _doc("none | caddy")] = "none"
    admin: Annotated[str, _doc("The gateway's admin API (a password in it is masked)")] = ""
    server: Annotated[str, _doc("The server the supervisor owns in that gateway's config")] = ""
    listen: Annotated[str, _doc("Where that server listens")] = ""
    ok: Annotated[bool | None, _doc("Whether the last attempt succeeded (null before the first)")] = None
    reachable: Annotated[bool | None, _doc("Whether the admin API answered the last attempt")] = None
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    last_error: str = ""
    writes: Annotated[int, _doc("Config writes since start")] = 0
    repairs: Annotated[int, _doc("Writes that restored a server changed or lost outside the supervisor")] = 0

    @property
    def problem(self) -> str:
        """A few words for the TUI header when the export is failing, else ""."""
        if self.target == "none" or self.ok is not False:
            return ""
        # The header shows it as markup: only a plain word gets there (a remote supervisor may send anything).
        target = self.target if self.target.isascii() and self.target.isalpha() else "route"
        return f"{target} unreachable" if self.reachable is False else f"{target} export failing"


class NodeStatus(msgspec.Struct, kw_only=True):
    """One node of the fleet as this node sees it: its presence record in Redis, up or lost."""

    node: str
    status: Annotated[str, _doc("up | lost (no presence record refreshed for redis.dead_after)")]
    this_node: bool
    advertise_url: str
    version: str
    started_at: float
    last_seen: float
    plugins: Annotated[dict[str, int], _doc("This node's own plugins by state")] = {}
    consoles: Annotated[dict[str, int], _doc("Its consoles by state")] = {}


class NodeList(msgspec.Struct):
    """``GET /api/v1/fleet/nodes``: this node first."""

    nodes: list[NodeStatus]


class FleetStatus(msgspec.Struct, kw_only=True):
    """This node's view of the fleet's Redis."""

    redis: Annotated[str, _doc("off (no redis.url) | up | down")] = "off"
    node: str = ""
    advertise_url: str = ""
    redis_url: Annotated[str, _doc("redis.url with its password masked")] = ""
    since: Annotated[float | None, _doc("When the Redis connection last went up or down")] = None
    detail: str = ""


class StateCounts(msgspec.Struct):
    """How many there are, in all and in each state."""

    total: int
    by_state: dict[str, int]


class ConsoleStoreStatus(msgspec.Struct, kw_only=True):
    """Where consoles are kept, and whether it works."""

    kind: Annotated[str, _doc("sqlite | postgresql")]
    where: Annotated[str, _doc("The database file, or the DSN with its password masked")]
    available: bool
    problem: Annotated[str | None, _doc("Why the store cannot be written now")] = None


class SupervisorStatus(msgspec.Struct, kw_only=True):
    """``GET /api/v1/status``: counts of plugins and consoles by state, mode, API address, the route export, the
    fleet's Redis and the console store."""

    version: str
    mode: Annotated[str, _doc("headless | embedded")]
    api: str
    read_only: bool
    plugins: StateCounts
    consoles: StateCounts
    damaged_tables: Annotated[
        dict[str, str], _doc("Console history tables found damaged (no longer written): the error")
    ] = {}
    route_export: RouteExportStatus = msgspec.field(default_factory=RouteExportStatus)
    fleet: FleetStatus = msgspec.field(default_factory=FleetStatus)
    console_store: Annotated[ConsoleStoreStatus | None, _doc("Where consoles are kept, and whether it works")] = None


class RouteRow(msgspec.Struct, kw_only=True):
    """One declared endpoint as the gateway (and an exported gateway) routes it."""

    key: str
    method: str
    path: Annotated[str, _doc("The endpoint's path template, as the plugin declares it")]
    gateway_path: Annotated[str, _doc("/api/plugins/{key}{path}")]
    upstream: Annotated[str | None, _doc("Where requests go (null while the plugin has no address)")]
    state: Annotated[str, _doc("The plugin's state; requests get 503 unless it is RUNNING")]
    available: bool
    reason: Annotated[str, _doc("Why the route answers 503, when it does")] = ""


class RouteList(msgspec.Struct):
    """``GET /api/v1/routes``: the route table the gateway serves, and where it is exported."""

    routes: list[RouteRow]
    export: RouteExportStatus
