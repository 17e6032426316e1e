"""Request and response bodies of the admin API (they are what /openapi.json documents)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from supervisor_tui.plugins.manifest import ENV_NAME, KEY_PATTERN


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


class PluginEnvelope(BaseModel):
    plugin: PluginOut
    warning: str | None = Field(
        None, description="Set when the action was done but a supervisor restart will not remember it (full disk)"
    )


class PluginList(BaseModel):
    plugins: list[PluginOut]


class Counts(BaseModel):
    total: int
    by_state: dict[str, int]


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
    console_store: ConsoleStoreOut | None = Field(
        default=None, description="Where consoles are kept, and whether it works"
    )


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
