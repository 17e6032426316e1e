"""A reload executed: the plugins folder is read again, ``core.reload_plan`` says what changes, this applies it
plugin by plugin and starts what should run."""

from __future__ import annotations

from typing import TYPE_CHECKING

from supervisor_tui.core.events import plugin_failed
from supervisor_tui.core.reload_plan import OUTCOMES, Action, Change, plan_reload
from supervisor_tui.core.supervisor.managed import FolderPlugin, ReloadResult, disabled_keys, folder_plugins, loaded
from supervisor_tui.plugins.inprocess import InProcessPlugin
from supervisor_tui.plugins.manifest import discover
from supervisor_tui.plugins.model import PluginActionError
from supervisor_tui.plugins.replicas import ReplicatedRunner

if TYPE_CHECKING:
    from supervisor_tui.core.supervisor.root import Supervisor


async def reload_plugins(sup: Supervisor, keep_on_error: bool) -> ReloadResult:
    """Plan and apply a reload (the caller holds the supervisor's lifecycle lock)."""
    found = discover(sup.settings.plugins_dir, skip=sup.memory.removed)
    current = folder_plugins(sup.registry)
    plan = plan_reload(
        [loaded(runner) for runner in current.values()],
        found,
        taken=set(sup.registry) - set(current),
        desired=sup.memory.desired,
        disabled=disabled_keys(sup.inprocess_tables),
        keep_on_error=keep_on_error,
    )
    result: ReloadResult = {name: [] for name in OUTCOMES}
    result["invalid"] = list(plan.invalid)
    to_start: list[str] = []
    for change in plan.changes:
        outcome = await _apply(sup, change, current.get(change.key))
        result[outcome].append(change.key)
        if change.start and outcome != "failed":
            to_start.append(change.key)
    sup.logs.info(
        "reloaded plugins: "
        + ", ".join(f"{name} {','.join(keys) or '-'}" for name, keys in result.items() if name != "unchanged")
        + f"; {len(result['unchanged'])} unchanged",
        event="reload",
        **{name: keys for name, keys in result.items()},
    )
    await sup.orchestrator.start_many(to_start, "loaded by reload")
    return result


async def _apply(sup: Supervisor, change: Change, runner: FolderPlugin | None) -> str:
    """Execute one planned change; returns its outcome ("failed" when a new version did not import)."""
    key, action = change.key, change.action
    if action is Action.LOAD:
        sup.folder_plugins.add(key, change.manifest, change.error)
        if change.error is not None:
            err = change.error
            sup.logs.error(f"{key}: INVALID: {err}", event="plugin_invalid", plugin=key, reason=str(err))
        return change.outcome
    assert runner is not None
    if action is Action.KEEP_RUNNING:
        _reload_failed(sup, runner, str(change.error))
        return change.outcome
    if change.prepare and isinstance(runner, InProcessPlugin) and change.manifest is not None:
        try:  # import the new version while the old one runs: a broken one never replaces it
            await runner.prepare(change.manifest)
        except PluginActionError as exc:
            _reload_failed(sup, runner, exc.message)
            return "failed"
    if change.stop:
        await runner.stop(change.stop)
    if action is Action.UNLOAD:
        sup.ports.declare_fixed(key, None)
        sup.unregister(key, change.stop)
    elif action is Action.INVALIDATE:
        runner.replace_manifest(None, change.error)
        sup.ports.declare_fixed(key, None)
    elif action is Action.REPLACE:
        sup.unregister(key, change.stop)
        sup.folder_plugins.add(key, change.manifest)
    elif action is Action.UPDATE and change.manifest is not None:
        runner.replace_manifest(change.manifest)
        sup.ports.declare_fixed(key, change.manifest.port)
        count = sup.folder_plugins.replica_count(key, change.manifest) or change.manifest.replicas
        if isinstance(runner, ReplicatedRunner) and runner.count != count:
            try:
                await runner.scale(count, "replicas changed in the manifest")
            except PluginActionError as exc:
                _reload_failed(sup, runner, exc.message)
    return change.outcome


def _reload_failed(sup: Supervisor, runner: FolderPlugin, reason: str) -> None:
    runner.last_error = f"reload failed: {reason}"
    sup.logs.error(
        f"{runner.key}: reload failed, the running version is kept: {reason}",
        event="reload_failed",
        plugin=runner.key,
        reason=reason,
    )
    sup.bus.publish(plugin_failed(runner.key, "reload", reason))
