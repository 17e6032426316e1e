"""The Supervisor's Python API: dependencies, isolation, persistence, reload, install/remove/config, the lock."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import open_supervisor, plugin_processes, spawns, wait_until

from supervisor_tui.config import Settings
from supervisor_tui.core.events import PluginRegistered, PluginStateChanged, PluginUnregistered
from supervisor_tui.core.lock import LockError
from supervisor_tui.core.supervisor import (
    ManifestError,
    PluginActionError,
    PluginNotFound,
    PluginSnapshot,
    Supervisor,
)

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")


def transitions(events: list[object]) -> list[tuple[str, str]]:
    return [(e.key, e.to_state) for e in events if isinstance(e, PluginStateChanged)]


async def test_start_all_honours_depends_on_and_stop_all_reverses_it(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("db", "sleeper.py")
    make_plugin("api", "sleeper.py", depends_on=["db"])
    make_plugin("web", "sleeper.py", depends_on=["api", "db"])
    async with open_supervisor(settings) as sup:
        with sup.bus.subscribe(["plugin.state"]) as sub:
            await sup.start_all()
            assert {p.key: p.state for p in sup.plugins()} == {"db": "RUNNING", "api": "RUNNING", "web": "RUNNING"}
            started = transitions(sub.get_nowait())
            assert started.index(("db", "RUNNING")) < started.index(("api", "STARTING"))
            assert started.index(("api", "RUNNING")) < started.index(("web", "STARTING"))
            await sup.stop_all()
            stopped = transitions(sub.get_nowait())
        assert stopped.index(("web", "STOPPED")) < stopped.index(("api", "STOPPING"))
        assert stopped.index(("api", "STOPPED")) < stopped.index(("db", "STOPPING"))


async def test_starting_a_plugin_starts_its_dependencies_first(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("db", "sleeper.py", autostart=False)
    make_plugin("api", "sleeper.py", autostart=False, depends_on=["db"])
    async with open_supervisor(settings) as sup:
        snap = await sup.start("api")
        assert snap.state == "RUNNING" and sup.plugin("db").state == "RUNNING"


async def test_failed_dependency_fails_the_dependent_with_a_reason(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("db", "crash_at_start.py", autostart=False, startretries=0)
    app = make_plugin("app", "sleeper.py", autostart=False, depends_on=["db"])
    async with open_supervisor(settings) as sup:
        with pytest.raises(PluginActionError, match=r"dependency 'db' is FATAL \(.*\): healthy cannot be met"):
            await sup.start("app")
        snap = sup.plugin("app")
        assert snap.state == "STOPPED" and spawns(app) == []
        assert snap.detail.startswith("not started: dependency 'db' is FATAL")


async def test_invalid_manifest_is_isolated(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    make_plugin("good", "sleeper.py")
    make_plugin("bad", "sleeper.py", startsecs="soon")
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        assert sup.plugin("good").state == "RUNNING"
        bad = sup.plugin("bad")
        assert bad.state == "INVALID" and "startsecs" in bad.detail and "manifest.json" in bad.detail
        with pytest.raises(PluginActionError, match="INVALID"):
            await sup.start("bad")
        with pytest.raises(PluginNotFound):
            sup.plugin("nope")
        with pytest.raises(PluginNotFound):
            await sup.start("nope")


async def test_operator_stop_persists_across_restarts(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    make_plugin("kept", "sleeper.py")
    make_plugin("parked", "sleeper.py")
    make_plugin("manual", "sleeper.py", autostart=False)
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        await sup.stop("parked")
        await sup.start("manual")
        assert sup.plugin("parked").desired == "stopped"
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        states = {p.key: p.state for p in sup.plugins()}
        assert states == {"kept": "RUNNING", "parked": "STOPPED", "manual": "RUNNING"}


async def test_reload_applies_the_difference_plugin_by_plugin(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("same", "sleeper.py")
    make_plugin("changes", "sleeper.py")
    gone = make_plugin("gone", "sleeper.py")
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        before = {p.key: p.pid for p in sup.plugins()}
        make_plugin("changes", "sleeper.py", env={"NEW": "1"})
        make_plugin("fresh", "sleeper.py")
        make_plugin("broken", "sleeper.py", restart="sometimes")
        (gone / "manifest.json").unlink()
        with sup.bus.subscribe(["plugin"]) as sub:
            result = await sup.reload()
            events = sub.get_nowait()
        assert result["added"] == ["broken", "fresh"] or set(result["added"]) == {"broken", "fresh"}
        assert result["removed"] == ["gone"] and result["changed"] == ["changes"]
        assert result["unchanged"] == ["same"] and result["invalid"] == ["broken"]
        after = {p.key: p for p in sup.plugins()}
        assert after["same"].pid == before["same"]  # untouched
        assert after["changes"].state == "RUNNING" and after["changes"].pid != before["changes"]
        assert after["fresh"].state == "RUNNING" and after["broken"].state == "INVALID"
        assert "gone" not in after
        assert any(isinstance(e, PluginUnregistered) and e.key == "gone" for e in events)
        assert any(isinstance(e, PluginRegistered) and e.key == "fresh" for e in events)
        assert plugin_processes(gone) == []


async def test_install_validates_writes_and_starts(supervisor: Supervisor, settings: Settings, tmp_path: Path) -> None:
    script = tmp_path / "served.py"
    script.write_text("import time\nwhile True: time.sleep(3600)\n")
    manifest = {"id": "crypto", "command": ["python", str(script)], "startsecs": 0.2}
    with pytest.raises(ManifestError) as info:
        await supervisor.install({**manifest, "startsecs": "later"}, autostart=True)
    assert info.value.field == "startsecs"
    with pytest.raises(ManifestError):
        await supervisor.install({**manifest, "depends_on": ["ghost"]}, autostart=True)
    assert not (settings.plugins_dir / "crypto").exists()
    snap = await supervisor.install(manifest, autostart=True)
    assert snap.key == "crypto" and snap.state == "RUNNING" and snap.desired == "running"
    written = json.loads((settings.plugins_dir / "crypto" / "manifest.json").read_text())
    assert written["key"] == "crypto" and "id" not in written
    with pytest.raises(PluginActionError, match="already exists"):
        await supervisor.install(manifest, autostart=False)
    quiet = await supervisor.install({**manifest, "id": "quiet"}, autostart=False)
    assert quiet.state == "STOPPED" and quiet.desired == "stopped"


async def test_remove_stops_unloads_and_purges_only_when_asked(
    supervisor: Supervisor, make_plugin: Callable[..., Path]
) -> None:
    keep = make_plugin("keepfolder", "sleeper.py")
    purge = make_plugin("purgefolder", "sleeper.py")
    needed = make_plugin("needed", "sleeper.py")
    make_plugin("needer", "sleeper.py", depends_on=["needed"])
    await supervisor.reload()
    with pytest.raises(PluginActionError, match="needer depend"):
        await supervisor.remove("needed")
    await supervisor.remove("keepfolder")
    await supervisor.remove("purgefolder", purge=True)
    keys = {p.key for p in supervisor.plugins()}
    assert "keepfolder" not in keys and "purgefolder" not in keys
    assert keep.exists() and not purge.exists() and needed.exists()
    assert plugin_processes(keep) == []
    result = await supervisor.reload()  # a removed (not purged) plugin does not come back by itself
    assert "keepfolder" not in result["added"]
    with pytest.raises(PluginNotFound):
        await supervisor.remove("keepfolder")


async def test_set_config_persists_env_and_restarts(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    script = "import os, time\nopen('seen', 'w').write(os.environ.get('GREETING', '-'))\ntime.sleep(3600)\n"
    folder = make_plugin("greeter", script, env={"GREETING": "hello"})
    async with open_supervisor(settings) as sup:
        first = await sup.start("greeter")
        await wait_until(lambda: (folder / "seen").exists() and (folder / "seen").read_text() == "hello")
        with pytest.raises(ManifestError, match="PORT"):
            await sup.set_config("greeter", {"PORT": "1"})
        snap = await sup.set_config("greeter", {"GREETING": "hola"})
        assert snap.state == "RUNNING" and snap.pid != first.pid
        await wait_until(lambda: (folder / "seen").read_text() == "hola")
    (folder / "seen").unlink()
    async with open_supervisor(settings) as sup:  # the override survives a restart
        await sup.start_all()
        await wait_until(lambda: (folder / "seen").exists() and (folder / "seen").read_text() == "hola")


async def test_second_supervisor_on_the_same_data_dir_is_refused(supervisor: Supervisor, settings: Settings) -> None:
    other = Supervisor(settings)
    with pytest.raises(LockError, match="already running"):
        await other.open()


async def test_snapshot_is_json_ready(supervisor: Supervisor, make_plugin: Callable[..., Path]) -> None:
    make_plugin("snap", "http_server.py", endpoints=[{"method": "GET", "path": "/x/{id}"}], health={"path": "/health"})
    await supervisor.reload()
    await wait_until(lambda: supervisor.plugin("snap").state == "RUNNING")
    snap = supervisor.plugin("snap")
    assert isinstance(snap, PluginSnapshot) and snap.kind == "process"
    d = json.loads(json.dumps(snap.to_dict()))
    assert d["endpoints"] == [{"method": "GET", "path": "/x/{id}", "description": "", "gateway_url": ""}]
    assert d["upstream"] == f"http://127.0.0.1:{snap.port}" and d["timeout"] > 0 and d["max_body"] > 0
    expected = {
        "key", "name", "version", "description", "kind", "state", "detail", "pid", "host", "port", "upstream",
        "started_at", "restarts", "healthy", "health_detail", "last_error", "endpoints", "autostart", "desired",
        "timeout", "max_body", "last_metrics", "manifest_path", "replicas", "node", "upstreams", "group",
        "depends_on", "requests", "uptime",
    }  # fmt: skip
    assert set(d) == expected
    assert [set(r) for r in d["replicas"]] == [
        {"index", "state", "detail", "pid", "port", "upstream", "started_at", "restarts", "cpu_percent", "rss"}
    ]
    assert d["replicas"][0]["pid"] == snap.pid and d["replicas"][0]["upstream"] == d["upstream"]


async def test_reload_turns_a_plugin_invalid_and_back(supervisor: Supervisor, make_plugin: Callable[..., Path]) -> None:
    folder = make_plugin("flip", "sleeper.py")
    await supervisor.reload()
    await wait_until(lambda: supervisor.plugin("flip").state == "RUNNING")
    good = (folder / "manifest.json").read_text()
    (folder / "manifest.json").write_text(good.replace('"startsecs": 0.3', '"startsecs": "never"'))
    with supervisor.bus.subscribe(["plugin.state"]) as sub:
        result = await supervisor.reload()
        assert result["changed"] == ["flip"] and result["invalid"] == ["flip"]
        snap = supervisor.plugin("flip")
        assert snap.state == "INVALID" and "startsecs" in snap.detail and plugin_processes(folder) == []
        (folder / "manifest.json").write_text(good)
        result = await supervisor.reload()
        assert result["changed"] == ["flip"]
        await wait_until(lambda: supervisor.plugin("flip").state == "RUNNING")
        seen = [e.to_state for e in sub.get_nowait() if isinstance(e, PluginStateChanged)]
    assert seen[:3] == ["STOPPING", "STOPPED", "INVALID"] and seen[3:5] == ["STOPPED", "STARTING"]
