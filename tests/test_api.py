"""The admin API and the HTTP server as clients use them: a real Runtime on 127.0.0.1, real plugin processes,
real sockets; readiness and a port in use with the real `supervisor-tui --headless` process."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import websockets
from conftest import HeadlessProcess, SharedHeadless, plugin_processes, spawns, wait_until
from fixtures.api.harness import REPORTER, REPORTER_ENDPOINTS, REPORTER_HEALTH, Api, bearer, running_api, shared_api

from supervisor_tui.config import Settings
from supervisor_tui.runtime import Runtime

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

MakePlugin = Callable[..., Path]


def is_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The response has ``status`` and the one error shape; returns the error object."""
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return dict(body["error"])


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def reporter(make_plugin: MakePlugin, key: str, **fields: Any) -> Path:
    return make_plugin(key, str(REPORTER), endpoints=REPORTER_ENDPOINTS, **{"health": REPORTER_HEALTH, **fields})


# -- the server itself ---------------------------------------------------------------------------------------------
async def test_health_openapi_docs_and_unknown_routes(shared_headless: SharedHeadless) -> None:
    async with shared_api(shared_headless) as api:
        async with httpx.AsyncClient(base_url=api.url) as anonymous:
            r = await anonymous.get("/health")
            assert r.status_code == 200 and r.json() == {"status": "ok"}
            r = await anonymous.get("/ready")
            assert r.status_code == 200 and r.json()["ready"] is True
            r = await anonymous.get("/openapi.json")
            assert r.status_code == 200
            paths = r.json()["paths"]
            assert {"/health", "/ready", "/api/v1/plugins", "/api/v1/plugins/{key}/start", "/metrics"} <= set(paths)
            assert "/api/consoles/{consoleId}/heartbeat" in paths  # the console API is documented too
            r = await anonymous.get("/docs")
            assert r.status_code == 200 and "text/html" in r.headers["content-type"]
            assert "/openapi.json" in r.text
            is_error(await anonymous.get("/no/such/route"), 404, "not_found")
        is_error(await api.client.get("/api/v1/nothing-here"), 404, "not_found")
        is_error(await api.client.delete("/api/v1/status"), 405, "method_not_allowed")


async def test_docs_page_and_its_assets_are_served_from_this_host(shared_headless: SharedHeadless) -> None:
    async with shared_api(shared_headless) as api, httpx.AsyncClient(base_url=api.url) as anonymous:
        page = await anonymous.get("/docs")  # no token, like /openapi.json
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        # Nothing the page loads comes from another host: it works on a server without internet.
        assert not re.search(r"(https?:)?//", page.text), page.text
        urls = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
        expected = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
        assert {Path(u).suffix for u in urls} == set(expected), urls
        for url in urls:
            r = await anonymous.get(url)
            assert r.status_code == 200 and r.content, (url, r.status_code)
            assert expected[Path(url).suffix] in r.headers["content-type"], (url, r.headers["content-type"])
        assert "SwaggerUIBundle" in (await anonymous.get(next(u for u in urls if u.endswith(".js")))).text
        is_error(await anonymous.get("/docs/assets/no-such-file.js"), 404, "not_found")
        assert (await anonymous.get("/redoc")).status_code == 404  # off: one browsable page


async def test_allow_header_lists_every_method_of_a_path(shared_headless: SharedHeadless) -> None:
    async with shared_api(shared_headless) as api:  # it has a plugin "web"
        r = await api.client.request("PATCH", "/api/v1/plugins/web")
        is_error(r, 405, "method_not_allowed")
        assert sorted(m.strip() for m in r.headers["allow"].split(",")) == ["DELETE", "GET"]
        # "install" and "register" also match /api/v1/plugins/{key}: the answer still names their own method.
        r = await api.client.request("OPTIONS", "/api/v1/plugins/install")
        is_error(r, 405)
        assert "POST" in r.headers["allow"]


async def test_ready_is_503_until_the_plugins_are_loaded(
    headless: Callable[..., HeadlessProcess], settings: Settings, make_plugin: MakePlugin
) -> None:
    # A plugin that is not healthy yet keeps startup (and so readiness) waiting, for as long as the file exists.
    sick = settings.base_dir / "sick"
    sick.write_text("x")
    make_plugin(
        "slow", "http_server.py", health={"path": "/health", "interval_s": 0.1}, env={"HEALTH_FAIL_FILE": str(sick)}
    )
    proc = headless()
    listening = await proc.wait_for(lambda r: r.get("event") == "api_listening")
    url = listening["url"]
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health")).status_code == 200
        await proc.wait_state("slow", "STARTING")
        r = await client.get("/ready")
        assert r.status_code == 503
        body = r.json()
        assert body["ready"] is False and body["detail"]
        assert body["error"]["code"] == "not_ready" and body["error"]["message"]
        sick.unlink()
        await proc.wait_state("slow", "RUNNING")
        r = await wait_until(lambda: _ready(client), timeout=30)
        assert r.json() == {"ready": True, "detail": ""}
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


async def _ready(client: httpx.AsyncClient) -> httpx.Response | None:
    r = await client.get("/ready")
    return r if r.status_code == 200 else None


async def test_a_port_in_use_is_one_line_exit_2_and_no_plugin_runs(
    headless: Callable[..., HeadlessProcess], settings: Settings, make_plugin: MakePlugin
) -> None:
    folder = make_plugin("early", "sleeper.py")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = headless("--port", str(port))
        code = await proc.wait()
    assert code == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(port) in lines[0] and "--port" in lines[0] and "Traceback" not in proc.stderr
    assert spawns(folder) == []  # the plugin never started
    assert plugin_processes(settings.base_dir) == []
    # An address this host does not have (TEST-NET-1): the same, pointing at the host setting.
    proc = headless("--host", "192.0.2.1")
    assert await proc.wait() == 2
    assert "--host" in proc.stderr and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert spawns(folder) == []
    # Nothing was left half-started: the data dir is free for the next start.
    assert not (settings.data_dir / "admin.token").exists()
    proc2 = headless()
    await proc2.wait_state("early", "RUNNING")
    # The run that works is the one that says where the new admin token is.
    created = proc2.find(lambda r: r.get("event") == "token_created")
    assert any(str(settings.data_dir / "admin.token") in r["message"] for r in created)
    proc2.signal(signal.SIGTERM)
    assert await proc2.wait() == 0


async def test_request_bodies_over_the_limit_get_413_before_they_are_read(shared_headless: SharedHeadless) -> None:
    assert shared_headless.settings.get("server.max_body") == 1024 * 1024  # the documented default
    async with shared_api(shared_headless) as api:
        host, port = api.url.removeprefix("http://").rsplit(":", 1)
        # Announce 5 MiB, send 1 KiB and wait: the answer comes without the rest of the body.
        reader, writer = await asyncio.open_connection(host, int(port))
        head = (
            "POST /api/v1/plugins/install HTTP/1.1\r\n"
            f"Host: {host}\r\nAuthorization: Bearer {api.admin_token}\r\n"
            "Content-Type: application/json\r\nContent-Length: 5242880\r\n\r\n"
        )
        writer.write(head.encode() + b"{" + b" " * 1024)
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 30)
        assert status_line.startswith(b"HTTP/1.1 413"), status_line
        headers = {}
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = json.loads(await reader.readexactly(int(headers["content-length"])))
        assert body["error"]["code"] == "payload_too_large"
        writer.close()

        # Chunked, no Content-Length: cut off once the limit is passed.
        async def chunks() -> Any:
            for _ in range(40):
                yield b"x" * 65536

        r = await api.client.post("/api/v1/plugins/install", content=chunks())
        is_error(r, 413, "payload_too_large")
        # Just under the limit is read and judged on its content.
        r = await api.client.post("/api/v1/plugins/install", content=b"{" + b" " * (1024 * 1024 - 2) + b"}")
        assert r.status_code == 422


# -- plugins: list, get, actions -----------------------------------------------------------------------------------
async def test_list_and_get_show_what_the_gateway_serves(settings: Settings, make_plugin: MakePlugin) -> None:
    reporter(make_plugin, "web", description="says hello")
    make_plugin("idle", "sleeper.py", autostart=False)
    async with running_api(settings) as api:
        r = await api.client.get("/api/v1/plugins")
        assert r.status_code == 200
        by_key = {p["key"]: p for p in r.json()["plugins"]}
        assert by_key["web"]["state"] == "RUNNING" and by_key["idle"]["state"] == "STOPPED"
        web = await api.plugin("web")
        assert web["kind"] == "process" and alive(web["pid"]) and web["port"] and web["uptime"] >= 0
        assert web["description"] == "says hello" and web["restarts"] == 0
        hello = next(e for e in web["endpoints"] if e["path"] == "/hello")
        assert hello["gateway_url"] == f"{api.url}/api/plugins/web/hello"
        r = await api.client.get(hello["gateway_url"])
        assert r.status_code == 200 and r.text == "hello from web"
        assert (await api.plugin("web"))["requests"] == 1
        err = is_error(await api.client.get("/api/v1/plugins/nope"), 404, "plugin_not_found")
        assert "nope" in err["message"]
        r = await api.client.get("/api/v1/status")
        status = r.json()
        assert status["mode"] == "headless" and status["api"] == api.url and status["read_only"] is False
        assert status["plugins"] == {"total": 2, "by_state": {"RUNNING": 1, "STOPPED": 1}}


async def test_stop_start_restart_wait_for_the_result(settings: Settings, make_plugin: MakePlugin) -> None:
    reporter(make_plugin, "web")
    async with running_api(settings) as api:
        first = (await api.plugin("web"))["pid"]
        r = await api.client.post("/api/v1/plugins/web/stop")
        assert r.status_code == 200 and r.json()["plugin"]["state"] == "STOPPED"
        assert not alive(first)
        is_error(await api.client.get("/api/plugins/web/hello"), 503)
        r = await api.client.post("/api/v1/plugins/web/start")
        assert r.status_code == 200 and r.json()["plugin"]["state"] == "RUNNING"
        second = r.json()["plugin"]["pid"]
        assert second != first and alive(second)
        assert (await api.client.get("/api/plugins/web/hello")).status_code == 200
        r = await api.client.post("/api/v1/plugins/web/restart")
        assert r.status_code == 200 and r.json()["plugin"]["state"] == "RUNNING"
        third = r.json()["plugin"]["pid"]
        assert third != second and alive(third) and not alive(second)
        # wait=false: 202 at once, the state follows.
        r = await api.client.post("/api/v1/plugins/web/stop", params={"wait": "false"})
        assert r.status_code == 202 and r.json()["plugin"]["key"] == "web"
        await api.wait_state("web", "STOPPED")
        r = await api.client.post("/api/v1/plugins/web/start", params={"wait": "false"})
        assert r.status_code == 202
        await api.wait_state("web", "RUNNING")
        r = await api.client.post("/api/v1/plugins/web/restart", params={"wait": "false"})
        assert r.status_code == 202
        await wait_until(lambda: _pid_changed(api, "web", third))
        for action in ("start", "stop", "restart"):
            is_error(await api.client.post(f"/api/v1/plugins/nope/{action}"), 404, "plugin_not_found")


async def _pid_changed(api: Api, key: str, old: int) -> bool:
    p = await api.plugin(key)
    return p["state"] == "RUNNING" and p["pid"] != old


async def test_an_operator_start_leaves_fatal(settings: Settings, make_plugin: MakePlugin) -> None:
    fixed = settings.base_dir / "fixed"
    # startsecs well above the time a loaded machine takes to start Python and see the file missing: an exit
    # after startsecs would count as a start that later died, not as a failed start.
    reporter(make_plugin, "broken", startretries=1, startsecs=3, env={"REQUIRE_FILE": str(fixed)})
    async with running_api(settings) as api:
        await api.wait_state("broken", "FATAL")
        err = is_error(await api.client.post("/api/v1/plugins/broken/start"), 409, "action_failed")
        assert "FATAL" in err["message"]
        fixed.write_text("now it can start")
        r = await api.client.post("/api/v1/plugins/broken/start")
        assert r.status_code == 200, r.text
        assert r.json()["plugin"]["state"] == "RUNNING" and alive(r.json()["plugin"]["pid"])


async def test_read_only_refuses_every_change(make_settings: Callable[..., Settings], make_plugin: MakePlugin) -> None:
    settings = make_settings(**{"ui.read_only": True})
    reporter(make_plugin, "web")
    async with running_api(settings) as api:
        pid = (await api.plugin("web"))["pid"]
        for method, path, body in [
            ("POST", "/api/v1/plugins/web/stop", None),
            ("POST", "/api/v1/plugins/web/restart", None),
            ("POST", "/api/v1/plugins/web/start", None),
            ("DELETE", "/api/v1/plugins/web", None),
            ("PUT", "/api/v1/plugins/web/config", {"env": {"A": "1"}}),
            ("POST", "/api/v1/plugins/install", {"manifest": {"key": "x", "command": ["true"]}}),
        ]:
            is_error(await api.client.request(method, path, json=body), 403, "read_only")
        # Refused before the body is judged: the answer does not depend on what was sent.
        is_error(await api.client.put("/api/v1/plugins/web/config", json={"env": {"A": 1}}), 403, "read_only")
        assert (await api.plugin("web"))["pid"] == pid and alive(pid)
        assert (await api.client.get("/api/v1/status")).json()["read_only"] is True


# -- install, delete, config -----------------------------------------------------------------------------------------
def manifest_for(key: str, **fields: Any) -> dict[str, Any]:
    """Seed 003's install body carries a manifest; ours runs a `command` instead of a container image."""
    return {
        "key": key,
        "name": f"{key} plugin",
        "version": "1.0.0",
        "command": ["python", str(REPORTER)],
        "startsecs": 0.3,
        "stopwaitsecs": 3,
        "endpoints": REPORTER_ENDPOINTS,
        "health": REPORTER_HEALTH,
        **fields,
    }


async def test_install_then_delete_and_purge(settings: Settings) -> None:
    async with running_api(settings) as api:
        r = await api.client.post(
            "/api/v1/plugins/install", json={"manifest": manifest_for("fresh"), "autoStart": True}
        )
        assert r.status_code == 201, r.text
        plugin = r.json()["plugin"]
        assert plugin["state"] == "RUNNING" and plugin["version"] == "1.0.0" and alive(plugin["pid"])
        written = json.loads((settings.plugins_dir / "fresh" / "manifest.json").read_text())
        assert written["command"] == ["python", str(REPORTER)]
        r = await api.client.get("/api/plugins/fresh/hello")
        assert r.status_code == 200 and r.text == "hello from fresh"
        # The same key again, and manifests that are wrong: nothing changes.
        err = is_error(
            await api.client.post("/api/v1/plugins/install", json={"manifest": manifest_for("fresh")}), 409, "conflict"
        )
        assert "fresh" in err["message"]
        err = is_error(
            await api.client.post("/api/v1/plugins/install", json={"manifest": {"key": "bad", "command": []}}),
            422,
            "invalid_manifest",
        )
        assert "command" in err["message"]
        assert not (settings.plugins_dir / "bad").exists()
        is_error(await api.client.post("/api/v1/plugins/install", json={"autoStart": True}), 422, "validation_error")
        is_error(
            await api.client.post(
                "/api/v1/plugins/install", content=b"{not json", headers={"content-type": "application/json"}
            ),
            400,
            "malformed_json",
        )
        # Installed without autoStart: loaded, stopped.
        r = await api.client.post("/api/v1/plugins/install", json={"manifest": manifest_for("later")})
        assert r.status_code == 201 and r.json()["plugin"]["state"] == "STOPPED"
        # DELETE stops and unloads; the folder stays unless purge.
        r = await api.client.delete("/api/v1/plugins/fresh")
        assert r.status_code == 200 and r.json() == {"removed": "fresh", "purged": False}
        assert not alive(plugin["pid"])
        is_error(await api.client.get("/api/v1/plugins/fresh"), 404, "plugin_not_found")
        assert (settings.plugins_dir / "fresh" / "manifest.json").exists()
        is_error(await api.client.get("/api/plugins/fresh/hello"), 404)
        r = await api.client.delete("/api/v1/plugins/later", params={"purge": "true"})
        assert r.status_code == 200 and r.json() == {"removed": "later", "purged": True}
        assert not (settings.plugins_dir / "later").exists()
        is_error(await api.client.delete("/api/v1/plugins/later"), 404, "plugin_not_found")
        # A purged key can be installed again.
        r = await api.client.post(
            "/api/v1/plugins/install", json={"manifest": manifest_for("later"), "autoStart": True}
        )
        assert r.status_code == 201 and r.json()["plugin"]["state"] == "RUNNING"


async def test_install_takes_seed_003s_body_with_a_command(settings: Settings) -> None:
    with socket.socket() as probe:  # a free port for the manifest's fixed "port"
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    seed_manifest: dict[str, Any] = {
        "id": "crypto-service",
        "name": "Crypto Service",
        "version": "1.0.0",
        "description": "Cryptographic operations",
        "image": {"repository": "flowforge/crypto-service", "tag": "1.0.0"},
        "port": port,
        "basePath": "/api/v1/crypto",
        "endpoints": [{"method": "POST", "path": "/hash", "description": "Hash data"}],
    }
    async with running_api(settings) as api:
        # As seed 003 wrote it, with a container image: refused, saying what to give instead.
        r = await api.client.post("/api/v1/plugins/install", json={"manifest": seed_manifest, "autoStart": True})
        assert "command" in is_error(r, 422, "invalid_manifest")["message"]
        assert not (settings.plugins_dir / "crypto-service").exists()
        seed_manifest.pop("image")
        seed_manifest["command"] = ["python", str(REPORTER)]
        r = await api.client.post("/api/v1/plugins/install", json={"manifest": seed_manifest, "autoStart": True})
        assert r.status_code == 201, r.text
        plugin = r.json()["plugin"]
        assert (plugin["key"], plugin["state"], plugin["port"]) == ("crypto-service", "RUNNING", port)
        assert plugin["endpoints"] == [
            {
                "method": "POST",
                "path": "/hash",
                "description": "Hash data",
                "gateway_url": f"{api.url}/api/plugins/crypto-service/hash",
            }
        ]
        written = json.loads((settings.plugins_dir / "crypto-service" / "manifest.json").read_text())
        assert written["key"] == "crypto-service" and "basePath" not in written and "id" not in written


async def test_put_config_reaches_the_process_and_persists(settings: Settings, make_plugin: MakePlugin) -> None:
    reporter(make_plugin, "envy", env={"COLOR": "blue", "KEEP": "yes"})
    async with running_api(settings) as api:
        env = (await api.client.get("/api/plugins/envy/env")).json()
        assert env["COLOR"] == "blue" and "SIZE" not in env
        old_pid = (await api.plugin("envy"))["pid"]
        r = await api.client.put("/api/v1/plugins/envy/config", json={"env": {"COLOR": "red", "SIZE": "10"}})
        assert r.status_code == 200, r.text
        assert r.json()["plugin"]["state"] == "RUNNING" and r.json()["plugin"]["pid"] != old_pid
        env = (await api.client.get("/api/plugins/envy/env")).json()
        assert env["COLOR"] == "red" and env["SIZE"] == "10" and env["KEEP"] == "yes"
        err = is_error(
            await api.client.put("/api/v1/plugins/envy/config", json={"env": {"not a name": "x"}}),
            422,
            "invalid_config",
        )
        assert "not a name" in err["message"]
        is_error(await api.client.put("/api/v1/plugins/envy/config", json={"env": {"A": 1}}), 422, "validation_error")
        is_error(await api.client.put("/api/v1/plugins/nope/config", json={"env": {}}), 404, "plugin_not_found")
    # A new supervisor on the same data dir starts the plugin with the stored overrides.
    async with running_api(settings) as api:
        env = (await api.client.get("/api/plugins/envy/env")).json()
        assert env["COLOR"] == "red" and env["SIZE"] == "10"


# -- logs and events ---------------------------------------------------------------------------------------------
async def test_logs_newest_lines_and_follow(settings: Settings, make_plugin: MakePlugin) -> None:
    reporter(make_plugin, "talk")
    async with running_api(settings) as api:
        for i in range(5):
            assert (await api.client.get("/api/plugins/talk/say", params={"text": f"line {i}"})).status_code == 200

        async def newest(n: int) -> list[str]:
            r = await api.client.get("/api/v1/plugins/talk/logs", params={"lines": n})
            assert r.status_code == 200
            return [line["message"] for line in r.json()["lines"]]

        await wait_until(lambda: _contains(newest(10), "line 4"))
        assert await newest(3) == ["line 2", "line 3", "line 4"]
        r = await api.client.get("/api/v1/plugins/talk/logs", params={"lines": 1})
        (line,) = r.json()["lines"]
        assert line["source"] == "talk" and line["stream"] == "stdout" and line["ts"] > 0
        merged = (await api.client.get("/api/v1/logs", params={"lines": 200})).json()["lines"]
        assert {"talk", "supervisor"} <= {m["source"] for m in merged}
        only = (await api.client.get("/api/v1/logs", params={"lines": 200, "source": "talk"})).json()["lines"]
        assert only and {m["source"] for m in only} == {"talk"}
        is_error(await api.client.get("/api/v1/plugins/talk/logs", params={"lines": -1}), 422, "validation_error")
        is_error(await api.client.get("/api/v1/plugins/nope/logs"), 404, "plugin_not_found")

        # follow: the newest lines first, then each new line as it is printed.
        params = {"lines": 2, "follow": "true"}
        async with api.client.stream("GET", "/api/v1/plugins/talk/logs", params=params) as resp:
            assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/x-ndjson")
            lines = resp.aiter_lines()
            assert json.loads(await anext(lines))["message"] == "line 3"
            assert json.loads(await anext(lines))["message"] == "line 4"
            assert (await api.client.get("/api/plugins/talk/say", params={"text": "live one"})).status_code == 200
            follow = json.loads(await asyncio.wait_for(anext(lines), 30))
            assert follow["message"] == "live one" and follow["source"] == "talk"


async def _contains(messages: Any, text: str) -> bool:
    return text in await messages


async def test_ws_events_streams_the_topics_asked_for(settings: Settings, make_plugin: MakePlugin) -> None:
    reporter(make_plugin, "web")
    async with running_api(settings) as api:
        ws_url = api.url.replace("http://", "ws://") + "/ws/events?topics=plugin.state"
        async with websockets.connect(ws_url, additional_headers=bearer(api.admin_token)) as ws:
            assert (await api.client.post("/api/v1/plugins/web/stop")).status_code == 200
            seen: list[dict[str, Any]] = []
            while not any(e.get("to_state") == "STOPPED" for e in seen):
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            assert {e["topic"] for e in seen} == {"plugin.state"}  # no log lines, no metrics
            assert [e["to_state"] for e in seen] == ["STOPPING", "STOPPED"]
            assert all(e["key"] == "web" for e in seen)
        # A prefix matches every plugin.* topic; log lines come on "log".
        ws_url = api.url.replace("http://", "ws://") + "/ws/events?topics=plugin,log"
        async with websockets.connect(ws_url, additional_headers=bearer(api.admin_token)) as ws:
            assert (await api.client.post("/api/v1/plugins/web/start")).status_code == 200
            topics: set[str] = set()
            while not {"plugin.state", "log"} <= topics:
                topics.add(json.loads(await asyncio.wait_for(ws.recv(), 30))["topic"])
            assert all(t == "log" or t.startswith("plugin") for t in topics)


async def test_open_streams_end_when_the_supervisor_stops(settings: Settings, make_plugin: MakePlugin) -> None:
    reporter(make_plugin, "talk")
    runtime = Runtime(settings, "headless")
    await runtime.start()
    stopping: asyncio.Task[None] | None = None
    try:
        await runtime.sup.start_all()
        assert runtime.tokens is not None
        token = runtime.tokens.admin
        ws_url = runtime.url.replace("http://", "ws://") + "/ws/events?topics=log"
        async with (
            websockets.connect(ws_url, additional_headers=bearer(token)) as ws,
            httpx.AsyncClient(base_url=runtime.url, headers=bearer(token), timeout=60) as client,
            client.stream("GET", "/api/v1/plugins/talk/logs", params={"lines": 1, "follow": "true"}) as resp,
        ):
            lines = resp.aiter_lines()
            assert "reporter listening" in json.loads(await anext(lines))["message"]
            stopping = asyncio.create_task(runtime.stop())
            # The log stream ends in good order (no cut connection) and the server closes the WebSocket.
            rest = [json.loads(line) async for line in lines if line]
            assert all(r["source"] == "talk" for r in rest)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                while True:
                    await asyncio.wait_for(ws.recv(), 30)
            assert closed.value.rcvd is not None and closed.value.rcvd.code in (1001, 1012)  # going away, restart
            await stopping
    finally:
        if stopping is None:
            await runtime.stop()
