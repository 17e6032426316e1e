"""What every kind of plugin shares: its states, the snapshot views read, and the errors actions raise.

The snapshot and its parts are msgspec Structs: the admin API encodes them as they are, the attached TUI decodes
its answers into them, the embedded TUI reads them untouched. A field added here is on the wire and in the TUI.

Re-exported by ``supervisor_tui.core.supervisor``, which is where callers import them from.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Annotated, Any

import msgspec
from msgspec import Meta

from supervisor_tui.core.events import LogLine, MetricsSample
from supervisor_tui.core.logs import LogRecord


class PluginState(StrEnum):
    """supervisord's process states, plus INVALID (manifest rejected), LOST (external plugin gone silent), and
    COMPLETED / FAILED: how a ``oneshot`` task ended (exit code 0 / anything else)."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"
    INVALID = "INVALID"
    LOST = "LOST"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


# A process exists in these states: its CPU, memory and request figures are live.
WITH_PROCESS = frozenset({PluginState.RUNNING, PluginState.STARTING, PluginState.STOPPING, PluginState.BACKOFF})
# States that need the operator's eye (the TUI's header warns about them).
TROUBLE_STATES = frozenset(
    {PluginState.FATAL, PluginState.LOST, PluginState.INVALID, PluginState.BACKOFF, PluginState.FAILED}
)


class PluginNotFound(KeyError):
    """No plugin with this key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no plugin with key {self.key!r}"


class GroupNotFound(KeyError):
    """No plugin is in this group."""

    def __init__(self, group: str) -> None:
        super().__init__(group)
        self.group = group

    def __str__(self) -> str:
        return f"no plugin is in group {self.group!r}"


class PluginActionError(Exception):
    """An action on a plugin could not be done (e.g. start of an INVALID plugin, a start that ended FATAL)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


class Endpoint(msgspec.Struct, frozen=True):
    """One route a plugin serves; ``path`` may hold ``{param}`` segments."""

    method: str
    path: str
    description: str = ""
    # Where clients call it through the gateway: filled in by the views that know the API's address
    # (``for_views``); "" inside the supervisor.
    gateway_url: Annotated[str, Meta(description="Where clients call this endpoint through the gateway")] = ""


class ReplicaSnapshot(msgspec.Struct, frozen=True):
    """One replica of a process plugin: its index (``PLUGIN_REPLICA``), state, process, port and figures."""

    index: int
    state: PluginState
    detail: str = ""
    pid: int | None = None
    port: int | None = None
    upstream: str | None = None  # its base URL while RUNNING (the gateway balances over these)
    started_at: float | None = None
    restarts: int = 0
    cpu_percent: float | None = None
    rss: int | None = None


class PluginUpstream(msgspec.Struct, frozen=True):
    """One place serving a plugin's key when other fleet nodes serve it too."""

    node: str
    url: str
    up: bool
    remote: Annotated[bool, Meta(description="true: another node's gateway")]


class PluginSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A plugin at one moment: what views read and what the admin API answers about it (encoded as it is).

    Every field but ``key`` has the value of a plugin that never ran, so an answer from an older supervisor still
    decodes; ``requests``, ``uptime`` and the endpoints' ``gateway_url`` are the views' figures (``for_views``)."""

    key: str
    name: str = ""
    version: str = ""
    description: str = ""
    kind: Annotated[str, Meta(description="process | external | inprocess")] = "process"
    state: PluginState = PluginState.STOPPED
    detail: str = ""
    pid: int | None = None
    host: str | None = None
    port: int | None = None
    upstream: str | None = None  # base URL the gateway forwards to, None when not routable
    started_at: float | None = None
    restarts: int = 0
    healthy: bool | None = None  # None = not probed yet
    health_detail: str = ""
    last_error: str = ""
    endpoints: tuple[Endpoint, ...] = ()
    autostart: bool = False
    desired: str = "stopped"  # "running" | "stopped"
    timeout: float | None = None  # the gateway's limits for this plugin
    max_body: int | None = None
    last_metrics: MetricsSample | None = None
    manifest_path: str | None = None
    replicas: Annotated[
        tuple[ReplicaSnapshot, ...],
        Meta(
            description="A process plugin's replicas (one unless scaled); the plugin's state is RUNNING while any "
            "replica is, and its detail counts them"
        ),
    ] = ()
    node: Annotated[str, Meta(description="The fleet node that announced it over Redis (empty: this node's own)")] = ""
    upstreams: Annotated[
        tuple[PluginUpstream, ...], Meta(description="Every place serving the key when other fleet nodes serve it too")
    ] = ()
    group: Annotated[str | None, Meta(description="The manifest's group (started, stopped, restarted together)")] = None
    depends_on: Annotated[tuple[str, ...], Meta(description="Keys of the plugins this one needs running first")] = ()
    requests: Annotated[int, Meta(description="Requests proxied through the gateway since start")] = 0
    uptime: Annotated[float | None, Meta(description="Seconds RUNNING when the snapshot was taken")] = None

    @property
    def cpu_percent(self) -> float | None:
        return self.last_metrics.cpu_percent if self.last_metrics is not None else None

    @property
    def rss(self) -> int | None:
        return self.last_metrics.rss if self.last_metrics is not None else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: exactly what the admin API sends."""
        d: dict[str, Any] = msgspec.to_builtins(self)
        return d


def for_views(snap: PluginSnapshot, api_url: str, requests: int = 0, now: float | None = None) -> PluginSnapshot:
    """``snap`` with the figures views show beside the supervisor's: each endpoint's gateway URL under
    ``api_url``, the requests proxied so far and the uptime. One function for the admin API and the embedded TUI,
    so both show the same thing."""
    base = api_url.rstrip("/")
    endpoints = tuple(
        msgspec.structs.replace(e, gateway_url=f"{base}/api/plugins/{snap.key}{e.path}") for e in snap.endpoints
    )
    running = snap.state == PluginState.RUNNING and snap.started_at
    uptime = round((time.time() if now is None else now) - snap.started_at, 3) if running and snap.started_at else None
    return msgspec.structs.replace(snap, endpoints=endpoints, requests=requests, uptime=uptime)


class LogEntry(msgspec.Struct, frozen=True):
    """One log line of any source, as views and the admin API show it."""

    ts: float
    source: str
    stream: str  # "stdout" | "stderr" | "supervisor"
    level: str
    message: str

    @classmethod
    def of(cls, line: LogRecord | LogLine) -> LogEntry:
        """A log record or a ``log`` event as the line views show (a record's structured fields stay in its file)."""
        return cls(line.ts, line.source, line.stream, line.level, line.message)


class MetricPoint(msgspec.Struct, frozen=True):
    """One point of a plugin's charts: a metrics sample's CPU and memory, and the request rate when known.

    Decodes straight from a ``MetricsSample`` on the wire (its other fields are left out)."""

    ts: float
    cpu_percent: float
    rss: int
    requests_per_s: float | None = None

    @classmethod
    def of(cls, sample: MetricsSample) -> MetricPoint:
        return cls(sample.ts, sample.cpu_percent, sample.rss)


# -- the admin API's envelopes around them (the attached TUI decodes these) -------------------------------------
class PluginList(msgspec.Struct, frozen=True):
    """``GET /api/v1/plugins``."""

    plugins: list[PluginSnapshot]


class PluginEnvelope(msgspec.Struct, frozen=True, omit_defaults=True):
    """One plugin after an action; ``warning`` is set when the action was done but a supervisor restart will not
    remember it (full disk)."""

    plugin: PluginSnapshot
    warning: str | None = None


class GroupActionResult(msgspec.Struct, frozen=True):
    """``POST /api/v1/groups/{group}/<action>``: every plugin of the group after the action."""

    group: str
    plugins: list[PluginSnapshot]


class MetricsHistory(msgspec.Struct, frozen=True):
    """``GET /api/v1/plugins/{key}/metrics``: 2 s samples of the plugin's process tree, oldest first."""

    samples: list[MetricsSample]


class LogLines(msgspec.Struct, frozen=True):
    """The newest log lines of one source or of all, oldest first."""

    lines: list[LogEntry]
