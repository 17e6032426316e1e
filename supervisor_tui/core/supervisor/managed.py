"""What the supervisor knows of any plugin: the ManagedPlugin protocol, the folder kinds, and how those are read."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from supervisor_tui.core.events import MetricsSample
from supervisor_tui.core.reload_plan import Loaded
from supervisor_tui.plugins.inprocess import InProcessPlugin
from supervisor_tui.plugins.manifest import Manifest
from supervisor_tui.plugins.model import PluginActionError, PluginSnapshot, PluginState
from supervisor_tui.plugins.process import ProcessRunner

PLUGIN_HOST = "127.0.0.1"  # plugins listen on loopback; the gateway is the way in


class ManagedPlugin(Protocol):
    """What the supervisor needs from any kind of plugin (process, external, in-process)."""

    key: str
    kind: str
    runs_elsewhere: bool  # external plugins and peers: they register and leave, never started or stopped here

    @property
    def manifest(self) -> Manifest | None: ...  # None: invalid, from settings, or announced (no folder)

    @property
    def asgi_app(self) -> Any: ...  # an in-process plugin's ASGI app while it is RUNNING, else None

    def snapshot(self) -> PluginSnapshot: ...

    async def start(self, reason: str = ...) -> None: ...

    async def stop(self, reason: str = ...) -> None: ...

    async def wait_for(self, states: set[PluginState] | None = None, timeout: float | None = None) -> PluginState: ...  # noqa: ASYNC109

    def report_upstream(self, ok: bool, detail: str = "") -> None: ...

    def history(self) -> list[MetricsSample]: ...


ReloadResult = dict[str, list[str]]  # "added", "removed", "changed", "unchanged", "invalid", "failed" -> keys
FolderPlugin = ProcessRunner | InProcessPlugin  # plugins that come from a folder under plugins/


def folder_plugins(registry: Mapping[str, ManagedPlugin]) -> dict[str, FolderPlugin]:
    """Every plugin that comes from a folder: processes and in-process plugins with a manifest."""
    return {
        k: p
        for k, p in registry.items()
        if isinstance(p, ProcessRunner) or (isinstance(p, InProcessPlugin) and p.folder is not None)
    }


def process_runner(plugin: ManagedPlugin) -> ProcessRunner:
    """``plugin`` as a local process plugin; PluginActionError for another kind."""
    if not isinstance(plugin, ProcessRunner):
        raise PluginActionError(plugin.key, f"not a local process plugin (kind {plugin.kind})")
    return plugin


def manifests(runners: Mapping[str, FolderPlugin]) -> dict[str, Manifest]:
    return {k: r.manifest for k, r in runners.items() if r.manifest is not None}


def disabled_keys(inprocess_tables: Mapping[str, Any]) -> set[str]:
    """Keys whose ``[inprocess.<key>]`` section says ``enabled = false``."""
    return {k for k, t in inprocess_tables.items() if isinstance(t, Mapping) and t.get("enabled") is False}


def loaded_before(plugin: ManagedPlugin) -> bool:
    """An in-process plugin the in-process plugin host loaded (or failed to load) already."""
    return isinstance(plugin, InProcessPlugin) and plugin.counters["loads"] + plugin.counters["load_failures"] > 0


def loaded(runner: FolderPlugin) -> Loaded:
    """What the reload planner needs to know about a folder plugin."""
    return Loaded(
        key=runner.key,
        inprocess=isinstance(runner, InProcessPlugin),
        manifest=runner.manifest,
        error=str(runner.error) if runner.manifest is None else "",
        up=runner.active or runner.state == PluginState.RUNNING,
        source_changed=isinstance(runner, InProcessPlugin) and runner.manifest is not None and runner.source_changed(),
    )
