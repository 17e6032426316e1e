"""What every kind of plugin shares: its states, the snapshot views read, and the errors actions raise.

Re-exported by ``supervisor_tui.core.supervisor``, which is where callers import them from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from supervisor_tui.core.events import MetricsSample
from supervisor_tui.plugins.manifest import Endpoint


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


@dataclass(frozen=True, slots=True)
class ReplicaSnapshot:
    """One replica of a process plugin: its index (``PLUGIN_REPLICA``), state, process, port and figures."""

    index: int
    state: str
    detail: str
    pid: int | None
    port: int | None
    upstream: str | None  # its base URL while RUNNING (the gateway balances over these)
    started_at: float | None
    restarts: int
    cpu_percent: float | None
    rss: int | None


@dataclass(frozen=True, slots=True)
class PluginSnapshot:
    """A plugin as views see it at one moment; ``to_dict()`` gives plain JSON-ready values."""

    key: str
    name: str
    version: str
    description: str
    kind: str  # "process" | "external" | "inprocess"
    state: str
    detail: str
    pid: int | None
    host: str | None
    port: int | None
    upstream: str | None  # base URL the gateway forwards to, None when not routable
    started_at: float | None
    restarts: int
    healthy: bool | None  # None = not probed yet
    health_detail: str
    last_error: str
    endpoints: tuple[Endpoint, ...]
    autostart: bool
    desired: str  # "running" | "stopped"
    timeout: float
    max_body: int
    last_metrics: MetricsSample | None
    manifest_path: str | None
    replicas: tuple[ReplicaSnapshot, ...] = ()  # a process plugin's replicas (one for most); other kinds: none
    node: str = ""  # the fleet node that announced it over Redis ("" for this node's own plugins)
    # Every place serving the key when other nodes serve it too: (node, gateway URL, up, on another node)
    upstreams: tuple[tuple[str, str, bool, bool], ...] = ()
    group: str | None = None  # the manifest's group (None: in no group)
    depends_on: tuple[str, ...] = ()  # keys this plugin needs running first

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["endpoints"] = [{"method": e.method, "path": e.path, "description": e.description} for e in self.endpoints]
        d["last_metrics"] = self.last_metrics.to_dict() if self.last_metrics is not None else None
        d["replicas"] = [asdict(r) for r in self.replicas]
        d["upstreams"] = [{"node": n, "url": u, "up": up, "remote": r} for n, u, up, r in self.upstreams]
        d["depends_on"] = list(self.depends_on)
        return d
