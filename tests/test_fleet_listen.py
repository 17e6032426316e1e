"""Seed 000's plugins joining over a real redis-server: the three messages byte for byte, LOST and back, what is
refused, Redis killed and restarted mid-test, and a supervisor restart keeping the registrations."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import wait_until
from fixtures.api.harness import Api, running_api, upstream
from fixtures.fleet.redis_server import RedisServer, needs_redis

from supervisor_tui.config import Settings
from supervisor_tui.core.events import RedisLinkChanged, RegistrationRefused

pytestmark = [needs_redis, pytest.mark.usefixtures("no_plugin_leftovers")]

FLEET_DOC = (Path(__file__).resolve().parent.parent / "docs" / "fleet.md").read_text(encoding="utf-8")
ENDPOINTS = '[{"method":"GET","path":"/invoices/{id}"}]'


def registered(key: str, port: str, timestamp: int = 1732268400000) -> str:
    """What seed 000's registerPlugin publishes: JSON.stringify of its object, fields in its order."""
    return (
        f'{{"key":"{key}","name":"Billing","version":"1.0.0","port":{port},"endpoints":{ENDPOINTS},'
        f'"timestamp":{timestamp}}}'
    )


def heartbeat(key: str) -> str:
    return f'{{"key":"{key}","timestamp":1732268430000,"status":"alive"}}'


def unregistered(key: str) -> str:
    return f'{{"key":"{key}","timestamp":1732268460000}}'


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    with RedisServer(tmp_path) as server:
        yield server


@pytest.fixture
def fleet_settings(make_settings: Callable[..., Settings], redis_server: RedisServer) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        return make_settings(**{"redis.url": redis_server.url, "fleet.node": "node-a", **overrides})

    return make


async def subscribed(api: Api, server: RedisServer) -> None:
    """The node's link is up and subscribed (PUBLISH reaches it from here on)."""
    fleet = api.runtime.fleet
    assert fleet is not None
    await wait_until(lambda: fleet.link.up and server.subscribers("plugin:heartbeat") >= 1, timeout=20)


async def plugin_state(api: Api, key: str) -> str | None:
    r = await api.client.get(f"/api/v1/plugins/{key}")
    return str(r.json()["state"]) if r.status_code == 200 else None


async def metric(api: Api, name: str, **labels: str) -> float:
    text = (await api.client.get("/metrics")).text
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}(?:_total)?{re.escape('{' + want + '}') if want else ''} (\S+)$"
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.mark.parametrize("port_form", ["string", "number"])
async def test_seed_000_messages_byte_for_byte(
    fleet_settings: Callable[..., Settings], redis_server: RedisServer, port_form: str
) -> None:
    async with running_api(fleet_settings()) as api:
        await subscribed(api, redis_server)
        with upstream() as up:
            port = f'"{up.port}"' if port_form == "string" else str(up.port)
            assert redis_server.publish("plugin:registered", registered("billing", port)) == 1
            await wait_until(lambda: plugin_state(api, "billing"), timeout=10)
            plugin = await api.plugin("billing")
            assert plugin["kind"] == "external" and plugin["state"] == "RUNNING" and plugin["version"] == "1.0.0"
            assert plugin["upstream"] == f"http://127.0.0.1:{up.port}"  # redis.default_host: seed 000 sends no host
            assert plugin["description"] == "external plugin (registered over redis)"
            r = await api.client.get("/api/plugins/billing/invoices/42")
            assert r.status_code == 200 and r.text == "upstream /invoices/42"
            r = await api.client.post("/api/plugins/billing/invoices/42")  # only declared endpoints
            assert r.status_code == 405
            redis_server.publish("plugin:heartbeat", heartbeat("billing"))
            redis_server.publish("plugin:unregistered", unregistered("billing"))
            await wait_until(lambda: _gone(api, "billing"), timeout=10)
            r = await api.client.get("/api/plugins/billing/invoices/42")
            assert r.status_code == 404
        assert await metric(api, "supervisor_redis_messages", channel="plugin:registered") == 1
        assert await metric(api, "supervisor_redis_messages", channel="plugin:heartbeat") == 1
        assert await metric(api, "supervisor_redis_messages", channel="plugin:unregistered") == 1
        assert await metric(api, "supervisor_redis_messages_refused", reason="unknown_key") == 0


async def _gone(api: Api, key: str) -> bool:
    return (await api.client.get(f"/api/v1/plugins/{key}")).status_code == 404


async def test_host_or_url_field_is_used_and_the_allowlist_applies(
    fleet_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    async with running_api(fleet_settings()) as api:
        await subscribed(api, redis_server)
        refused = api.runtime.sup.bus.subscribe(("registration",))
        with upstream() as up:
            redis_server.publish("plugin:registered", f'{{"key":"by-url","url":"http://localhost:{up.port}"}}')
            redis_server.publish("plugin:registered", f'{{"key":"by-host","host":"::1","port":{up.port}}}')
            await wait_until(lambda: plugin_state(api, "by-url"), timeout=10)
            await wait_until(lambda: plugin_state(api, "by-host"), timeout=10)
            assert (await api.plugin("by-url"))["upstream"] == f"http://localhost:{up.port}"
            assert (await api.plugin("by-host"))["upstream"] == f"http://[::1]:{up.port}"
            r = await api.client.get("/api/plugins/by-url/anything")
            assert r.status_code == 404  # declared endpoints only: it declared none
        redis_server.publish("plugin:registered", '{"key":"elsewhere","host":"10.9.8.7","port":80}')
        event = await wait_until(lambda: refused.get_nowait() or None, timeout=10)
        assert isinstance(event[0], RegistrationRefused) and event[0].key == "elsewhere"
        assert "not in gateway.upstream_allowlist" in event[0].reason
        assert await plugin_state(api, "elsewhere") is None
        lines = [r.message for r in api.runtime.sup.logs.tail(lines=500) if "elsewhere" in r.message]
        assert len(lines) == 1 and "refused" in lines[0], lines
        assert await metric(api, "supervisor_redis_messages_refused", reason="upstream_not_allowed") == 1


async def test_a_local_key_cannot_be_taken_over(
    fleet_settings: Callable[..., Settings], redis_server: RedisServer, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("web", "sleeper.py", autostart=False)
    async with running_api(fleet_settings()) as api:
        await subscribed(api, redis_server)
        with upstream() as up:
            redis_server.publish("plugin:registered", registered("web", str(up.port)))
            await wait_until(lambda: api.runtime.fleet and api.runtime.fleet.listener.refused["key_taken"], timeout=10)
            plugin = await api.plugin("web")
            assert plugin["kind"] == "process" and plugin["state"] == "STOPPED"
            assert up.connections == 0


async def test_silence_makes_it_lost_and_a_heartbeat_brings_it_back(
    fleet_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    async with running_api(fleet_settings(**{"redis.dead_after": 1.0})) as api:
        await subscribed(api, redis_server)
        with upstream() as up:
            redis_server.publish("plugin:registered", registered("billing", str(up.port)))
            await wait_until(lambda: plugin_state(api, "billing"), timeout=10)
            await api.wait_state("billing", "LOST", timeout=10)
            r = await api.client.get("/api/plugins/billing/invoices/1")
            assert r.status_code == 503 and r.headers["retry-after"] and r.json()["error"]["code"]
            redis_server.publish("plugin:heartbeat", heartbeat("billing"))
            await api.wait_state("billing", "RUNNING", timeout=10)
            r = await api.client.get("/api/plugins/billing/invoices/1")
            assert r.status_code == 200


MALFORMED: list[tuple[str, str, bytes]] = [
    ("not_json", "plugin:registered", b"registered billing on 3010"),
    ("no_key", "plugin:registered", b'{"name":"Billing","port":3010}'),
    ("wrong_type", "plugin:registered", b'{"key":7,"port":3010}'),
    ("wrong_type", "plugin:registered", b'{"key":"billing","port":"PORT"}'),
    ("wrong_type", "plugin:heartbeat", b'{"key":["billing"]}'),
    ("wrong_type", "plugin:unregistered", b'"billing"'),
    ("too_large", "plugin:registered", b'{"key":"billing","name":"' + b"x" * (1024 * 1024) + b'","port":3010}'),
    ("invalid", "plugin:registered", b'{"key":"billing","port":3010,"endpoints":[{"method":"FETCH","path":"/"}]}'),
    ("invalid", "plugin:registered", b'{"key":"Bad Key!","port":3010}'),
    ("unknown_key", "plugin:heartbeat", b'{"key":"never-registered","timestamp":1}'),
]


@pytest.mark.parametrize(("reason", "channel", "data"), MALFORMED, ids=[f"{m[0]}-{i}" for i, m in enumerate(MALFORMED)])
async def test_a_malformed_message_is_one_line_and_a_counter(
    fleet_settings: Callable[..., Settings], redis_server: RedisServer, reason: str, channel: str, data: bytes
) -> None:
    async with running_api(fleet_settings()) as api:
        await subscribed(api, redis_server)
        before = [p["key"] for p in (await api.client.get("/api/v1/plugins")).json()["plugins"]]
        logged = len(api.runtime.sup.logs.tail(lines=10_000))
        with redis.Redis(port=redis_server.port) as client:
            assert client.publish(channel, data) == 1
        await wait_until(lambda: metric(api, "supervisor_redis_messages_refused", reason=reason), timeout=10)
        new = [r for r in api.runtime.sup.logs.tail(lines=10_000)[logged:] if r.fields.get("event") != "plugin_state"]
        refusals = [r for r in new if r.fields.get("event") == "redis_message_refused"]
        assert len(refusals) == 1 and refusals[0].fields["reason"] == reason, [r.message for r in new]
        assert len(refusals[0].message) < 500  # the reason, not the message
        after = [p["key"] for p in (await api.client.get("/api/v1/plugins")).json()["plugins"]]
        assert after == before
        assert (await api.client.get("/api/v1/status")).json()["fleet"]["redis"] == "up"


async def test_redis_killed_and_restarted_mid_test(
    fleet_settings: Callable[..., Settings], redis_server: RedisServer, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("web", "http_server.py", endpoints=[{"method": "GET", "path": "/hi"}])
    async with running_api(fleet_settings()) as api:
        await subscribed(api, redis_server)
        changes = api.runtime.sup.bus.subscribe(("fleet",))
        with upstream() as up:
            redis_server.publish("plugin:registered", registered("billing", str(up.port)))
            await wait_until(lambda: plugin_state(api, "billing"), timeout=10)
            await api.wait_state("web", "RUNNING")
            redis_server.kill()
            await wait_until(lambda: _status(api, lambda f: f["redis"] == "down" and "redis_url" in f), timeout=20)
            # Routes keep working while Redis is away, local and registered ones.
            assert (await api.client.get("/api/plugins/billing/invoices/1")).status_code == 200
            assert (await api.client.get("/api/plugins/web/hi")).status_code == 200
            fleet = api.runtime.fleet
            assert fleet is not None
            await wait_until(lambda: fleet.link.failed_attempts >= 3, timeout=30)  # several attempts, one outage
            attempts_seen = fleet.link.outages
            with redis.Redis(port=redis_server.port) as late:  # a subscriber of ours to see the re-announcement
                redis_server.start()
                pubsub = late.pubsub()
                pubsub.subscribe("plugin:registered")
                await wait_until(lambda: _status(api, lambda f: f["redis"] == "up"), timeout=30)
                announced = await wait_until(lambda: _next_message(pubsub), timeout=30)
                assert announced["key"] == "web" and announced["node"] == "node-a"
            # Resubscribed: a new registration is heard.
            redis_server.publish("plugin:registered", registered("billing2", str(up.port)))
            await wait_until(lambda: plugin_state(api, "billing2"), timeout=10)
        downs = [r for r in api.runtime.sup.logs.tail(lines=10_000) if r.fields.get("event") == "redis_down"]
        assert len(downs) == 1 and fleet.link.outages == attempts_seen == 1  # one line per outage, not per attempt
        ups = [r for r in api.runtime.sup.logs.tail(lines=10_000) if r.fields.get("event") == "redis_up"]
        assert "reachable again" in ups[-1].message
        seen = [e.up for e in changes.get_nowait() if isinstance(e, RedisLinkChanged)]
        assert seen[:2] == [False, True]


async def _status(api: Api, check: Callable[[dict[str, Any]], bool]) -> bool:
    return check((await api.client.get("/api/v1/status")).json()["fleet"])


async def _next_message(pubsub: Any) -> dict[str, Any] | None:
    import json

    message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.05)
    return json.loads(message["data"]) if message else None


async def test_a_supervisor_restart_keeps_registrations(
    fleet_settings: Callable[..., Settings], redis_server: RedisServer
) -> None:
    settings = fleet_settings()
    with upstream() as up:
        async with running_api(settings) as api:
            await subscribed(api, redis_server)
            redis_server.publish("plugin:registered", registered("billing", f'"{up.port}"'))
            redis_server.publish("plugin:registered", registered("gone-soon", f'"{up.port}"'))
            await wait_until(lambda: plugin_state(api, "gone-soon"), timeout=10)
            redis_server.publish("plugin:unregistered", unregistered("gone-soon"))
            await wait_until(lambda: _gone(api, "gone-soon"), timeout=10)
            assert await plugin_state(api, "billing") == "RUNNING"
        async with running_api(settings) as api:
            plugin = await api.plugin("billing")
            assert plugin["state"] == "LOST" and "restored" in plugin["detail"]
            assert await plugin_state(api, "gone-soon") is None
            r = await api.client.get("/api/plugins/billing/invoices/5")
            assert r.status_code == 503 and "retry-after" in r.headers
            await subscribed(api, redis_server)
            redis_server.publish("plugin:heartbeat", heartbeat("billing"))
            await api.wait_state("billing", "RUNNING", timeout=10)
            r = await api.client.get("/api/plugins/billing/invoices/5")
            assert r.status_code == 200 and r.text == "upstream /invoices/5"


async def test_status_without_redis_says_off(make_settings: Callable[..., Settings]) -> None:
    async with running_api(make_settings()) as api:
        assert api.runtime.fleet is None
        assert (await api.client.get("/api/v1/status")).json()["fleet"]["redis"] == "off"
        r = await api.client.get("/api/v1/fleet/nodes")
        assert r.status_code == 404 and r.json()["error"]["code"] == "fleet_off"


async def test_the_redis_password_is_never_shown(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with RedisServer(tmp_path, password="s3cret-pw") as server:
        url = f"redis://default:s3cret-pw@127.0.0.1:{server.port}/0"
        async with running_api(make_settings(**{"redis.url": url})) as api:
            await subscribed(api, server)
            status = (await api.client.get("/api/v1/status")).json()["fleet"]
            assert status["redis"] == "up" and status["redis_url"] == f"redis://default:***@127.0.0.1:{server.port}/0"
            server.kill()
            await wait_until(lambda: _status(api, lambda f: f["redis"] == "down"), timeout=20)
            texts = [r.message for r in api.runtime.sup.logs.tail(lines=10_000)]
            assert any("***@" in t for t in texts) and not any("s3cret-pw" in t for t in texts)
            metrics = (await api.client.get("/metrics")).text
            assert "s3cret-pw" not in metrics


async def test_the_acl_user_docs_fleet_md_gives_is_enough(
    make_settings: Callable[..., Settings], make_plugin: Callable[..., Path], tmp_path: Path
) -> None:
    acl = next(line.strip() for line in FLEET_DOC.splitlines() if line.strip().startswith("ACL SETUSER fleet"))
    make_plugin("web", "http_server.py", endpoints=[{"method": "GET", "path": "/hi"}])
    with RedisServer(tmp_path) as server:
        server.cli(*acl.split())
        server.cli("ACL", "SETUSER", "default", "off")
        url = f"redis://fleet:CHANGE-ME@127.0.0.1:{server.port}/0"
        async with running_api(make_settings(**{"redis.url": url, "fleet.node": "node-a"})) as api:
            fleet = api.runtime.fleet
            assert fleet is not None
            await api.wait_state("web", "RUNNING")
            await wait_until(lambda: fleet.link.up, timeout=20)
            await wait_until(lambda: fleet.announcer.published >= 1, timeout=20)
            nodes = (await api.client.get("/api/v1/fleet/nodes")).json()["nodes"]
            assert [n["node"] for n in nodes] == ["node-a"]
            assert await fleet.presence.refresh() and await fleet.announcer.lookup("node-a", "web") is not None
            assert not [r for r in api.runtime.sup.logs.tail(lines=5000) if r.fields.get("event") == "redis_down"]
