"""Scaling through the admin API and ctl against a real headless supervisor: the count is validated, answered with
the replicas, remembered across a real restart of the supervisor process, and a SIGKILLed supervisor's replicas
are all cleaned up by the next run."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HeadlessProcess, plugin_processes, wait_until
from fixtures.api.harness import bearer
from test_ctl import ctl, one_line, start_supervisor

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

Headless = Callable[..., HeadlessProcess]
ENDPOINTS = [{"method": "GET", "path": "/whoami"}]


async def replicas_of(url: str, token: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{url}/api/v1/plugins/web", headers=bearer(token))).json()
    return list(body["replicas"])


async def test_scale_over_the_api_is_validated_and_remembered_across_a_restart(
    headless: Headless, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("web", "replica_server.py", endpoints=ENDPOINTS)
    proc, url = await start_supervisor(headless)
    await proc.wait_state("web", "RUNNING")
    token = (settings.data_dir / "admin.token").read_text().strip()
    async with httpx.AsyncClient(base_url=url, headers=bearer(token), timeout=60) as client:
        assert (
            await client.post("/api/v1/plugins/web/scale", json={"replicas": 2}, headers={"Authorization": ""})
        ).status_code == 401
        for bad in ({"replicas": 0}, {"replicas": 65}, {"replicas": "3"}, {"replicas": True}, {}, {"replicas": 2.5}):
            resp = await client.post("/api/v1/plugins/web/scale", json=bad)
            assert resp.status_code == 422, (bad, resp.text)
            assert set(resp.json()["error"]) == {"code", "message"}
        resp = await client.post("/api/v1/plugins/nope/scale", json={"replicas": 2})
        assert resp.status_code == 404 and resp.json()["error"]["code"] == "plugin_not_found"
        assert len(await replicas_of(url, token)) == 1
        resp = await client.post("/api/v1/plugins/web/scale", json={"replicas": 3})
        assert resp.status_code == 200, resp.text
        assert [r["index"] for r in resp.json()["plugin"]["replicas"]] == [0, 1, 2]
        await wait_until(
            lambda: _all_running(replicas_of(url, token), 3),
        )
        listed = (await client.get("/api/v1/plugins")).json()["plugins"]
        web = next(p for p in listed if p["key"] == "web")
        assert web["state"] == "RUNNING" and web["detail"].startswith("3/3 replicas RUNNING")
        seen = {(await client.get("/api/plugins/web/whoami")).json()["replica"] for _ in range(6)}
        assert seen == {0, 1, 2}
    # ctl: a bad N is one line and exit 2; a good one scales.
    bad = ctl("--url", url, "--token", token, "scale", "web", "0", cwd=settings.base_dir)
    assert bad.returncode == 2 and "N must be from 1 to 64" in one_line(bad.stderr)
    done = ctl("--url", url, "--token", token, "scale", "web", "2", cwd=settings.base_dir)
    assert done.returncode == 0, done.stderr
    assert "web: 2 replicas" in done.stdout
    status = ctl("--url", url, "--token", token, "status", cwd=settings.base_dir)
    assert "web#1" in status.stdout and "web#2" not in status.stdout
    # A real restart of the supervisor process: the operator's count is remembered.
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    proc, url = await start_supervisor(headless)
    await wait_until(lambda: _all_running(replicas_of(url, token), 2))
    assert len(await replicas_of(url, token)) == 2


async def test_the_replicas_of_a_killed_supervisor_are_cleaned_up_by_the_next_run(
    headless: Headless, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("web", "replica_server.py", endpoints=ENDPOINTS, replicas=3, env={"CHILD_PIDS": "children"})
    proc, url = await start_supervisor(headless)
    token = (settings.data_dir / "admin.token").read_text().strip()
    await wait_until(lambda: _all_running(replicas_of(url, token), 3))
    await wait_until(lambda: len(list((settings.plugins_dir / "web" / "children").glob("[0-9]"))) == 3)
    before = plugin_processes(settings.plugins_dir)
    assert len(before) == 6  # three replicas and their children
    os.kill(proc.pid, signal.SIGKILL)
    await proc.wait()
    proc, url = await start_supervisor(headless)
    await wait_until(lambda: _all_running(replicas_of(url, token), 3))
    await wait_until(lambda: all(not p.is_running() or p.status() == "zombie" for p in before))


async def _all_running(replicas: Any, n: int) -> bool:
    listed = await replicas
    return len(listed) == n and all(r["state"] == "RUNNING" for r in listed)
