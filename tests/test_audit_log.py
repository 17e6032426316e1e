"""audit-log: one JSON line per operator action (who, what, from where: API, ctl, TUI) and per state transition,
in data/audit.jsonl, rotated."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import make_test_settings, wait_until, write_plugin
from fixtures.api.harness import running_api

from supervisor_tui.tui.client_local import InProcessClient

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

AUDIT = "supervisor_tui.inprocess_plugins.audit_log:AuditLog"


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


async def ctl(url: str, token: str, *args: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_TUI_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "supervisor_tui",
        "ctl",
        "--url",
        url,
        "--token",
        token,
        *args,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
    )
    return await proc.wait()


async def test_actions_from_api_ctl_and_tui_and_transitions_are_recorded(tmp_path: Path) -> None:
    settings = make_test_settings(tmp_path, **{"plugins.watch": False})
    settings.tables["inprocess"] = {"audit-log": {"module": AUDIT}}
    write_plugin(settings.plugins_dir, "web", "sleeper.py")
    path = settings.data_dir / "audit.jsonl"
    async with running_api(settings) as api:
        assert (await api.client.post("/api/v1/plugins/web/stop")).status_code == 200
        assert await ctl(api.url, api.admin_token, "start", "web") == 0
        client = InProcessClient(api.runtime.sup, api.url)
        try:
            await client.restart("web")
        finally:
            await client.close()
        r = await api.client.post("/api/v1/plugins/nope/start")
        assert r.status_code == 404
        assert (await api.client.put("/api/v1/plugins/web/config", json={"env": {"PORT": "1"}})).status_code == 422
        await wait_until(lambda: len([r for r in records(path) if r["type"] == "action"]) == 4)
    lines = records(path)
    actions = [(r["action"], r["key"], r["origin"], r["ok"]) for r in lines if r["type"] == "action"]
    assert actions == [
        ("stop", "web", "api", True),
        ("start", "web", "ctl", True),
        ("restart", "web", "tui", True),
        ("set_config", "web", "api", False),
    ]
    by_origin = {r["origin"]: r for r in lines if r["type"] == "action"}
    user = getpass.getuser()
    assert by_origin["ctl"]["actor"].startswith(user) and "127.0.0.1" in by_origin["ctl"]["actor"]
    assert by_origin["tui"]["actor"] == user
    assert by_origin["api"]["actor"] == "127.0.0.1"
    assert "PORT is set by the supervisor" in lines[[r.get("action") for r in lines].index("set_config")]["detail"]
    transitions = [(r["from"], r["to"]) for r in lines if r["type"] == "plugin.state" and r["key"] == "web"]
    # The audit log starts before the plugins do: their autostart is in it too.
    assert transitions[:4] == [
        ("STOPPED", "STARTING"),
        ("STARTING", "RUNNING"),
        ("RUNNING", "STOPPING"),
        ("STOPPING", "STOPPED"),
    ]
    assert ("STOPPED", "STARTING") in transitions and transitions[-1] == ("STOPPING", "STOPPED")  # shutdown
    assert all(isinstance(r["ts"], float) for r in lines)


async def test_the_audit_file_is_rotated(tmp_path: Path) -> None:
    settings = make_test_settings(tmp_path, **{"plugins.watch": False})
    settings.tables["inprocess"] = {
        "audit-log": {"module": AUDIT, "config": {"path": "audit/trail.jsonl", "max_bytes": 700, "backups": 2}}
    }
    write_plugin(settings.plugins_dir, "web", "sleeper.py")
    path = tmp_path / "audit" / "trail.jsonl"  # relative paths are from the settings' base dir
    async with running_api(settings) as api:
        for _ in range(4):
            assert (await api.client.post("/api/v1/plugins/web/restart")).status_code == 200
        await wait_until(lambda: path.with_name("trail.jsonl.2").exists())
        status = next(
            p["status"]
            for p in (await api.client.get("/api/v1/inprocess-plugins")).json()["plugins"]
            if p["key"] == "audit-log"
        )
        assert status["path"] == str(path) and status["lines"] >= 10
    files = [path, path.with_name("trail.jsonl.1"), path.with_name("trail.jsonl.2")]
    assert not path.with_name("trail.jsonl.3").exists()
    for f in files:
        assert f.stat().st_size <= 700
        assert all(json.loads(line)["ts"] for line in f.read_text().splitlines())
