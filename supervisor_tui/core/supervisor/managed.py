"""What the supervisor knows of any plugin: the ManagedPlugin protocol, the FolderPlugin protocol of those from a
folder under plugins/, and how those are read.

The supervisor never asks which class a plugin is: each kind (ProcessRunner and its ReplicatedRunner,
InProcessPlugin, ExternalPlugin and PeerPlugin) answers these questions itself, a kind to which one does not apply
with a no-op or a refusal. The registry is typed with these protocols, so mypy checks every kind against them where
it is registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from supervisor_tui.core.events import MetricsSample
from supervisor_tui.core.reload_plan import Loaded
from supervisor_tui.plugins.inprocess import KIND as INPROCESS_KIND
from supervisor_tui.plugins.manifest import Manifest, ManifestError
from supervisor_tui.plugins.model import PluginSnapshot, PluginState

PLUGIN_HOST = "127.0.0.1"  # plugins listen on loopback; the gateway is the way in


class ManagedPlugin(Protocol):
    """What the supervisor asks of any kind of plugin (process, in-process, external), as what it is or can do."""

    key: str
    kind: str
    runs_elsewhere: bool  # external plugins and peers: they register and leave, never started or stopped here
    desired: str  # what the operator last asked, "running" or "stopped" (an external plugin: always "running")
    state: PluginState

    @property
    def manifest(self) -> Manifest | None: ...  # None: invalid, from settings, or announced (no folder)

    @property
    def error(self) -> ManifestError | None: ...  # why its folder's manifest was rejected (INVALID)

    @property
    def asgi_app(self) -> Any: ...  # an in-process plugin's ASGI app while it is RUNNING, else None

    @property
    def autostart(self) -> bool: ...  # what its own configuration says when the operator never started or stopped it

    @property
    def active(self) -> bool: ...  # a start, or its supervision, is in progress

    @property
    def is_task(self) -> bool: ...  # a oneshot: it runs to its end, and COMPLETED is a successful start

    @property
    def stops_last(self) -> bool: ...  # it stops after every other plugin (an in-process plugin from settings)

    @property
    def tried_by_host(self) -> bool: ...  # the in-process plugin host loaded it, or failed to: not started again

    @property
    def replica_count(self) -> int | None: ...  # the processes it runs for its key; None: it runs no replicas

    def snapshot(self) -> PluginSnapshot: ...

    async def start(self, reason: str = ...) -> None: ...

    async def stop(self, reason: str = ...) -> None: ...

    async def wait_for(self, states: set[PluginState] | None = None, timeout: float | None = None) -> PluginState: ...  # noqa: ASYNC109

    def refuse_start(self, reason: str) -> None: ...  # a start that did not happen (a dependency): STOPPED, saying why

    def check_scale(self, count: int) -> None: ...  # PluginActionError when it cannot run ``count`` replicas

    async def scale(self, count: int, reason: str = ...) -> None: ...  # run ``count`` replicas (refused as above)

    def check_env_overrides(self) -> None: ...  # PluginActionError when its environment is not the supervisor's to set

    def set_env_overrides(self, env: Mapping[str, str]) -> None: ...  # its environment from the next start on

    def report_upstream(self, ok: bool, detail: str = "") -> None: ...

    def history(self) -> list[MetricsSample]: ...


class FolderPlugin(ManagedPlugin, Protocol):
    """A plugin that comes from a folder under plugins/ (a process or in-process plugin, or an INVALID one): what
    reload, install and the metrics loop ask of it beyond ManagedPlugin."""

    last_error: str

    def replace_manifest(self, manifest: Manifest | None, error: ManifestError | None = None) -> None: ...

    async def prepare(self, manifest: Manifest) -> None: ...  # load a new version ahead (in-process), else nothing

    def source_changed(self) -> bool: ...  # its code differs from what runs (in-process plugins' Python files)

    def sample(self) -> MetricsSample | None: ...  # one metrics sample of its processes, None without any

    def pids(self) -> set[int]: ...  # the main processes it runs (their exit status belongs to the event loop)


ReloadResult = dict[str, list[str]]  # "added", "removed", "changed", "unchanged", "invalid", "failed" -> keys


def rejected(plugin: ManagedPlugin) -> bool:
    """Its folder's manifest was rejected (INVALID): it cannot start until a reload accepts one."""
    return plugin.manifest is None and plugin.error is not None


def manifests(runners: Mapping[str, FolderPlugin]) -> dict[str, Manifest]:
    return {k: r.manifest for k, r in runners.items() if r.manifest is not None}


def disabled_keys(inprocess_tables: Mapping[str, Any]) -> set[str]:
    """Keys whose ``[inprocess.<key>]`` section says ``enabled = false``."""
    return {k for k, t in inprocess_tables.items() if isinstance(t, Mapping) and t.get("enabled") is False}


def loaded(runner: FolderPlugin) -> Loaded:
    """What the reload planner needs to know about a folder plugin."""
    return Loaded(
        key=runner.key,
        inprocess=runner.kind == INPROCESS_KIND,
        manifest=runner.manifest,
        error=str(runner.error) if runner.manifest is None else "",
        up=runner.active or runner.state == PluginState.RUNNING,
        source_changed=runner.manifest is not None and runner.source_changed(),
    )
