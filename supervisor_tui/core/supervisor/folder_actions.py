"""Operator actions that change the plugins folder or what is remembered of a plugin: install (write a manifest
and load it), remove (unload, and with purge delete the folder and forget it), set_config (env overrides), scale
(the replica count)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from supervisor_tui.core.supervisor.managed import folder_plugins, manifests
from supervisor_tui.plugins.inprocess import InProcessPlugin
from supervisor_tui.plugins.manifest import MANIFEST_FILE, ManifestError, check_graph, parse_env, parse_manifest
from supervisor_tui.plugins.model import PluginActionError, PluginSnapshot, PluginState
from supervisor_tui.plugins.process import ProcessRunner
from supervisor_tui.plugins.replicas import ReplicatedRunner

if TYPE_CHECKING:
    from supervisor_tui.core.supervisor.root import Supervisor


async def install(sup: Supervisor, manifest: dict[str, Any], autostart: bool) -> PluginSnapshot:
    """See Supervisor.install."""
    if not isinstance(manifest, dict):
        raise ManifestError("", "manifest", "must be a JSON object")
    raw_key = manifest.get("key", manifest.get("id"))
    folder_name = raw_key if isinstance(raw_key, str) and raw_key else "<key>"
    path = sup.settings.plugins_dir / folder_name / MANIFEST_FILE
    parsed = parse_manifest(manifest, path)
    key = parsed.key
    async with sup.lifecycle:
        if key in sup.registry:
            raise PluginActionError(key, "a plugin with this key already exists")
        folder = sup.settings.plugins_dir / key
        if folder.exists():
            raise PluginActionError(key, f"folder {folder} already exists (remove it or use another key)")
        runners = folder_plugins(sup.registry)
        graph = {**manifests(runners), key: parsed}
        others = set(sup.registry) - set(runners)
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
        sup.memory.removed.discard(key)
        runner = sup.folder_plugins.add(key, parsed)
        await sup.set_desired(key, "running" if autostart else "stopped")
        sup.logs.info(f"{key}: installed in {folder}", event="plugin_installed", plugin=key)
    if autostart:
        try:
            await sup.ensure_running(key, "installed")
        except PluginActionError as exc:
            sup.logs.error(str(exc), event="start_failed", plugin=key)
    return runner.snapshot()


async def remove(sup: Supervisor, key: str, purge: bool) -> None:
    """See Supervisor.remove."""
    async with sup.lifecycle:
        plugin = sup.get(key)
        dependents = sorted(
            k
            for k, r in folder_plugins(sup.registry).items()
            if r.manifest is not None and key in r.manifest.depends_on and k != key
        )
        if dependents:
            raise PluginActionError(key, f"{', '.join(dependents)} depend on it: remove those first")
        sup.orchestrator.stop_requested(key)
        await plugin.stop("removed by operator")
        folder: Path | None = None
        if isinstance(plugin, ProcessRunner | InProcessPlugin):
            if plugin.manifest is not None:
                folder = plugin.manifest.folder
            elif plugin.error is not None and plugin.error.path:
                folder = Path(plugin.error.path).parent
        sup.ports.declare_fixed(key, None)
        sup.unregister(key, "removed by operator")
        if purge:
            if folder is not None and _inside(folder, sup.settings.plugins_dir):
                try:
                    shutil.rmtree(folder)
                except OSError as exc:
                    raise PluginActionError(key, f"unloaded, but cannot delete {folder}: {exc.strerror}") from None
            await sup.memory.forget(key)
        else:
            await sup.set_desired(key, "stopped")
            sup.memory.removed.add(key)
        sup.logs.info(
            f"{key}: removed" + (f" and {folder} deleted" if purge and folder else ""),
            event="plugin_removed",
            plugin=key,
        )


async def set_config(sup: Supervisor, key: str, env: dict[str, str]) -> PluginSnapshot:
    """See Supervisor.set_config."""
    runner = sup.process_runner(key)
    path = runner.manifest.path if runner.manifest else (runner.error.path if runner.error else "")
    try:
        parsed = parse_env(env)
    except ValueError as exc:
        raise ManifestError(path, "env", str(exc)) from None
    if runner.manifest is None:
        raise PluginActionError(key, f"cannot configure an INVALID plugin: {runner.error}")
    await sup.plugin_state.save_overrides(key, parsed)
    sup.memory.overrides[key] = parsed
    runner.env_overrides = dict(parsed)
    sup.logs.info(
        f"{key}: environment overrides set ({', '.join(sorted(parsed)) or 'none'})",
        event="plugin_config",
        plugin=key,
    )
    if runner.active or runner.state == PluginState.RUNNING:
        sup.orchestrator.stop_requested(key)
        await runner.stop("configuration changed")
        await sup.ensure_running(key, "restarted with new configuration")
    return runner.snapshot()


async def scale(sup: Supervisor, key: str, replicas: int) -> PluginSnapshot:
    """See Supervisor.scale."""
    runner = sup.process_runner(key)
    if not isinstance(runner, ReplicatedRunner):
        raise PluginActionError(key, "this plugin cannot run replicas")
    runner.check_count(replicas)
    before = runner.count
    try:
        await sup.plugin_state.save_replicas(key, replicas, runner.desired)
    except sqlite3.Error as exc:
        raise PluginActionError(key, f"the replica count could not be saved in the database ({exc})") from None
    sup.memory.replicas[key] = replicas
    await runner.scale(replicas)
    if before != replicas:
        sup.logs.info(
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
