"""Request and response bodies of the admin API (they are what /openapi.json documents)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from supervisor_tui.plugins.manifest import ENV_NAME, KEY_PATTERN
from supervisor_tui.plugins.manifest_schema import MAX_REPLICAS


class EndpointOut(BaseModel):
    method: str
    path: str
    description: str = ""
    gateway_url: str = Field(description="Where clients call this endpoint through the gateway")


class MetricsOut(BaseModel):
    ts: float
    cpu_percent: float
    rss: int
    threads: int
    fds: int
    processes: int


class ReplicaOut(BaseModel):
    """One replica of a process plugin: its own process group on its own port."""

    index: int = Field(description="PLUGIN_REPLICA in its environment, 0..N-1")
    state: str
    detail: str = ""
    pid: int | None = None
    port: int | None = None
    upstream: str | None = Field(None, description="Its base URL while RUNNING: the gateway balances over these")
    started_at: float | None = None
    restarts: int = 0
    cpu_percent: float | None = None
    rss: int | None = None


class UpstreamOut(BaseModel):
    node: str
    url: str
    up: bool
    remote: bool = Field(description="true: another node's gateway")


class PluginOut(BaseModel):
    """A plugin as the API shows it (the core's PluginSnapshot plus gateway figures)."""

    key: str
    name: str
    version: str
    description: str = ""
    kind: str = Field(description="process | external | inprocess")
    state: str
    detail: str = ""
    pid: int | None = None
    host: str | None = None
    port: int | None = None
    upstream: str | None = None
    started_at: float | None = None
    uptime: float | None = None
    restarts: int = 0
    healthy: bool | None = None
    health_detail: str = ""
    last_error: str | None = None
    autostart: bool = False
    desired: str = "stopped"
    endpoints: list[EndpointOut] = []
    last_metrics: MetricsOut | None = None
    requests: int = Field(0, description="Requests proxied through the gateway since start")
    replicas: list[ReplicaOut] = Field(
        [],
        description="A process plugin's replicas (one unless scaled); the plugin's state is RUNNING while any "
        "replica is, and its detail counts them",
    )
    node: str = Field("", description="The fleet node that announced it over Redis (empty: this node's own)")
    upstreams: list[UpstreamOut] = Field(
        default_factory=list, description="Every place serving the key when other fleet nodes serve it too"
    )
    group: str | None = Field(None, description="The manifest's group (started, stopped, restarted together)")
    depends_on: list[str] = Field([], description="Keys of the plugins this one needs running first")


class PluginEnvelope(BaseModel):
    plugin: PluginOut
    warning: str | None = Field(
        None, description="Set when the action was done but a supervisor restart will not remember it (full disk)"
    )


class PluginList(BaseModel):
    plugins: list[PluginOut]


class GroupOut(BaseModel):
    name: str
    plugins: list[str] = Field(description="Keys of the group's plugins")


class GroupList(BaseModel):
    groups: list[GroupOut]


class GroupActionOut(BaseModel):
    group: str
    plugins: list[PluginOut] = Field(description="Every plugin of the group after the action")


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


class LogLineOut(BaseModel):
    ts: float
    source: str
    stream: str
    level: str
    message: str


class LogLines(BaseModel):
    lines: list[LogLineOut]


class MetricsHistory(BaseModel):
    samples: list[MetricsOut]


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
