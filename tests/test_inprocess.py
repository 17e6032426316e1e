"""In-process plugins through the real runtime: hooks in order, configuration refused, load timeout, hooks that raise,
hang or block the loop, routes served by the gateway, plugin.loaded/plugin.load_failed (and the old names) on
/ws/events."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from conftest import FAST, FIXTURE_PLUGINS, REPO, wait_until, write_plugin
from fixtures.api.harness import bearer, running_api
from inprocess_support import inprocess_table

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")


def with_inprocess(settings: Settings, **tables: Any) -> Settings:
    settings.tables["inprocess"] = {name.replace("_", "-"): table for name, table in tables.items()}
    return settings


def lifecycle(journal: list[tuple[str, Any]], key: str) -> list[str]:
    """The plugin-lifecycle hooks a recorder saw for ``key`` (state_changed left out)."""
    return [h for h, k in journal if k == key and h.startswith("on_plugin_") and h != "on_plugin_state_changed"]


async def test_hooks_follow_a_plugin_and_a_console_through_their_lives(
    make_settings: Callable[..., Settings],
) -> None:
    settings = with_inprocess(
        make_settings(**{"plugins.watch": False}), recorder=inprocess_table("inprocess_support:Recorder")
    )
    async with running_api(settings) as api:
        rec = api.runtime.sup.registry["recorder"]
        assert rec.snapshot().state == "RUNNING" and rec.snapshot().kind == "inprocess"
        journal: list[tuple[str, Any]] = rec.instance.journal
        manifest = {"key": "web", "command": ["python", str(FIXTURE_PLUGINS / "sleeper.py")], **FAST}
        r = await api.client.post("/api/v1/plugins/install", json={"manifest": manifest, "autoStart": True})
        assert r.status_code == 201, r.text
        pid = (await api.wait_state("web", "RUNNING"))["pid"]
        os.kill(pid, signal.SIGKILL)  # a crash: EXITED, then restarted (restart on-failure)
        await wait_until(lambda: lifecycle(journal, "web").count("on_plugin_started") == 2)
        assert (await api.client.post("/api/v1/plugins/web/stop")).status_code == 200
        assert (await api.client.delete("/api/v1/plugins/web")).status_code == 200
        await wait_until(
            lambda: (
                ("on_operator_action", "remove")
                in [(h, a.get("action")) for h, a in journal if h == "on_operator_action"]
            )
        )
        assert lifecycle(journal, "web") == [
            "on_plugin_registered",
            "on_plugin_started",
            "on_plugin_crashed",
            "on_plugin_started",
            "on_plugin_stopped",
            "on_plugin_unregistered",
        ]
        actions = [(a["action"], a["ok"], a["origin"]) for h, a in journal if h == "on_operator_action"]
        assert actions == [("install", True, "api"), ("stop", True, "api"), ("remove", True, "api")]

        # A console: registered, heartbeats (coalesced), inactive when silent, back with the next heartbeat.
        r = await api.client.post(
            "/api/consoles/register", json={"id": "w1", "name": "Worker 1", "state": "idle", "system": {}}
        )
        assert r.status_code == 201, r.text
        ctoken = r.json()["token"]
        hb = {"state": "busy", "system": {}, "last_activity": "2025-12-03T10:30:00Z", "last_error": None}
        r = await api.client.post("/api/consoles/w1/heartbeat", json=hb, headers=bearer(ctoken))
        assert r.status_code == 200, r.text
        await wait_until(lambda: ("on_console_heartbeat", 1) in journal)
        consoles = api.runtime.consoles
        assert consoles is not None
        consoles.sweep(now=time.time() + 10 * 86400)  # far past every deadline: the sweeper's own work
        await wait_until(lambda: ("on_console_inactive", "w1") in journal)
        r = await api.client.post("/api/consoles/w1/heartbeat", json=hb, headers=bearer(ctoken))
        await wait_until(lambda: sum(1 for h, k in journal if h == "on_console_heartbeat") == 2)
        seen = [(h, args[:3]) for h, args in rec.instance.calls if h.startswith("on_console_")]
        assert seen == [
            ("on_console_state_changed", ("w1", None, "idle")),
            ("on_console_registered", ("w1", "Worker 1", "idle")),
            ("on_console_state_changed", ("w1", "idle", "busy")),
            ("on_console_heartbeat", (1, ("w1",))),
            ("on_console_state_changed", ("w1", "busy", "inactive")),
            ("on_console_inactive", ("w1", seen[5][1][1])),
            ("on_console_state_changed", ("w1", "inactive", "busy")),
            ("on_console_heartbeat", (1, ("w1",))),
        ]
    # The supervisor's shutdown reached the plugin last.
    assert journal[-1] == ("on_shutdown", None)


async def test_an_inprocess_plugin_hears_of_the_plugins_that_were_there_before_it(
    make_settings: Callable[..., Settings],
) -> None:
    settings = with_inprocess(
        make_settings(**{"plugins.watch": False}), recorder=inprocess_table("inprocess_support:Recorder")
    )
    write_plugin(settings.plugins_dir, "early", "sleeper.py")
    async with running_api(settings) as api:
        journal: list[tuple[str, Any]] = api.runtime.sup.registry["recorder"].instance.journal
        await api.wait_state("early", "RUNNING")
        await wait_until(lambda: lifecycle(journal, "early") == ["on_plugin_registered", "on_plugin_started"])


async def test_a_refused_configuration_and_a_load_timeout_fail_alone(make_settings: Callable[..., Settings]) -> None:
    settings = with_inprocess(
        make_settings(**{"plugins.watch": False}),
        picky=inprocess_table("inprocess_support:Picky", level="medium"),
        fine=inprocess_table("inprocess_support:Picky", level="high"),
        never=inprocess_table("inprocess_support:NeverReady"),
        missing=inprocess_table("inprocess_support:NoSuchClass"),
    )
    settings.tables["inprocess"]["load_timeout"] = "0.3s"
    async with running_api(settings) as api:
        r = await api.client.get("/api/v1/inprocess-plugins")
        assert r.status_code == 200
        body = r.json()
        assert body["loaded"] == ["fine"]
        failed = {f["name"]: f for f in body["failed"]}
        assert set(failed) == {"picky", "never", "missing"}
        assert (
            failed["picky"]["phase"] == "validate_configuration"
            and "level must be low or high" in failed["picky"]["error"]
        )
        # The first load imports too: import plus initialize get twice load_timeout.
        assert failed["never"]["phase"] == "initialize" and "did not finish within 0.6s" in failed["never"]["error"]
        assert "no class 'NoSuchClass'" in failed["missing"]["error"]
        # Shown like any plugin: FATAL with the reason, in the plugin list the TUI and ctl read.
        picky = await api.plugin("picky")
        assert picky["state"] == "FATAL" and picky["kind"] == "inprocess" and "level must be" in picky["detail"]
        assert (await api.plugin("fine"))["state"] == "RUNNING"
        statuses = {p["key"]: p for p in body["plugins"]}
        assert statuses["fine"]["status"] == {"level": "high"} and statuses["picky"]["counters"]["load_failures"] == 1
        # An operator start tries again and answers with the reason.
        r = await api.client.post("/api/v1/plugins/picky/start")
        assert r.status_code == 409 and "level must be low or high" in r.json()["error"]["message"]
        r = await api.client.post("/api/v1/plugins/never/start")  # imported already: load_timeout alone
        assert r.status_code == 409 and "did not finish within 0.3s" in r.json()["error"]["message"]
        # Stop = shutdown, start = initialize: same actions, same states as any plugin.
        assert (await api.client.post("/api/v1/plugins/fine/stop")).json()["plugin"]["state"] == "STOPPED"
        assert (await api.client.post("/api/v1/plugins/fine/restart")).json()["plugin"]["state"] == "RUNNING"


async def test_hooks_that_raise_hang_or_block_are_reported_and_the_rest_goes_on(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = with_inprocess(
        make_settings(**{"plugins.watch": False}),
        faulty=inprocess_table("inprocess_support:Faulty", block_for=1.0),
        recorder=inprocess_table("inprocess_support:Recorder"),
    )
    settings.tables["inprocess"].update(hook_timeout="0.5s", block_threshold="0.3s")
    async with running_api(settings) as api:
        sup = api.runtime.sup
        faulty, recorder = sup.registry["faulty"], sup.registry["recorder"]
        manifest = {"key": "web", "command": ["python", str(FIXTURE_PLUGINS / "sleeper.py")], **FAST}
        r = await api.client.post("/api/v1/plugins/install", json={"manifest": manifest, "autoStart": True})
        assert r.status_code == 201
        assert (await api.client.post("/api/v1/plugins/web/stop")).status_code == 200
        assert (await api.client.delete("/api/v1/plugins/web")).status_code == 200
        await wait_until(lambda: faulty.counters["loop_blocks"] >= 1 and faulty.counters["hook_timeouts"] >= 1)
        assert faulty.counters["hook_errors"] >= 1  # on_plugin_started raised
        # Every hook after the bad ones still ran, in order, for this plugin and for the other one.
        await wait_until(lambda: ("on_plugin_unregistered", "web") in faulty.instance.journal)
        assert lifecycle(recorder.instance.journal, "web") == [
            "on_plugin_registered",
            "on_plugin_started",
            "on_plugin_stopped",
            "on_plugin_unregistered",
        ]
        body = (await api.client.get("/api/v1/inprocess-plugins")).json()
        entry = next(p for p in body["plugins"] if p["key"] == "faulty")
        assert entry["state"] == "RUNNING" and entry["counters"]["hook_errors"] >= 1
        assert entry["counters"]["hook_timeouts"] >= 1 and entry["counters"]["loop_blocks"] >= 1
        assert any(b["plugin"] == "faulty" and b["what"] == "hook on_plugin_unregistered" for b in body["loop_blocks"])
        assert (await api.plugin("faulty"))["state"] == "RUNNING"
        logged = [r.message for r in sup.logs.tail(None, 500)]
        assert any("boom on web" in m for m in logged)
        assert any("hook on_plugin_stopped failed: did not finish within 0.5s" in m for m in logged)
        assert any("blocked the event loop" in m and "on_plugin_unregistered" in m for m in logged)


async def test_an_in_process_plugin_serves_its_routes_through_the_gateway_and_events_say_so(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    plugins = tmp_path / "examples"
    shutil.copytree(REPO / "plugins" / "stats", plugins / "stats", ignore=shutil.ignore_patterns("__pycache__"))
    settings = with_inprocess(
        make_settings(**{"plugins.dir": str(plugins), "plugins.watch": False}),
        broken=inprocess_table("inprocess_support_missing:Nothing"),
    )
    async with running_api(settings) as api:
        stats = await api.plugin("stats")
        assert stats["kind"] == "inprocess" and stats["state"] == "RUNNING" and stats["pid"] is None
        assert [(e["method"], e["path"]) for e in stats["endpoints"]] == [("GET", "/summary")]
        r = await api.client.get("/api/plugins/stats/summary")
        assert r.status_code == 200, r.text
        summary = r.json()
        assert summary["plugins"]["by_state"] == {"RUNNING": 1, "FATAL": 1}
        assert summary["consoles"]["total"] == 0 and "inactive" in summary["consoles"]["by_state"]
        assert (await api.client.get("/api/plugins/stats/nothing")).status_code == 404
        assert (await api.client.post("/api/plugins/stats/summary")).status_code == 405

        events_url = api.url.replace("http://", "ws://") + "/ws/events?topics="
        auth = bearer(api.admin_token)
        async with (
            websockets.connect(events_url + "plugin.loaded,plugin.load_failed", additional_headers=auth) as ws,
            websockets.connect(events_url + "plugin-loaded,plugin-failed", additional_headers=auth) as old_ws,
        ):
            assert (await api.client.post("/api/v1/plugins/stats/stop")).status_code == 200
            r = await api.client.get("/api/plugins/stats/summary")
            assert r.status_code == 503 and r.json()["error"]["code"] == "plugin_unavailable"
            assert (await api.client.post("/api/v1/plugins/stats/start")).status_code == 200
            assert (await api.client.post("/api/v1/plugins/broken/start")).status_code == 409
            events = [json.loads(await asyncio.wait_for(ws.recv(), 30)) for _ in range(2)]
            old_events = [json.loads(await asyncio.wait_for(old_ws.recv(), 30)) for _ in range(2)]
        assert events[0]["topic"] == "plugin.loaded" and events[0]["name"] == "stats"
        assert events[1]["topic"] == "plugin.load_failed" and events[1]["name"] == "broken"
        assert events[1]["phase"] == "import" and "inprocess_support_missing" in events[1]["error"]
        # The names of before, for the clients of before: the same events under them.
        assert [e["topic"] for e in old_events] == ["plugin-loaded", "plugin-failed"]
        assert [{k: v for k, v in e.items() if k != "topic"} for e in old_events] == [
            {k: v for k, v in e.items() if k != "topic"} for e in events
        ]
        assert (await api.client.get("/api/plugins/stats/summary")).status_code == 200
