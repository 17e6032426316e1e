"""Request bodies of the admin API and its answers about the whole supervisor (what /openapi.json documents).

The answers about plugins (snapshots, replicas, endpoints, metrics samples, log lines) and about the supervisor as a
whole (status, route table and export, fleet nodes) are not here: they are msgspec Structs (plugins/model.py,
core/status.py), encoded as they are (server/admin_context.py documents them)."""

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
