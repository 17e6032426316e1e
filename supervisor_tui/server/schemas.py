"""Request bodies of the admin API and its answers about the whole supervisor (what /openapi.json documents).

The answers about plugins (snapshots, replicas, endpoints, metrics samples, log lines) are not here: they are the
core's msgspec Structs in plugins/model.py, encoded as they are (server/admin_context.py documents them)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from supervisor_tui.plugins.manifest import ENV_NAME, KEY_PATTERN
from supervisor_tui.plugins.manifest_schema import MAX_REPLICAS


class GroupOut(BaseModel):
    name: str
    plugins: list[str] = Field(description="Keys of the group's plugins")


class GroupList(BaseModel):
    groups: list[GroupOut]


class GraphNodeOut(BaseModel):
    key: str
    state: str = Field(description="The plugin's state; MISSING for a dependency no plugin answers to")
    group: str | None = None
    depends_on: list[str] = []
    level: int = Field(description="0: needs nothing; otherwise one more than the highest level it needs")


class GraphEdgeOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str = Field(alias="from", description="The plugin that depends")
    to: str = Field(description="The plugin it depends on")


class GraphOut(BaseModel):
    nodes: list[GraphNodeOut]
    edges: list[GraphEdgeOut]


class Counts(BaseModel):
    total: int
    by_state: dict[str, int]


class RouteExportOut(BaseModel):
    """Where the route table is exported (routes.export) and how the last attempt went."""

    target: str = Field(description="none | caddy")
    admin: str = Field("", description="The gateway's admin API (a password in it is masked)")
    server: str = Field("", description="The server the supervisor owns in that gateway's config")
    listen: str = Field("", description="Where that server listens")
    ok: bool | None = Field(None, description="Whether the last attempt succeeded (null before the first)")
    reachable: bool | None = Field(None, description="Whether the admin API answered the last attempt")
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    last_error: str = ""
    writes: int = Field(0, description="Config writes since start")
    repairs: int = Field(0, description="Writes that restored a server changed or lost outside the supervisor")


class FleetStatusOut(BaseModel):
    redis: str = Field(description="off (no redis.url) | up | down")
    node: str = ""
    advertise_url: str = ""
    redis_url: str = Field("", description="redis.url with its password masked")
    since: float | None = Field(None, description="When the Redis connection last went up or down")
    detail: str = ""


class NodeOut(BaseModel):
    node: str
    status: str = Field(description="up | lost (no presence record refreshed for redis.dead_after)")
    this_node: bool
    advertise_url: str
    version: str
    started_at: float
    last_seen: float
    plugins: dict[str, int] = Field(description="This node's own plugins by state")
    consoles: dict[str, int] = Field(description="Its consoles by state")


class NodeList(BaseModel):
    nodes: list[NodeOut]


class ConsoleStoreOut(BaseModel):
    kind: str = Field(description="sqlite | postgresql")
    where: str = Field(description="The database file, or the DSN with its password masked")
    available: bool
    problem: str | None = Field(default=None, description="Why the store cannot be written now")


class StatusOut(BaseModel):
    version: str
    mode: str = Field(description="headless | embedded")
    api: str
    read_only: bool
    plugins: Counts
    consoles: Counts
    damaged_tables: dict[str, str] = Field(
        default_factory=dict, description="Console history tables found damaged (no longer written): the error"
    )
    route_export: RouteExportOut
    fleet: FleetStatusOut = Field(default_factory=lambda: FleetStatusOut(redis="off", redis_url="", since=None))
    console_store: ConsoleStoreOut | None = Field(
        default=None, description="Where consoles are kept, and whether it works"
    )


class RouteOut(BaseModel):
    """One declared endpoint as the gateway (and an exported gateway) routes it."""

    key: str
    method: str
    path: str = Field(description="The endpoint's path template, as the plugin declares it")
    gateway_path: str = Field(description="/api/plugins/{key}{path}")
    upstream: str | None = Field(description="Where requests go (null while the plugin has no address)")
    state: str = Field(description="The plugin's state; requests get 503 unless it is RUNNING")
    available: bool
    reason: str = Field("", description="Why the route answers 503, when it does")


class RoutesOut(BaseModel):
    routes: list[RouteOut]
    export: RouteExportOut


class InstallIn(BaseModel):
    """The plugin manager API's install body, with `command` in the manifest instead of a container image."""

    model_config = ConfigDict(populate_by_name=True)
    manifest: dict[str, Any]
    auto_start: bool = Field(False, alias="autoStart")


class ScaleIn(BaseModel):
    replicas: int = Field(ge=1, le=MAX_REPLICAS, strict=True, description="How many replicas to run")


class ConfigIn(BaseModel):
    # The names' rule is documented here and enforced (with the reserved names) where manifests are parsed.
    env: dict[str, str] = Field(
        description="Environment variables merged over the manifest's env",
        json_schema_extra={"propertyNames": {"pattern": ENV_NAME.pattern}},
    )


class RemovedOut(BaseModel):
    removed: str
    purged: bool


class RegisterEndpointIn(BaseModel):
    method: str = "GET"
    path: str
    description: str = ""


class RegisterIn(BaseModel):
    """The Redis registration protocol's message, over HTTP: where the plugin listens and what it serves."""

    # The upstream is `port` (on `host`, default 127.0.0.1) or `url`; enforced with the allowlist at registration.
    model_config = ConfigDict(json_schema_extra={"anyOf": [{"required": ["port"]}, {"required": ["url"]}]})
    key: str = Field(json_schema_extra={"pattern": KEY_PATTERN.pattern})
    name: str = ""
    version: str = "0.0.0"
    # strict: true/false must not pass as 1/0 (a port of 1, an interval of 1 s, a timestamp of 0)
    port: int | None = Field(None, ge=1, le=65535, strict=True)
    host: str | None = None
    url: str | None = None
    endpoints: list[RegisterEndpointIn] = []
    heartbeat_interval: float | None = Field(
        None, gt=0, strict=True, description="Seconds between heartbeats (default 30)"
    )
    timestamp: float | None = Field(None, strict=True)


class OkOut(BaseModel):
    ok: bool = True


class HealthOut(BaseModel):
    status: str


class ReadyOut(BaseModel):
    ready: bool
    detail: str = ""


class ErrorOut(BaseModel):
    code: str
    message: str


class NotReadyOut(ReadyOut):
    """/ready's 503: the readiness fields plus the error object every error carries."""

    error: ErrorOut
