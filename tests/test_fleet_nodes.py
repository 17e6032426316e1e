"""This node speaking seed 000 (announcements a seed 000 gateway understands), presence, and two supervisors on one
real redis-server routing to each other's plugins gateway to gateway."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import HeadlessProcess, make_test_settings, wait_until, write_plugin
from fixtures.api.harness import running_api
from fixtures.fleet.redis_server import RedisServer, needs_redis

from supervisor_tui.config import Settings

pytestmark = [needs_redis, pytest.mark.usefixtures("no_plugin_leftovers")]

# A plugin that answers every GET with its key and the request headers it received (JSON).
ECHO_HEADERS = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        body = json.dumps({"key": os.environ["PLUGIN_KEY"], "node": os.environ.get("NODE_NAME", ""), "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""
ECHO_ENDPOINTS = [{"method": "GET", "path": "/echo"}, {"method": "GET", "path": "/items/{id}"}]


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    with RedisServer(tmp_path) as server:
        yield server


class Messages:
    """A redis-py subscriber of seed 000's channels, as a seed 000 gateway would be."""

    def __init__(self, server: RedisServer) -> None:
        self.client = redis.Redis(port=server.port)
        self.pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe("plugin:registered", "plugin:heartbeat", "plugin:unregistered")
        self.seen: list[tuple[str, bytes]] = []

    def poll(self) -> list[tuple[str, bytes]]:
        while (m := self.pubsub.get_message(timeout=0.01)) is not None:
            if m["type"] == "message":
                self.seen.append((m["channel"].decode(), m["data"]))
        return self.seen

    def on(self, channel: str, key: str) -> list[dict[str, Any]]:
        decoded = [json.loads(d) for c, d in self.poll() if c == channel]
        return [m for m in decoded if m.get("key") == key]

    def close(self) -> None:
        self.pubsub.close()
        self.client.close()


async def test_local_plugins_are_announced_as_seed_000_messages(
    make_settings: Callable[..., Settings], make_plugin: Callable[..., Path], redis_server: RedisServer
) -> None:
    make_plugin("web", ECHO_HEADERS, name="Web", version="2.1.0", endpoints=ECHO_ENDPOINTS)
    settings = make_settings(**{"redis.url": redis_server.url, "fleet.node": "node-a", "redis.heartbeat_interval": 0.3})
    messages = Messages(redis_server)
    try:
        async with running_api(settings) as api:
            plugin = await api.wait_state("web", "RUNNING")
            announced = await wait_until(lambda: messages.on("plugin:registered", "web"), timeout=20)
            message = announced[-1]
            assert set(message) == {"key", "name", "version", "port", "endpoints", "timestamp", "url", "node"}
            assert (message["key"], message["name"], message["version"]) == ("web", "Web", "2.1.0")
            assert message["port"] == plugin["port"] and isinstance(message["port"], int)
            assert message["endpoints"] == [{**e, "description": ""} for e in ECHO_ENDPOINTS]
            assert message["url"] == f"{api.url}/api/plugins/web" and message["node"] == "node-a"
            assert isinstance(message["timestamp"], int) and message["timestamp"] > 1_700_000_000_000  # Date.now()
            # What a seed 000 gateway does with it works: the url answers the declared endpoints.
            async with httpx.AsyncClient() as plain:
                r = await plain.get(f"{message['url']}/echo")
                assert r.status_code == 200 and r.json()["key"] == "web"
            beats = await wait_until(lambda: len(messages.on("plugin:heartbeat", "web")) >= 2 or None, timeout=20)
            assert beats
            beat = messages.on("plugin:heartbeat", "web")[-1]
            assert (
                beat["status"] == "alive"
                and beat["node"] == "node-a"
                and set(beat)
                == {
                    "key",
                    "timestamp",
                    "status",
                    "node",
                }
            )
            r = await api.client.post("/api/v1/plugins/web/stop")
            assert r.status_code in (200, 202)
            gone = await wait_until(lambda: messages.on("plugin:unregistered", "web"), timeout=20)
            assert gone[-1]["node"] == "node-a"
            # Our own messages came back to us: not registered as external plugins of ours.
            assert (await api.plugin("web"))["kind"] == "process"
            nodes = (await api.client.get("/api/v1/fleet/nodes")).json()["nodes"]
            assert [(n["node"], n["status"], n["this_node"]) for n in nodes] == [("node-a", "up", True)]
            # plugin:unregistered goes out as the plugin leaves RUNNING, so a refresh of the record may yet show
            # it STOPPING; the refresh after the stop is done shows it STOPPED.
            record = await wait_until(
                lambda: (
                    (r := json.loads(redis_server.cli("GET", "fleet:node:node-a")))["plugins"] == {"STOPPED": 1} and r
                ),
                timeout=20,
                failure=lambda: (
                    f"the record never showed the plugin STOPPED: {redis_server.cli('GET', 'fleet:node:node-a')}"
                ),
            )
            assert record["node"] == "node-a" and record["advertise_url"] == api.url
            assert 0 < int(redis_server.cli("TTL", "fleet:node:node-a")) <= 180  # expires by itself
    finally:
        messages.close()
    assert redis_server.cli("EXISTS", "fleet:node:node-a").strip() == "0"  # withdrawn at shutdown


async def test_announce_false_publishes_nothing(
    make_settings: Callable[..., Settings], make_plugin: Callable[..., Path], redis_server: RedisServer
) -> None:
    make_plugin("web", ECHO_HEADERS, endpoints=ECHO_ENDPOINTS)
    settings = make_settings(
        **{"redis.url": redis_server.url, "redis.announce": False, "redis.heartbeat_interval": 0.2}
    )
    messages = Messages(redis_server)
    try:
        async with running_api(settings) as api:
            await api.wait_state("web", "RUNNING")
            fleet = api.runtime.fleet
            assert fleet is not None
            await wait_until(lambda: fleet.link.up, timeout=20)
            await asyncio.sleep(0.6)  # three heartbeat intervals in which nothing may be published
            assert messages.poll() == []
    finally:
        messages.close()


# -- two supervisors ---------------------------------------------------------------------------------------------


class Node:
    """A headless supervisor in its own folder, with its own supervisor.toml."""

    def __init__(self, root: Path, name: str, redis_url: str, **plugins: list[dict[str, str]]) -> None:
        root.mkdir(parents=True)
        self.name = name
        self.settings = make_test_settings(root)
        for key, endpoints in plugins.items():
            write_plugin(self.settings.plugins_dir, key, ECHO_HEADERS, endpoints=endpoints, env={"NODE_NAME": name})
        (root / "supervisor.toml").write_text(
            f'[redis]\nurl = "{redis_url}"\ndead_after = "1.5s"\nheartbeat_interval = "0.3s"\n'
            f'[fleet]\nnode = "{name}"\n',
            encoding="utf-8",
        )
        self.proc: HeadlessProcess | None = None
        self.url = ""
        self.token = ""

    async def start(self) -> None:
        self.proc = HeadlessProcess(self.settings, ())
        listening = await self.proc.wait_for(lambda r: r.get("event") == "api_listening")
        self.url = listening["url"]
        self.token = (self.settings.data_dir / "admin.token").read_text().strip()
        await self.proc.wait_for(lambda r: r.get("event") == "redis_up")

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.proc.poll() is None:
            self.proc.signal(sig)
            self.proc.proc.wait(30)


@pytest.fixture
def nodes(tmp_path: Path, redis_server: RedisServer) -> Any:
    made: list[Node] = []

    def make(name: str, **plugins: list[dict[str, str]]) -> Node:
        node = Node(tmp_path / name, name, redis_server.url, **plugins)
        made.append(node)
        return node

    yield make
    for node in made:
        node.stop()


async def _state(client: httpx.AsyncClient, key: str) -> str | None:
    r = await client.get(f"/api/v1/plugins/{key}")
    return str(r.json()["state"]) if r.status_code == 200 else None


async def test_two_supervisors_reach_each_others_plugins(nodes: Callable[..., Node]) -> None:
    a = nodes("node-a", alpha=ECHO_ENDPOINTS, shared=ECHO_ENDPOINTS)
    b = nodes("node-b", beta=ECHO_ENDPOINTS, shared=ECHO_ENDPOINTS)
    await a.start()
    await b.start()
    async with a.client() as ca, b.client() as cb:
        await wait_until(lambda: _is(cb, "alpha", "RUNNING"), timeout=30)
        await wait_until(lambda: _is(ca, "beta", "RUNNING"), timeout=30)
        # B forwards to A's gateway: the plugin stays on A's loopback; the path is the same on every node.
        async with httpx.AsyncClient(base_url=b.url) as anonymous:  # a gateway client: no admin token
            r = await anonymous.get("/api/plugins/alpha/items/7", headers={"X-Request-ID": "req-77"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["key"] == "alpha" and body["path"] == "/items/7"
        assert body["headers"]["x-request-id"] == "req-77" and r.headers["x-request-id"] == "req-77"
        assert body["headers"]["x-forwarded-for"].startswith("127.0.0.1")
        assert "authorization" not in body["headers"]  # node-to-node forwarding adds no token
        r = await ca.get("/api/plugins/beta/echo")
        assert r.status_code == 200 and r.json()["key"] == "beta"
        listed = {p["key"]: p for p in (await cb.get("/api/v1/plugins")).json()["plugins"]}
        assert listed["alpha"]["node"] == "node-a" and listed["beta"]["node"] == ""
        assert listed["alpha"]["upstream"] == f"{a.url}/api/plugins/alpha"
        # A key both nodes serve: one route, both upstreams, round robin; the listing says who serves it.
        await wait_until(lambda: _served_by(cb, "shared", 2), timeout=30)
        shared = (await cb.get("/api/v1/plugins/shared")).json()
        assert [(u["node"], u["up"], u["remote"]) for u in shared["upstreams"]] == [
            ("node-b", True, False),
            ("node-a", True, True),
        ]
        answered = [(await cb.get("/api/plugins/shared/echo")).json()["node"] for _ in range(6)]
        assert sorted(set(answered)) == ["node-a", "node-b"] and answered.count("node-a") == 3
        # A request that already crossed one node is never forwarded again: served here, or 508.
        hop = {"X-Supervisor-Hop": "1"}
        assert {(await cb.get("/api/plugins/shared/echo", headers=hop)).json()["node"] for _ in range(4)} == {"node-b"}
        r = await cb.get("/api/plugins/alpha/echo", headers=hop)
        assert r.status_code == 508 and r.json()["error"]["code"] == "forwarding_loop"
        # Both nodes see both nodes.
        seen = (await cb.get("/api/v1/fleet/nodes")).json()["nodes"]
        assert [(n["node"], n["status"], n["this_node"]) for n in seen] == [
            ("node-b", "up", True),
            ("node-a", "up", False),
        ]
        assert seen[1]["advertise_url"] == a.url and seen[1]["plugins"] == {"RUNNING": 2}
        out = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "supervisor_tui", "ctl", "--url", b.url, "--token", b.token, "fleet"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0].split()[:3] == ["NODE", "STATUS", "LAST"]
        assert lines[1].startswith("node-b *") and " up " in lines[1] and "2 RUNNING" in lines[1]
        assert lines[2].startswith("node-a") and a.url in lines[2]
        # Node A goes silent (frozen): its plugins answer 503 on B once it is silent for dead_after, and A is lost.
        assert a.proc is not None
        a.proc.signal(signal.SIGSTOP)
        await wait_until(lambda: _is(cb, "alpha", "LOST"), timeout=30)
        r = await cb.get("/api/plugins/alpha/echo")
        assert r.status_code == 503 and "retry-after" in r.headers
        seen = (await cb.get("/api/v1/fleet/nodes")).json()["nodes"]
        assert [(n["node"], n["status"]) for n in seen] == [("node-b", "up"), ("node-a", "lost")]
        shared = (await cb.get("/api/v1/plugins/shared")).json()
        assert [(u["node"], u["up"]) for u in shared["upstreams"]] == [("node-b", True), ("node-a", False)]
        assert {(await cb.get("/api/plugins/shared/echo")).json()["node"] for _ in range(4)} == {"node-b"}
        a.proc.signal(signal.SIGCONT)
        # A comes back: its heartbeats restore the route on B.
        await wait_until(lambda: _is(cb, "alpha", "RUNNING"), timeout=30)
        assert (await cb.get("/api/plugins/alpha/echo")).status_code == 200


async def _served_by(client: httpx.AsyncClient, key: str, places: int) -> bool:
    r = await client.get(f"/api/v1/plugins/{key}")
    return r.status_code == 200 and len([u for u in r.json()["upstreams"] if u["up"]]) == places


async def _is(client: httpx.AsyncClient, key: str, state: str) -> bool:
    return await _state(client, key) == state


async def test_another_nodes_plugin_comes_back_lost_after_a_restart_then_running(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    common = {"redis.url": redis_server.url, "redis.heartbeat_interval": 0.3}
    settings_a = make_test_settings(tmp_path / "a", **common, **{"fleet.node": "node-a"})
    settings_b = make_test_settings(tmp_path / "b", **common, **{"fleet.node": "node-b"})
    write_plugin(settings_a.plugins_dir, "alpha", ECHO_HEADERS, endpoints=ECHO_ENDPOINTS)
    async with running_api(settings_a) as a:
        await a.wait_state("alpha", "RUNNING")
        async with running_api(settings_b) as b:
            # learnt from a heartbeat and fleet:plugins:node-a
            await wait_until(lambda: _is(b.client, "alpha", "RUNNING"), timeout=20)
            assert (await b.client.get("/api/plugins/alpha/echo")).json()["key"] == "alpha"
        # B restarts while Redis is down: the registration comes from its database, LOST until a heartbeat.
        redis_server.kill()
        async with running_api(settings_b) as b:
            plugin = await b.plugin("alpha")
            assert plugin["state"] == "LOST" and plugin["node"] == "node-a"
            assert (await b.client.get("/api/plugins/alpha/echo")).status_code == 503
            redis_server.start()
            await b.wait_state("alpha", "RUNNING", timeout=30)
            assert (await b.client.get("/api/plugins/alpha/items/3")).json()["path"] == "/items/3"
