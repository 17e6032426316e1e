"""The reload planner's rules, plugin by plugin: what a reload of the plugins folder loads, unloads, keeps, stops
and starts (docs/plugins.md, "Live reload"). Pure: no folder, no process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from supervisor_tui.core.reload_plan import Action, Change, Loaded, ReloadPlan, autostarts, plan_reload
from supervisor_tui.plugins.manifest import Discovery, Manifest, ManifestError, parse_manifest

PLUGINS = Path("/srv/plugins")


def manifest(key: str, **fields: Any) -> Manifest:
    data: dict[str, Any] = {"key": key, **fields}
    if "module" not in data:
        data.setdefault("command", ["python", "server.py"])
    return parse_manifest(data, PLUGINS / key / "manifest.json")


def rejected(key: str, problem: str = "must be a JSON object") -> ManifestError:
    return ManifestError(PLUGINS / key / "manifest.json", "manifest", problem)


def found(*manifests: Manifest, invalid: dict[str, ManifestError] | None = None) -> Discovery:
    return Discovery(manifests={m.key: m for m in manifests}, invalid=dict(invalid or {}))


def loaded(m: Manifest, up: bool = False, source_changed: bool = False) -> Loaded:
    return Loaded(m.key, m.module is not None, m, up=up, source_changed=source_changed)


def invalid_loaded(key: str, err: ManifestError) -> Loaded:
    return Loaded(key, False, None, error=str(err))


def only(plan: ReloadPlan) -> Change:
    assert len(plan.changes) == 1, plan.changes
    return plan.changes[0]


# -- folders that appear and disappear ---------------------------------------------------------------------------
def test_a_removed_folder_is_stopped_and_unloaded() -> None:
    change = only(plan_reload([loaded(manifest("web"), up=True)], found()))
    assert change == Change("web", Action.UNLOAD, stop="removed from the plugins folder")
    assert change.outcome == "removed" and not change.start


def test_a_new_folder_loads_and_starts_when_it_autostarts() -> None:
    web = manifest("web")
    change = only(plan_reload([], found(web)))
    assert change == Change("web", Action.LOAD, web, start=True)
    assert change.outcome == "added"
    assert only(plan_reload([], found(manifest("web", autostart=False)))).start is False


def test_a_new_rejected_folder_loads_invalid_and_never_starts() -> None:
    err = rejected("web")
    plan = plan_reload([], found(invalid={"web": err}))
    assert only(plan) == Change("web", Action.LOAD, error=err)
    assert plan.invalid == ("web",)


# -- what was there already --------------------------------------------------------------------------------------
def test_an_unchanged_manifest_is_kept_running_or_not() -> None:
    web = manifest("web")
    for up in (True, False):
        change = only(plan_reload([loaded(web, up=up)], found(manifest("web"))))
        assert change == Change("web", Action.KEEP) and change.outcome == "unchanged"


def test_a_changed_manifest_of_a_running_plugin_stops_and_starts_it() -> None:
    new = manifest("web", description="v2")
    change = only(plan_reload([loaded(manifest("web"), up=True)], found(new)))
    assert change == Change("web", Action.UPDATE, new, stop="manifest changed", start=True)
    assert change.outcome == "changed"


def test_a_changed_manifest_of_a_stopped_plugin_starts_it_only_when_it_autostarts() -> None:
    old = manifest("web")
    quiet = manifest("web", autostart=False)
    assert only(plan_reload([loaded(old)], found(quiet))) == Change("web", Action.UPDATE, quiet)
    loud = manifest("web", description="v2")
    assert only(plan_reload([loaded(old)], found(loud))) == Change("web", Action.UPDATE, loud, start=True)


def test_an_invalid_plugin_whose_manifest_is_fixed_is_updated_and_started() -> None:
    err = rejected("web")
    web = manifest("web")
    assert only(plan_reload([invalid_loaded("web", err)], found(web))) == Change("web", Action.UPDATE, web, start=True)


def test_changed_source_of_a_running_in_process_plugin_imports_it_before_stopping_the_old_one() -> None:
    greeter = manifest("greeter", module="plugin:Plugin")
    change = only(plan_reload([loaded(greeter, up=True, source_changed=True)], found(greeter)))
    assert change == Change("greeter", Action.UPDATE, greeter, stop="source changed", start=True, prepare=True)
    # A changed manifest is prepared the same way; a stopped plugin has nothing to keep, so nothing to prepare.
    new = manifest("greeter", module="plugin:Plugin", description="v2")
    assert only(plan_reload([loaded(greeter, up=True)], found(new))).prepare is True
    assert only(plan_reload([loaded(greeter)], found(new))) == Change("greeter", Action.UPDATE, new, start=True)


def test_changed_source_matters_only_for_in_process_plugins() -> None:
    web = manifest("web")
    assert only(plan_reload([loaded(web, source_changed=True)], found(web))).action is Action.KEEP
    greeter = manifest("greeter", module="plugin:Plugin")
    assert only(plan_reload([loaded(greeter, source_changed=False)], found(greeter))).action is Action.KEEP


def test_a_change_of_kind_replaces_the_plugin() -> None:
    inprocess = manifest("web", module="plugin:Plugin", autostart=False)
    change = only(plan_reload([loaded(manifest("web"), up=True)], found(inprocess)))
    assert change == Change("web", Action.REPLACE, inprocess, stop="plugin kind changed", start=True)
    assert change.outcome == "changed"
    # Down and not autostarting: replaced, not started.
    process = manifest("web", autostart=False)
    change = only(plan_reload([loaded(manifest("web", module="plugin:Plugin"))], found(process)))
    assert change == Change("web", Action.REPLACE, process, stop="plugin kind changed")


# -- manifests that became invalid -------------------------------------------------------------------------------
def test_a_manifest_that_became_invalid_stops_the_plugin_and_shows_it_invalid() -> None:
    err = rejected("web", "not valid JSON")
    for up in (True, False):
        change = only(plan_reload([loaded(manifest("web"), up=up)], found(invalid={"web": err})))
        assert change == Change("web", Action.INVALIDATE, error=err, stop="manifest became invalid")
        assert change.outcome == "changed"


def test_live_reload_keeps_the_running_version_when_the_new_manifest_is_rejected() -> None:
    err = rejected("web", "not valid JSON")
    plan = plan_reload([loaded(manifest("web"), up=True)], found(invalid={"web": err}), keep_on_error=True)
    assert only(plan) == Change("web", Action.KEEP_RUNNING, error=err)
    assert only(plan).outcome == "failed" and plan.invalid == ("web",)
    # Nothing runs, nothing to keep: shown INVALID as without keep_on_error.
    plan = plan_reload([loaded(manifest("web"))], found(invalid={"web": err}), keep_on_error=True)
    assert only(plan).action is Action.INVALIDATE


def test_the_same_rejection_again_changes_nothing_and_another_one_is_shown() -> None:
    err = rejected("web", "not valid JSON")
    assert only(plan_reload([invalid_loaded("web", err)], found(invalid={"web": err}))).action is Action.KEEP
    other = rejected("web", "command: must not be empty")
    change = only(plan_reload([invalid_loaded("web", err)], found(invalid={"web": other})))
    assert change == Change("web", Action.INVALIDATE, error=other, stop="manifest became invalid")


# -- keys of other kinds, order, autostart -----------------------------------------------------------------------
def test_a_key_held_by_another_kind_of_plugin_is_left_alone() -> None:
    plan = plan_reload([], found(manifest("hook"), invalid={"audit": rejected("audit")}), taken={"hook", "audit"})
    assert plan.changes == () and plan.invalid == ("audit",)


def test_changes_come_unloads_first_then_rejections_then_dependencies_before_dependents() -> None:
    app = manifest("app", depends_on=["db"])
    db = manifest("db")
    plan = plan_reload(
        [loaded(manifest("zz")), loaded(manifest("aa"))],
        found(app, db, invalid={"bad": rejected("bad")}),
    )
    assert [(c.key, c.action) for c in plan.changes] == [
        ("aa", Action.UNLOAD),
        ("zz", Action.UNLOAD),
        ("bad", Action.LOAD),
        ("db", Action.LOAD),
        ("app", Action.LOAD),
    ]


def test_the_operators_last_start_or_stop_wins_over_autostart() -> None:
    quiet = manifest("web", autostart=False)
    assert only(plan_reload([], found(quiet), desired={"web": "running"})).start is True
    assert only(plan_reload([], found(manifest("web")), desired={"web": "stopped"})).start is False
    # A changed manifest of a stopped plugin the operator stopped stays stopped.
    change = only(plan_reload([loaded(manifest("web"))], found(manifest("web", port=4100)), desired={"web": "stopped"}))
    assert change.action is Action.UPDATE and change.start is False


def test_autostarts_settings_disable_only_in_process_folders() -> None:
    greeter = manifest("greeter", module="plugin:Plugin")
    web = manifest("web")
    assert autostarts("greeter", greeter, {}, disabled={"greeter"}) is False
    assert autostarts("greeter", greeter, {"greeter": "running"}, disabled={"greeter"}) is True
    assert autostarts("web", web, {}, disabled={"web"}) is True
    assert autostarts("web", manifest("web", autostart=False), {}, ()) is False
    assert only(plan_reload([], found(greeter), disabled={"greeter"})).start is False
