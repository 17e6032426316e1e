"""Route export to a real Caddy (routes.export = caddy): a headless supervisor keeps its server in Caddy right.

Every test runs ``caddy run`` with its admin API on a free port and its data dirs in tmp_path (fixtures/caddy),
a headless supervisor whose settings point at it, and a real plugin answering through Caddy's port.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, HeadlessProcess, wait_until
from fixtures.caddy.harness import CaddyProcess
from fixtures.ports import free_port

from supervisor_tui.config import Settings

pytestmark = pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed (scripts/setup.sh)")

MakePlugin = Callable[..., Path]
SERVER = "supervisor-tui"

# A plugin that answers with what it received, and counts every request that reached it (GET /seen lists them).
RECORDER = """
import json, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
SEEN = []
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def answer(self):
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        if self.path != "/seen":
            SEEN.append(self.command + " " + self.path)
        out = json.dumps({"method": self.command, "path": self.path, "body": body.decode(),
                          "headers": {k.lower(): v for k, v in self.headers.items()}, "seen": SEEN,
                          "key": os.environ["PLUGIN_KEY"], "replica": os.environ["PLUGIN_REPLICA"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    do_GET = do_POST = do_PUT = do_DELETE = answer
    def log_message(self, *args):
        pass
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"""
ENDPOINTS = [
    {"method": "GET", "path": "/hello"},
    {"method": "GET", "path": "/items/{item_id}"},
    {"method": "POST", "path": "/items"},
    {"method": "GET", "path": "/seen"},
]


@pytest.fixture
def caddy(tmp_path: Path) -> Iterator[CaddyProcess]:
    """A real Caddy with one server of somebody else's ("other") that the export must leave alone."""
    other = {
        "listen": [f"127.0.0.1:{free_port()}"],
        "routes": [{"handle": [{"handler": "static_response", "body": "other server"}]}],
    }
    proc = CaddyProcess(tmp_path / "caddy", {"other": other})
    proc.start()
    yield proc
    proc.stop()


class Exported:
    """The supervisor's API and Caddy's exported server, as the tests use them."""

    def __init__(self, proc: HeadlessProcess, api: str, token: str, caddy_url: str) -> None:
        self.proc, self.api, self.caddy_url = proc, api, caddy_url
        self.headers = {"Authorization": f"Bearer {token}"}

    async def status(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.api, headers=self.headers) as client:
            body: dict[str, Any] = (await client.get("/api/v1/status")).json()
            return body

    async def routes(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.api, headers=self.headers) as client:
            body: dict[str, Any] = (await client.get("/api/v1/routes")).json()
            return body

    async def export_ok(self) -> dict[str, Any]:
        """The export's status once its last attempt succeeded (it reads Caddy back after each write)."""

        async def ok() -> dict[str, Any] | None:
            export: dict[str, Any] = (await self.status())["route_export"]
            return export if export["ok"] is True else None

        export: dict[str, Any] = await wait_until(ok, timeout=15)
        return export

    async def act(self, key: str, action: str) -> None:
        async with httpx.AsyncClient(base_url=self.api, headers=self.headers, timeout=30) as client:
            r = await client.post(f"/api/v1/plugins/{key}/{action}", params={"wait": "true"})
            assert r.status_code in (200, 202), r.text

    async def through_caddy(self, method: str, path: str, status: int, **kwargs: Any) -> httpx.Response:
        """Poll Caddy's port until ``method path`` answers ``status`` (the export is asynchronous)."""

        async def answered() -> httpx.Response | None:
            try:
                async with httpx.AsyncClient(base_url=self.caddy_url) as client:
                    r = await client.request(method, path, **kwargs)
            except httpx.TransportError:
                return None
            return r if r.status_code == status else None

        response: httpx.Response = await wait_until(answered, timeout=15)
        return response


def _settings_file(settings: Settings, caddy: CaddyProcess, listen: str) -> Path:
    path = settings.base_dir / "supervisor.toml"
    path.write_text(
        "[routes]\n"
        'export = "caddy"\n'
        f'caddy_admin = "{caddy.admin_url}"\n'
        f'caddy_listen = "{listen}"\n'
        f'caddy_server = "{SERVER}"\n',
        encoding="utf-8",
    )
    return path


async def _start(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> Exported:
    make_plugin("rec", RECORDER, endpoints=ENDPOINTS, autostart=True)
    listen_port = free_port()
    proc = headless("--config", str(_settings_file(settings, caddy, f"127.0.0.1:{listen_port}")))
    api = (await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"]
    token = (settings.data_dir / "admin.token").read_text().strip()
    await proc.wait_state("rec", "RUNNING")
    return Exported(proc, api, token, f"http://127.0.0.1:{listen_port}")


async def test_running_plugin_answers_through_caddy_with_the_gateways_headers(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> None:
    ex = await _start(headless, settings, caddy, make_plugin)
    r = await ex.through_caddy(
        "GET", "/api/plugins/rec/hello?x=1", 200, headers={"X-Request-ID": "req-42", "X-Forwarded-For": "10.1.2.3"}
    )
    body = r.json()
    assert body["key"] == "rec" and body["path"] == "/hello?x=1"  # prefix stripped, query kept
    assert r.headers["x-request-id"] == "req-42"
    seen = body["headers"]
    assert seen["x-request-id"] == "req-42"
    assert seen["x-forwarded-for"] == "10.1.2.3, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-prefix"] == "/api/plugins/rec"
    assert seen["x-forwarded-host"] == ex.caddy_url.removeprefix("http://")
    assert seen["host"].startswith("127.0.0.1:") and seen["host"] != seen["x-forwarded-host"]
    # Without an id of its own the client gets a new one, the same the plugin saw.
    r = await ex.through_caddy("POST", "/api/plugins/rec/items", 200, content=b"payload")
    assert r.json()["body"] == "payload" and r.json()["headers"]["x-request-id"] == r.headers["x-request-id"]
    # Template parameters: one segment, any value.
    r = await ex.through_caddy("GET", "/api/plugins/rec/items/abc-123", 200)
    assert r.json()["path"] == "/items/abc-123"
    r = await ex.through_caddy("GET", "/api/plugins/rec/items/abc/def", 404)
    assert r.json()["error"]["code"] == "endpoint_not_found"
    assert (await ex.export_ok())["target"] == "caddy"


async def test_undeclared_paths_and_keys_do_not_reach_the_plugin(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> None:
    ex = await _start(headless, settings, caddy, make_plugin)
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)
    r = await ex.through_caddy("GET", "/api/plugins/rec/secret", 404)
    assert r.json() == {
        "error": {"code": "endpoint_not_found", "message": "plugin 'rec' declares no endpoint '/secret'"}
    }
    r = await ex.through_caddy("DELETE", "/api/plugins/rec/hello", 405)
    assert r.headers["allow"] == "GET, HEAD"
    assert r.json()["error"] == {
        "code": "method_not_allowed",
        "message": "DELETE is not declared for '/hello' of plugin 'rec'",
    }
    r = await ex.through_caddy("GET", "/api/plugins/nobody/hello", 404)
    assert r.json() == {"error": {"code": "plugin_not_found", "message": "no plugin 'nobody' behind the gateway"}}
    r = await ex.through_caddy("GET", "/api/plugins/rec/items/..%2F..%2Fseen", 400)
    assert r.json()["error"]["code"] == "invalid_path"
    r = await ex.through_caddy("GET", "/elsewhere", 404)
    assert r.json()["error"]["code"] == "not_found"
    r = await ex.through_caddy("GET", "/api/plugins/rec/seen", 200)
    assert r.json()["seen"] == ["GET /hello"]  # nothing else got through


async def test_stopped_plugin_is_503_in_caddy_and_back_on_start(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> None:
    ex = await _start(headless, settings, caddy, make_plugin)
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)
    await ex.act("rec", "stop")
    r = await ex.through_caddy("GET", "/api/plugins/rec/hello", 503)
    assert r.headers["retry-after"] == "5"
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "plugin_unavailable" and error["message"].startswith(
        "plugin 'rec' is unavailable: state is"
    )
    # An undeclared path of a stopped plugin is still 404, as in the built-in gateway.
    await ex.through_caddy("GET", "/api/plugins/rec/nope", 404)
    rows = (await ex.routes())["routes"]
    assert {(row["method"], row["path"], row["available"]) for row in rows} == {
        (e["method"], e["path"], False) for e in ENDPOINTS
    }
    await ex.act("rec", "start")
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)
    rows = (await ex.routes())["routes"]
    assert {row["state"] for row in rows} == {"RUNNING"}
    assert all(row["upstream"].startswith("http://127.0.0.1:") for row in rows)


async def test_replicas_are_balanced_by_caddy_and_a_killed_one_costs_no_get(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> None:
    make_plugin("multi", RECORDER, endpoints=ENDPOINTS, autostart=True, replicas=3)
    ex = await _start(headless, settings, caddy, make_plugin)

    async def replicas() -> list[dict[str, Any]] | None:
        async with httpx.AsyncClient(base_url=ex.api, headers=ex.headers) as client:
            rows: list[dict[str, Any]] = (await client.get("/api/v1/plugins/multi")).json()["replicas"]
        return rows if len(rows) == 3 and all(r["state"] == "RUNNING" for r in rows) else None

    rows = await wait_until(replicas, timeout=20)
    seen: set[str] = set()

    async def spread() -> bool:
        async with httpx.AsyncClient(base_url=ex.caddy_url) as client:
            for _ in range(12):
                try:
                    r = await client.get("/api/plugins/multi/hello")
                except httpx.TransportError:  # the export has not created Caddy's server yet
                    return False
                if r.status_code == 200:
                    seen.add(r.json()["replica"])
        return seen == {"0", "1", "2"}

    await wait_until(spread, timeout=15)  # every replica answers through Caddy, not only the first
    writes = (await ex.status())["route_export"]["writes"]
    os.kill(rows[2]["pid"], signal.SIGKILL)

    async def restarted() -> bool:
        now = await replicas()
        export = (await ex.status())["route_export"]
        return bool(now and now[2]["pid"] != rows[2]["pid"] and export["ok"] and export["writes"] >= writes + 2)

    await wait_until(restarted, timeout=30)  # written without the dead replica, then with its successor
    # Once the export has followed the replica's state (the supervisor restarts it meanwhile), every GET is
    # answered: Caddy balances over the replicas it was given. Caddy closes idle keep-alive connections on every
    # config change, so the seconds around a replica's crash are not free of client retries through Caddy
    # (docs/deployment.md says so); the built-in gateway's no-failed-GET promise is tests/test_replicas.py's.
    async with httpx.AsyncClient(base_url=ex.caddy_url) as client:
        statuses = [(await client.get("/api/plugins/multi/hello")).status_code for _ in range(30)]
    assert statuses == [200] * 30


async def test_an_installed_plugin_appears_and_a_removed_one_goes(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> None:
    ex = await _start(headless, settings, caddy, make_plugin)
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)
    folder = make_plugin("late", RECORDER, endpoints=[{"method": "GET", "path": "/hello"}], autostart=True)
    await ex.through_caddy("GET", "/api/plugins/late/hello", 200)  # the folder watcher's live reload
    shutil.rmtree(folder)
    r = await ex.through_caddy("GET", "/api/plugins/late/hello", 404)
    assert r.json()["error"]["code"] == "plugin_not_found"


async def test_external_registrations_and_in_process_plugins_are_exported(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> None:
    # The shipped in-process plugin: Caddy reaches it through the supervisor's own gateway.
    shutil.copytree(REPO / "plugins" / "stats", settings.plugins_dir / "stats")
    ex = await _start(headless, settings, caddy, make_plugin)
    r = await ex.through_caddy("GET", "/api/plugins/stats/summary", 200)
    assert "plugins" in r.json()
    upstream = next(row["upstream"] for row in (await ex.routes())["routes"] if row["key"] == "rec")
    plugin_token = (settings.data_dir / "plugin.token").read_text().strip()
    async with httpx.AsyncClient(base_url=ex.api, headers={"Authorization": f"Bearer {plugin_token}"}) as client:
        r = await client.post(
            "/api/v1/plugins/register",
            json={"key": "ext", "url": upstream, "endpoints": [{"method": "GET", "path": "/hello"}]},
        )
        assert r.status_code == 201, r.text
        r = await ex.through_caddy("GET", "/api/plugins/ext/hello", 200)
        assert r.json()["path"] == "/hello" and r.json()["headers"]["x-forwarded-prefix"] == "/api/plugins/ext"
        assert (await client.post("/api/v1/plugins/ext/unregister")).status_code == 200
    r = await ex.through_caddy("GET", "/api/plugins/ext/hello", 404)
    assert r.json()["error"]["code"] == "plugin_not_found"


async def test_a_restarted_caddy_gets_the_routes_back(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> None:
    ex = await _start(headless, settings, caddy, make_plugin)
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)
    caddy.restart()  # back on its start config: only "other", nothing of ours
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)
    await ex.proc.wait_for(lambda r: r.get("event") == "route_export_repaired")
    assert (await ex.status())["route_export"]["repairs"] >= 1


async def test_a_hand_edited_route_is_repaired_and_other_servers_are_left_alone(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> None:
    ex = await _start(headless, settings, caddy, make_plugin)
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)
    other_before = caddy.server("other")
    ours = caddy.server(SERVER)
    assert ours is not None and other_before is not None
    # Someone replaces our routes with one of their own.
    edited = {**ours, "routes": [{"handle": [{"handler": "static_response", "status_code": 418, "body": "mine"}]}]}
    assert caddy.admin("PATCH", f"/config/apps/http/servers/{SERVER}", edited).status_code == 200
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 418)
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)  # within the check interval
    record = await ex.proc.wait_for(lambda r: r.get("event") == "route_export_repaired")
    assert "changed outside the supervisor" in record["message"]
    assert caddy.server(SERVER) == ours
    # The other server, the one it does not own, was never written: it is as it was, and still answers.
    assert caddy.server("other") == other_before
    other_url = "http://" + other_before["listen"][0]
    async with httpx.AsyncClient() as client:
        assert (await client.get(other_url + "/")).text == "other server"


async def test_caddy_down_then_up(
    headless: Callable[..., HeadlessProcess],
    settings: Settings,
    caddy: CaddyProcess,
    make_plugin: MakePlugin,
) -> None:
    ex = await _start(headless, settings, caddy, make_plugin)
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)
    caddy.stop()

    async def failing() -> dict[str, Any] | None:
        export = (await ex.status())["route_export"]
        return export if export["ok"] is False else None

    export = await wait_until(failing, timeout=15)
    assert export["reachable"] is False and "cannot reach Caddy's admin API" in export["last_error"]
    for _ in range(2):  # it keeps trying (with backoff) while Caddy is away
        before = export["last_attempt_at"]

        async def retried(before: float = before) -> dict[str, Any] | None:
            export = (await ex.status())["route_export"]
            return export if export["last_attempt_at"] > before else None

        export = await wait_until(retried, timeout=15)
    await ex.act("rec", "stop")  # a change while Caddy is away is applied when it is back
    caddy.start()
    r = await ex.through_caddy("GET", "/api/plugins/rec/hello", 503)
    assert r.json()["error"]["code"] == "plugin_unavailable"
    await ex.proc.wait_for(lambda r: r.get("event") == "route_export_recovered")
    failures = ex.proc.find(lambda r: r.get("event") == "route_export_failed")
    assert len(failures) == 1, failures  # one line per outage, however many retries
    assert (await ex.status())["route_export"]["ok"] is True


def test_routes_cli_without_a_supervisor_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """Without a running supervisor: one line on stderr and exit 1."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "admin.token").write_text("t")
    port = free_port()
    r = subprocess.run(
        [sys.executable, "-m", "supervisor_tui", "routes", "--url", f"http://127.0.0.1:{port}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "cannot reach" in r.stderr


async def test_routes_cli_with_a_running_supervisor(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> None:
    ex = await _start(headless, settings, caddy, make_plugin)
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)
    await ex.export_ok()
    args = [sys.executable, "-m", "supervisor_tui", "routes", "--url", ex.api, "--data-dir", str(settings.data_dir)]
    r = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"export: caddy {caddy.admin_url} server '{SERVER}'") and "ok, last success" in lines[0]
    table = [line.split() for line in lines[2:]]
    assert ["rec", "GET", "/hello"] == table[0][:3] and table[0][-1] == "RUNNING"
    assert {(row[1], row[2]) for row in table} == {(e["method"], e["path"]) for e in ENDPOINTS}
    r = await asyncio.to_thread(subprocess.run, [*args, "--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(r.stdout)["export"]["ok"] is True


async def test_the_attached_tui_header_says_when_caddy_is_unreachable(
    headless: Callable[..., HeadlessProcess], settings: Settings, caddy: CaddyProcess, make_plugin: MakePlugin
) -> None:
    from test_tui import screen_text, until

    from supervisor_tui.tui.app import SupervisorApp
    from supervisor_tui.tui.client_remote import RemoteClient

    ex = await _start(headless, settings, caddy, make_plugin)
    await ex.through_caddy("GET", "/api/plugins/rec/hello", 200)
    client = RemoteClient(ex.api, ex.headers["Authorization"].removeprefix("Bearer "))
    await client.connect()
    app = SupervisorApp(client, handle_signals=False)
    try:
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: "plugins" in screen_text(app))
            assert "caddy unreachable" not in screen_text(app)
            caddy.stop()
            await until(pilot, lambda: "caddy unreachable" in screen_text(app), within=20)
            caddy.start()
            await until(pilot, lambda: "caddy unreachable" not in screen_text(app), within=20)
    finally:
        await client.close()


async def test_the_admin_password_is_never_shown(
    headless: Callable[..., HeadlessProcess], settings: Settings, make_plugin: MakePlugin
) -> None:
    make_plugin("rec", RECORDER, endpoints=ENDPOINTS, autostart=True)
    nobody = free_port()  # no Caddy there: the export fails, and says so
    path = settings.base_dir / "supervisor.toml"
    path.write_text(
        f'[routes]\nexport = "caddy"\ncaddy_admin = "http://ops:s3cret@127.0.0.1:{nobody}"\n'
        f'caddy_listen = "127.0.0.1:{free_port()}"\n',
        encoding="utf-8",
    )
    proc = headless("--config", str(path))
    api = (await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"]
    failed = await proc.wait_for(lambda r: r.get("event") == "route_export_failed")
    assert f"http://ops:***@127.0.0.1:{nobody}" in failed["message"]
    token = (settings.data_dir / "admin.token").read_text().strip()
    async with httpx.AsyncClient(base_url=api, headers={"Authorization": f"Bearer {token}"}) as client:
        status = (await client.get("/api/v1/status")).text
        routes = (await client.get("/api/v1/routes")).text
    args = [sys.executable, "-m", "supervisor_tui", "routes", "--url", api, "--data-dir", str(settings.data_dir)]
    cli = await asyncio.to_thread(subprocess.run, args, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 1 and "FAILING (cannot reach Caddy's admin API" in cli.stdout
    logged = (settings.data_dir / "logs" / "supervisor.log").read_text()
    for text in (status, routes, cli.stdout, cli.stderr, "\n".join(proc.lines), logged):
        assert "s3cret" not in text
