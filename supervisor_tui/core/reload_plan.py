"""The reload planner: what re-reading the plugins folder does to each folder plugin, decided without doing it.

    plan = plan_reload(loaded, found, taken=..., desired=..., disabled=..., keep_on_error=True)
    for change in plan.changes:      # unloads (by key), then rejected manifests, then valid ones in start order
        ...                          # Supervisor.reload executes each change, then starts the ones marked start

Pure: no I/O and no plugin objects. ``loaded`` describes the folder plugins as they are (``Loaded``), ``found`` is
what ``plugins.manifest.discover`` returned. The rules (docs/plugins.md, "Live reload"):

- a folder that is gone is stopped and unloaded; a new one is loaded (INVALID when its manifest is rejected) and
  started when it should autostart;
- an unchanged manifest (and, for an in-process plugin, unchanged Python files) is kept as it is;
- a changed one replaces the old (a plugin that was up is stopped first and started again; one that was down
  starts only when it should autostart); a change of kind (process <-> in-process) unloads the old plugin first;
- a manifest that became invalid stops the plugin and shows it INVALID, unless ``keep_on_error`` (live reload)
  and the plugin is up: then the running version is kept and the reload of that plugin failed;
- a key held by a plugin of another kind (external, or an in-process plugin from settings) is left alone.

Whether a plugin should autostart is ``autostarts``: the operator's last start/stop wins, then ``[inprocess.<key>]
enabled = false`` for an in-process folder, then the manifest's ``autostart``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import StrEnum

from supervisor_tui.plugins.manifest import Discovery, Manifest, ManifestError, start_order

__all__ = ["Action", "Change", "Loaded", "ReloadPlan", "autostarts", "plan_reload"]

# What a reload reports, in this order: keys by outcome (Supervisor.reload's ReloadResult).
OUTCOMES = ("added", "removed", "changed", "unchanged", "invalid", "failed")


class Action(StrEnum):
    """What happens to one folder plugin."""

    LOAD = "load"  # a new folder: registered (INVALID when its manifest was rejected)
    UNLOAD = "unload"  # the folder is gone: stopped and unregistered
    KEEP = "keep"  # nothing changed
    KEEP_RUNNING = "keep_running"  # the new manifest was rejected; the running version stays (the reload failed)
    INVALIDATE = "invalidate"  # the new manifest was rejected: stopped, shown INVALID
    UPDATE = "update"  # same kind, new manifest or source: swapped in on the same plugin
    REPLACE = "replace"  # the kind changed: the old plugin is unregistered, a new one registered


_OUTCOME = {
    Action.LOAD: "added",
    Action.UNLOAD: "removed",
    Action.KEEP: "unchanged",
    Action.KEEP_RUNNING: "failed",
    Action.INVALIDATE: "changed",
    Action.UPDATE: "changed",
    Action.REPLACE: "changed",
}


@dataclass(frozen=True, slots=True)
class Loaded:
    """A folder plugin as it is before the reload."""

    key: str
    inprocess: bool
    manifest: Manifest | None  # None: INVALID
    error: str = ""  # why the manifest was rejected (INVALID)
    up: bool = False  # RUNNING, or its supervision (or start) is in progress
    source_changed: bool = False  # an in-process plugin's Python files differ from the imported version


@dataclass(frozen=True, slots=True)
class Change:
    """One planned step: ``stop`` (a reason) first when set, then ``action``, then a start when ``start``."""

    key: str
    action: Action
    manifest: Manifest | None = None  # the new manifest (LOAD, UPDATE, REPLACE)
    error: ManifestError | None = None  # the rejection (LOAD of an invalid folder, INVALIDATE, KEEP_RUNNING)
    stop: str = ""  # the reason the plugin is stopped first ("": not stopped)
    start: bool = False  # started once every change is applied
    prepare: bool = False  # in-process and up: import the new version first; if that fails, keep the old one

    @property
    def outcome(self) -> str:
        """Where the reload result lists this key ("added", "removed", "changed", "unchanged", "failed")."""
        return _OUTCOME[self.action]


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """The changes in the order they are applied, and every key whose manifest was rejected."""

    changes: tuple[Change, ...]
    invalid: tuple[str, ...]


def autostarts(key: str, manifest: Manifest, desired: Mapping[str, str], disabled: Collection[str]) -> bool:
    """Whether a folder plugin with ``manifest`` should run: the persisted desired state ("running"/"stopped")
    first, then ``disabled`` (in-process folders with ``enabled = false`` in settings), then ``autostart``."""
    wanted = desired.get(key)
    if wanted:
        return wanted == "running"
    if manifest.module is not None and key in disabled:
        return False
    return manifest.autostart


def plan_reload(
    loaded: Collection[Loaded],
    found: Discovery,
    *,
    taken: Collection[str] = (),
    desired: Mapping[str, str] | None = None,
    disabled: Collection[str] = (),
    keep_on_error: bool = False,
) -> ReloadPlan:
    """The changes that take the folder plugins from ``loaded`` to ``found`` (rules in the module docstring).

    ``taken``: keys registered by other kinds of plugins; ``desired``: persisted desired states by key."""
    desired = desired if desired is not None else {}
    current = {p.key: p for p in loaded}
    wanted = set(found.manifests) | set(found.invalid)
    gone = sorted(current.keys() - wanted)
    changes = [Change(key, Action.UNLOAD, stop="removed from the plugins folder") for key in gone]
    for key, err in found.invalid.items():
        if key not in taken:
            changes.append(_rejected(current.get(key), key, err, keep_on_error))
    for key in start_order(found.manifests):
        if key not in taken:
            manifest = found.manifests[key]
            changes.append(_accepted(current.get(key), key, manifest, autostarts(key, manifest, desired, disabled)))
    return ReloadPlan(tuple(changes), tuple(found.invalid))


def _rejected(plugin: Loaded | None, key: str, err: ManifestError, keep_on_error: bool) -> Change:
    if plugin is None:
        return Change(key, Action.LOAD, error=err)
    if plugin.manifest is None and plugin.error == str(err):
        return Change(key, Action.KEEP)
    if keep_on_error and plugin.up:
        return Change(key, Action.KEEP_RUNNING, error=err)
    return Change(key, Action.INVALIDATE, error=err, stop="manifest became invalid")


def _accepted(plugin: Loaded | None, key: str, manifest: Manifest, autostart: bool) -> Change:
    if plugin is None:
        return Change(key, Action.LOAD, manifest, start=autostart)
    if plugin.manifest == manifest and not (plugin.inprocess and plugin.source_changed):
        return Change(key, Action.KEEP)
    start = plugin.up or autostart
    if (manifest.module is not None) != plugin.inprocess:
        return Change(key, Action.REPLACE, manifest, stop="plugin kind changed", start=start)
    stop = ("manifest changed" if plugin.manifest != manifest else "source changed") if plugin.up else ""
    return Change(key, Action.UPDATE, manifest, stop=stop, start=start, prepare=plugin.inprocess and plugin.up)
