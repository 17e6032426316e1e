"""A reload executed: the plugins folder is read again, ``core.reload_plan`` says what changes, this applies it
plugin by plugin and starts what should run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from supervisor_tui.core.events import EventBus, plugin_failed
from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.reload_plan import OUTCOMES, Action, Change, plan_reload
from supervisor_tui.core.supervisor.folder_plugins import FolderPluginFactory
from supervisor_tui.core.supervisor.managed import FolderPlugin, ReloadResult, disabled_keys, loaded
from supervisor_tui.core.supervisor.memory import PluginMemory
from supervisor_tui.core.supervisor.registry import PluginRegistry
from supervisor_tui.plugins.manifest import discover
from supervisor_tui.plugins.model import PluginActionError
from supervisor_tui.plugins.ports import PortAllocator

StartMany = Callable[[Iterable[str], str], Awaitable[None]]  # Orchestrator.start_many


class FolderReload:
    """Re-reads ``plugins_dir`` and applies the planned changes to ``registry``; what should run then is handed
    to ``start_many`` (the orchestrator's)."""

    def __init__(
        self,
        plugins_dir: Path,
        registry: PluginRegistry,
        memory: PluginMemory,
        factory: FolderPluginFactory,
        ports: PortAllocator,
        logs: LogHub,
        bus: EventBus,
        inprocess_tables: Mapping[str, Any],
        start_many: StartMany,
    ) -> None:
        self.plugins_dir = plugins_dir
        self.registry = registry
        self.memory = memory
        self.factory = factory
        self.ports = ports
        self.logs = logs
        self.bus = bus
        self.inprocess_tables = inprocess_tables
        self.start_many = start_many

    async def run(self, keep_on_error: bool) -> ReloadResult:
        """Plan and apply a reload (the caller holds the supervisor's lifecycle lock)."""
        found = discover(self.plugins_dir, skip=self.memory.removed)
        current = dict(self.registry.from_folders)
        plan = plan_reload(
            [loaded(runner) for runner in current.values()],
            found,
            taken=set(self.registry) - set(current),
            desired=self.memory.desired,
            disabled=disabled_keys(self.inprocess_tables),
            keep_on_error=keep_on_error,
        )
        result: ReloadResult = {name: [] for name in OUTCOMES}
        result["invalid"] = list(plan.invalid)
        to_start: list[str] = []
        for change in plan.changes:
            outcome = await self._apply(change, current.get(change.key))
            result[outcome].append(change.key)
            if change.start and outcome != "failed":
                to_start.append(change.key)
        self.logs.info(
            "reloaded plugins: "
            + ", ".join(f"{name} {','.join(keys) or '-'}" for name, keys in result.items() if name != "unchanged")
            + f"; {len(result['unchanged'])} unchanged",
            event="reload",
            **{name: keys for name, keys in result.items()},
        )
        await self.start_many(to_start, "loaded by reload")
        return result

    async def _apply(self, change: Change, runner: FolderPlugin | None) -> str:
        """Execute one planned change; returns its outcome ("failed" when a new version did not import)."""
        key, action = change.key, change.action
        if action is Action.LOAD:
            self.factory.add(key, change.manifest, change.error)
            if change.error is not None:
                err = change.error
                self.logs.error(f"{key}: INVALID: {err}", event="plugin_invalid", plugin=key, reason=str(err))
            return change.outcome
        assert runner is not None
        if action is Action.KEEP_RUNNING:
            self._reload_failed(runner, str(change.error))
            return change.outcome
        if change.prepare and change.manifest is not None:
            try:  # import the new version while the old one runs: a broken one never replaces it
                await runner.prepare(change.manifest)
            except PluginActionError as exc:
                self._reload_failed(runner, exc.message)
                return "failed"
        if change.stop:
            await runner.stop(change.stop)
        if action is Action.UNLOAD:
            self.ports.declare_fixed(key, None)
            self.registry.drop(key, change.stop)
        elif action is Action.INVALIDATE:
            runner.replace_manifest(None, change.error)
            self.ports.declare_fixed(key, None)
        elif action is Action.REPLACE:
            self.registry.drop(key, change.stop)
            self.factory.add(key, change.manifest)
        elif action is Action.UPDATE and change.manifest is not None:
            runner.replace_manifest(change.manifest)
            self.ports.declare_fixed(key, change.manifest.port)
            count = self.factory.replica_count(key, change.manifest) or change.manifest.replicas
            if runner.replica_count not in (None, count):  # None: it runs no replicas
                try:
                    await runner.scale(count, "replicas changed in the manifest")
                except PluginActionError as exc:
                    self._reload_failed(runner, exc.message)
        return change.outcome

    def _reload_failed(self, runner: FolderPlugin, reason: str) -> None:
        runner.last_error = f"reload failed: {reason}"
        self.logs.error(
            f"{runner.key}: reload failed, the running version is kept: {reason}",
            event="reload_failed",
            plugin=runner.key,
            reason=reason,
        )
        self.bus.publish(plugin_failed(runner.key, "reload", reason))
