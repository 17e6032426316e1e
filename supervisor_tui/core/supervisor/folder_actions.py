"""Operator actions that change the plugins folder or what is remembered of a plugin: install (write a manifest
and load it), remove (unload, and with purge delete the folder and forget it), set_config (env overrides), scale
(the replica count)."""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
from pathlib import Path
from typing import Any

from supervisor_tui.core.logs import LogHub
from supervisor_tui.core.plugin_state import PluginStateStore
from supervisor_tui.core.supervisor.folder_plugins import FolderPluginFactory
from supervisor_tui.core.supervisor.managed import manifests
from supervisor_tui.core.supervisor.memory import PluginMemory
from supervisor_tui.core.supervisor.orchestration import Orchestrator
from supervisor_tui.core.supervisor.registry import PluginRegistry
from supervisor_tui.plugins.manifest import MANIFEST_FILE, ManifestError, check_graph, parse_env, parse_manifest
from supervisor_tui.plugins.model import PluginActionError, PluginSnapshot, PluginState
from supervisor_tui.plugins.ports import PortAllocator


class FolderActions:
    """The operator's changes to ``plugins_dir`` and to what is remembered of a plugin. ``lifecycle`` is the
    supervisor's lock on the set of plugins (held by install, remove and reload)."""

    def __init__(
        self,
        plugins_dir: Path,
        lifecycle: asyncio.Lock,
        registry: PluginRegistry,
        memory: PluginMemory,
        plugin_state: PluginStateStore,
        factory: FolderPluginFactory,
        ports: PortAllocator,
        orchestrator: Orchestrator,
        logs: LogHub,
    ) -> None:
        self.plugins_dir = plugins_dir
        self.lifecycle = lifecycle
        self.registry = registry
        self.memory = memory
        self.plugin_state = plugin_state
        self.factory = factory
        self.ports = ports
        self.orchestrator = orchestrator
        self.logs = logs

    async def install(self, manifest: dict[str, Any], autostart: bool) -> PluginSnapshot:
        """See Supervisor.install."""
        if not isinstance(manifest, dict):
            raise ManifestError("", "manifest", "must be a JSON object")
        raw_key = manifest.get("key", manifest.get("id"))
        folder_name = raw_key if isinstance(raw_key, str) and raw_key else "<key>"
        path = self.plugins_dir / folder_name / MANIFEST_FILE
        parsed = parse_manifest(manifest, path)
        key = parsed.key
        async with self.lifecycle:
            if key in self.registry:
                raise PluginActionError(key, "a plugin with this key already exists")
            folder = self.plugins_dir / key
            if folder.exists():
                raise PluginActionError(key, f"folder {folder} already exists (remove it or use another key)")
            runners = self.registry.from_folders
            graph = {**manifests(runners), key: parsed}
            others = set(self.registry) - set(runners)
            problems = check_graph(graph, others)
            if key in problems:
                raise problems[key]
            data = {("key" if k == "id" else k): v for k, v in manifest.items()}
            try:
                folder.mkdir(parents=True)
                tmp = folder / (MANIFEST_FILE + ".tmp")
                tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
                tmp.replace(folder / MANIFEST_FILE)
            except OSError as exc:
                shutil.rmtree(folder, ignore_errors=True)
                raise PluginActionError(key, f"cannot write {folder / MANIFEST_FILE}: {exc.strerror}") from None
            self.memory.removed.discard(key)
            runner = self.factory.add(key, parsed)
            await self.orchestrator.set_desired(key, "running" if autostart else "stopped")
            self.logs.info(f"{key}: installed in {folder}", event="plugin_installed", plugin=key)
        if autostart:
            try:
                await self.orchestrator.ensure_running(key, "installed")
            except PluginActionError as exc:
                self.logs.error(str(exc), event="start_failed", plugin=key)
        return runner.snapshot()

    async def remove(self, key: str, purge: bool) -> None:
        """See Supervisor.remove."""
        async with self.lifecycle:
            plugin = self.registry.require(key)
            dependents = sorted(
                k
                for k, r in self.registry.from_folders.items()
                if r.manifest is not None and key in r.manifest.depends_on and k != key
            )
            if dependents:
                raise PluginActionError(key, f"{', '.join(dependents)} depend on it: remove those first")
            self.orchestrator.stop_requested(key)
            await plugin.stop("removed by operator")
            folder: Path | None = None  # where it came from (an external plugin or one from settings: none)
            if plugin.manifest is not None:
                folder = plugin.manifest.folder
            elif plugin.error is not None and plugin.error.path:
                folder = Path(plugin.error.path).parent
            self.ports.declare_fixed(key, None)
            self.registry.drop(key, "removed by operator")
            if purge:
                if folder is not None and _inside(folder, self.plugins_dir):
                    try:
                        shutil.rmtree(folder)
                    except OSError as exc:
                        raise PluginActionError(key, f"unloaded, but cannot delete {folder}: {exc.strerror}") from None
                await self.memory.forget(key)
            else:
                await self.orchestrator.set_desired(key, "stopped")
                self.memory.removed.add(key)
            self.logs.info(
                f"{key}: removed" + (f" and {folder} deleted" if purge and folder else ""),
                event="plugin_removed",
                plugin=key,
            )

    async def set_config(self, key: str, env: dict[str, str]) -> PluginSnapshot:
        """See Supervisor.set_config."""
        runner = self.registry.require(key)
        runner.check_env_overrides()  # refused by a plugin that runs no process here
        path = runner.manifest.path if runner.manifest else (runner.error.path if runner.error else "")
        try:
            parsed = parse_env(env)
        except ValueError as exc:
            raise ManifestError(path, "env", str(exc)) from None
        if runner.manifest is None:
            raise PluginActionError(key, f"cannot configure an INVALID plugin: {runner.error}")
        await self.plugin_state.save_overrides(key, parsed)
        self.memory.overrides[key] = parsed
        runner.set_env_overrides(parsed)
        self.logs.info(
            f"{key}: environment overrides set ({', '.join(sorted(parsed)) or 'none'})",
            event="plugin_config",
            plugin=key,
        )
        if runner.active or runner.state == PluginState.RUNNING:
            self.orchestrator.stop_requested(key)
            await runner.stop("configuration changed")
            await self.orchestrator.ensure_running(key, "restarted with new configuration")
        return runner.snapshot()

    async def scale(self, key: str, replicas: int) -> PluginSnapshot:
        """See Supervisor.scale."""
        runner = self.registry.require(key)
        runner.check_scale(replicas)  # refused by a plugin that runs no replicas, or not that many
        before = runner.replica_count
        try:
            await self.plugin_state.save_replicas(key, replicas, runner.desired)
        except sqlite3.Error as exc:
            raise PluginActionError(key, f"the replica count could not be saved in the database ({exc})") from None
        self.memory.replicas[key] = replicas
        await runner.scale(replicas)
        if before != replicas:
            self.logs.info(
                f"{key}: scaled from {before} to {replicas} replicas",
                event="plugin_scaled",
                plugin=key,
                replicas=replicas,
            )
        return runner.snapshot()


def _inside(path: Path, parent: Path) -> bool:
    try:
        path.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return path.resolve() != parent.resolve()
