"""webhook-alerts against a real local HTTP receiver: down first (retries with backoff), then up (delivered), alerts
and recoveries with a Slack-compatible text field, configured from a real supervisor.toml."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import FIXTURE_PLUGINS, make_test_settings, wait_until, write_plugin
from fixtures.api.harness import Api, bearer, running_api
from fixtures.ports import free_port

from supervisor_tui.config import FIELDS, load_settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")


class Receiver:
    """A webhook receiver on 127.0.0.1:<port> in the test's loop; ``messages`` holds the JSON bodies received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[dict[str, Any]] = []
        self._runner: web.AppRunner | None = None

    async def _hook(self, request: web.Request) -> web.Response:
        self.messages.append(await request.json())
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver(free_port())
    yield r
    await r.stop()


async def webhook_status(api: Api) -> dict[str, Any]:
    body = (await api.client.get("/api/v1/inprocess-plugins")).json()
    return next(p for p in body["plugins"] if p["key"] == "webhook-alerts")["status"]


async def test_alerts_are_retried_while_the_receiver_is_down_then_delivered(tmp_path: Path, receiver: Receiver) -> None:
    (tmp_path / "supervisor.toml").write_text(
        f"""
[inprocess.webhook-alerts]
enabled = true
module = "supervisor_tui.inprocess_plugins.webhook_alerts:WebhookAlerts"
config = {{ urls = ["http://127.0.0.1:{receiver.port}/hook"], retries = 1000, backoff = "50ms", backoff_max = "200ms" }}
""",
        encoding="utf-8",
    )
    base = make_test_settings(tmp_path, **{"plugins.watch": False})
    settings = load_settings(
        tmp_path / "supervisor.toml",
        env={},
        overrides={f.name: f.value_in(base) for f in FIELDS if base.sources[f.name] == "flag"},
        base_dir=tmp_path,
    )
    write_plugin(settings.plugins_dir, "bad", "crash_at_start.py", startretries=0)
    assert (FIXTURE_PLUGINS / "crash_at_start.py").exists()
    async with running_api(settings) as api:
        assert (await api.plugin("bad"))["state"] == "FATAL"
        # Nobody listens yet: the alert waits in the queue and is retried with backoff.
        await wait_until(lambda: _retried(api))
        status = await webhook_status(api)
        assert status["sent"] == 0 and status["queued"] == 1 and "ConnectError" in status["last_error"]
        assert status["alerting"] == ["plugin:bad:fatal"]
        await receiver.start()
        await wait_until(lambda: len(receiver.messages) == 1)
        fatal = receiver.messages[0]
        assert fatal["event"] == "plugin.fatal" and fatal["severity"] == "alert" and fatal["id"] == "bad"
        assert isinstance(fatal["text"], str) and "*bad*" in fatal["text"] and "FATAL" in fatal["text"]

        # A console in error, then back: an alert and its recovery, in that order.
        r = await api.client.post(
            "/api/consoles/register", json={"id": "w1", "name": "W1", "state": "idle", "system": {}}
        )
        token = r.json()["token"]
        hb = {"state": "error", "system": {}, "last_activity": "2025-12-03T10:30:00Z", "last_error": "disk full"}
        assert (await api.client.post("/api/consoles/w1/heartbeat", json=hb, headers=bearer(token))).status_code == 200
        hb.update(state="busy", last_error=None)
        assert (await api.client.post("/api/consoles/w1/heartbeat", json=hb, headers=bearer(token))).status_code == 200
        await wait_until(lambda: len(receiver.messages) == 3)
        events = [(m["event"], m["severity"], m["id"]) for m in receiver.messages[1:]]
        assert events == [("console.error", "alert", "w1"), ("console.recovered", "recovered", "w1")]
        assert "w1" in receiver.messages[2]["text"] and "recovered" in receiver.messages[2]["text"]
        status = await webhook_status(api)
        assert status["sent"] == 3 and status["failed"] == 0 and status["queued"] == 0
        assert status["alerting"] == ["plugin:bad:fatal"]


async def _retried(api: Api) -> bool:
    return int((await webhook_status(api)).get("retries", 0)) >= 2


async def test_a_receiver_that_never_answers_blocks_nothing_and_the_queue_is_bounded(tmp_path: Path) -> None:
    held: list[asyncio.StreamWriter] = []
    release = asyncio.Event()

    async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accept the request, never answer it
        await release.wait()
        writer.close()

    server = await asyncio.start_server(hang, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = make_test_settings(tmp_path, **{"plugins.watch": False})
    settings.tables["inprocess"] = {
        "webhook-alerts": {
            "module": "supervisor_tui.inprocess_plugins.webhook_alerts:WebhookAlerts",
            "config": {"urls": [f"http://127.0.0.1:{port}/hook"], "timeout": "60s", "queue_size": 2},
        }
    }
    try:
        async with running_api(settings) as api:
            r = await api.client.post(
                "/api/consoles/register", json={"id": "w1", "name": "W1", "state": "idle", "system": {}}
            )
            token = r.json()["token"]
            hb = {"state": "error", "system": {}, "last_activity": "2025-12-03T10:30:00Z", "last_error": "x"}
            for state in ("error", "busy", "error", "busy", "error", "busy"):
                hb["state"] = state
                r = await api.client.post("/api/consoles/w1/heartbeat", json=hb, headers=bearer(token))
                assert r.status_code == 200  # heartbeats never wait for webhooks
            # 6 messages: the first is stuck in flight, the queue holds 2, so the 4 oldest are dropped.
            await wait_until(lambda: _dropped(api, 4))
            status = await webhook_status(api)
            assert status["queued"] == 2 and status["sent"] == 0 and len(held) == 1
            assert (await api.client.get("/health")).status_code == 200
    finally:
        release.set()
        server.close()
        await server.wait_closed()


async def _dropped(api: Api, n: int) -> bool:
    return int((await webhook_status(api))["dropped"]) == n


async def test_an_unhealthy_plugin_alerts_and_its_recovery_follows(tmp_path: Path, receiver: Receiver) -> None:
    await receiver.start()
    settings = make_test_settings(tmp_path, **{"plugins.watch": False})
    settings.tables["inprocess"] = {
        "webhook-alerts": {
            "module": "supervisor_tui.inprocess_plugins.webhook_alerts:WebhookAlerts",
            "config": {"urls": [f"http://127.0.0.1:{receiver.port}/hook"]},
        }
    }
    sick = tmp_path / "sick"
    write_plugin(
        settings.plugins_dir,
        "wobbly",
        "http_server.py",
        env={"HEALTH_FAIL_FILE": str(sick)},
        health={"path": "/health", "interval_s": 0.1, "failures": 2},
    )
    async with running_api(settings) as api:
        assert (await api.plugin("wobbly"))["state"] == "RUNNING"
        sick.write_text("x")  # the plugin's /health answers 500 from now on
        await wait_until(lambda: len(receiver.messages) == 1)
        alert = receiver.messages[0]
        assert (alert["event"], alert["severity"], alert["id"]) == ("plugin.unhealthy", "alert", "wobbly")
        assert "*wobbly*" in alert["text"] and "unhealthy" in alert["text"]
        assert (await webhook_status(api))["alerting"] == ["plugin:wobbly:unhealthy"]
        sick.unlink()
        await wait_until(lambda: len(receiver.messages) == 2)
        recovered = receiver.messages[1]
        assert (recovered["event"], recovered["severity"], recovered["id"]) == ("plugin.healthy", "recovered", "wobbly")
        assert "healthy again" in recovered["text"]
        status = await webhook_status(api)
        assert status["alerting"] == [] and status["sent"] == 2
