"""Bad input at the HTTP surface gets a clear 4xx in the one error shape and changes nothing: keys the supervisor
keeps for itself, and JSON bodies nested deeper than any parser recurses, on every route that takes a body (admin
API, the console API over ASGI, and the heartbeat fast path); and what no route handled is a JSON 500 with an
error id, never the server's plain-text 500. A real Runtime (or HttpServer) on 127.0.0.1."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from conftest import SharedHeadless
from fixtures.api.harness import Api, bearer, shared_api

from supervisor_tui.plugins.manifest import RESERVED_KEYS
from supervisor_tui.server.errors import InternalErrorShield
from supervisor_tui.server.serve import HttpServer

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")


def error_of(r: httpx.Response, *statuses: int) -> dict[str, Any]:
    """The response has one of ``statuses`` and a JSON body in the error shape; returns the error object."""
    assert r.status_code in statuses, (r.status_code, r.headers.get("content-type"), r.text[:300])
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


async def plugin_keys(api: Api) -> list[str]:
    return [p["key"] for p in (await api.client.get("/api/v1/plugins")).json()["plugins"]]


# -- reserved keys -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key", sorted(RESERVED_KEYS))
async def test_a_reserved_key_is_refused_from_registration_and_install(
    shared_headless: SharedHeadless, key: str
) -> None:
    async with shared_api(shared_headless) as api:
        announced = {"key": key, "host": "127.0.0.1", "port": 3010, "endpoints": [{"method": "GET", "path": "/x"}]}
        r = await api.client.post("/api/v1/plugins/register", json=announced, headers=bearer(api.plugin_token))
        err = error_of(r, 422)
        assert err["code"] == "invalid_registration" and "reserved" in err["message"] and key in err["message"]
        manifest = {"key": key, "command": ["python", "-c", "pass"], "autostart": False}
        r = await api.client.post("/api/v1/plugins/install", json={"manifest": manifest})
        err = error_of(r, 422)
        assert err["code"] == "invalid_manifest" and "reserved" in err["message"] and key in err["message"]
        assert await plugin_keys(api) == ["web"]  # the shared supervisor's one plugin
        assert not (shared_headless.settings.plugins_dir / key).exists()


# -- bodies nested deeper than a parser recurses -------------------------------------------------------------------
DEPTH = 20_000
DEEP = b"[" * DEPTH + b"]" * DEPTH  # 40,000 bytes: under every body limit (64 KiB)


def nested_in(prefix: bytes, suffix: bytes = b"}") -> bytes:
    """A JSON body whose free-form object field holds ``DEEP``: the part of a body a typed parser does not check."""
    return prefix + b'{"x": ' + DEEP + b"}" + suffix


async def test_deeply_nested_bodies_are_400_or_422_on_every_route_that_takes_json(
    shared_headless: SharedHeadless,
) -> None:
    async with shared_api(shared_headless) as api:  # consoles.auth = "none", and a plugin "web" not started
        cid = str(uuid.uuid4())
        r = await api.client.post("/api/consoles/register", json={"id": cid, "name": "deep"})
        assert r.status_code == 201, r.text
        console = bearer(r.json()["token"])
        admin, plugin = bearer(api.admin_token), bearer(api.plugin_token)
        routes: list[tuple[str, str, dict[str, str], bytes]] = [
            ("POST", "/api/v1/plugins/install", admin, nested_in(b'{"manifest": {"key": "x", "config": ', b"}}")),
            ("PUT", "/api/v1/plugins/web/config", admin, nested_in(b'{"env": ')),
            ("POST", "/api/v1/plugins/register", plugin, nested_in(b'{"key": "x", "port": 3010, "extra": ')),
            ("POST", "/api/consoles/register", {}, nested_in(b'{"id": "%s", "name": "n", "system": ' % cid.encode())),
            (
                "POST",
                "/api/consolas/registrar",
                {},
                nested_in(b'{"id": "%s", "nombre": "n", "sistema": ' % cid.encode()),
            ),
            # A plain heartbeat takes the fast path (no ASGI); with a query string it takes the ASGI one.
            ("POST", f"/api/consoles/{cid}/heartbeat", console, nested_in(b'{"state": "busy", "system": ')),
            (
                "POST",
                f"/api/consoles/{cid}/heartbeat?via=asgi",
                console,
                nested_in(b'{"state": "busy", "last_error": '),
            ),
            ("POST", f"/api/consolas/{cid}/heartbeat", console, nested_in(b'{"estado": "ocupada", "sistema": ')),
            (
                "POST",
                f"/api/consolas/{cid}/heartbeat?via=asgi",
                console,
                nested_in(b'{"estado": "ocupada", "ultimoError": '),
            ),
        ]
        async with httpx.AsyncClient(base_url=api.url, timeout=60) as client:
            for method, path, auth, nested in routes:
                for body in (DEEP, nested):
                    headers = {"content-type": "application/json", **auth}
                    r = await client.request(method, path, content=body, headers=headers)
                    err = error_of(r, 400, 422)
                    if body is nested:  # the body's shape is right: what is wrong is the nesting
                        assert r.status_code == 400 and "nested too deeply" in err["message"], (path, err)
        # Nothing changed: no plugin installed or registered, web's config untouched, the console as registered.
        assert await plugin_keys(api) == ["web"]
        assert (await api.plugin("web"))["state"] == "STOPPED"
        r = await api.client.get(f"/api/consoles/{cid}")
        assert r.status_code == 200 and r.json()["state"] == "idle", r.text
        r = await api.client.get(f"/api/consoles/{cid}/heartbeats")
        assert r.status_code == 200 and r.json()["heartbeats"] == [], r.text


# -- what no route handled ---------------------------------------------------------------------------------------
async def broken_route(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An ASGI app with a bug: what the shield is for (every real route answers its errors itself)."""
    raise ValueError("a bug in a route")


async def test_an_exception_no_route_handled_is_a_json_500_with_an_error_id(caplog: pytest.LogCaptureFixture) -> None:
    server = HttpServer(shutdown_timeout=5.0)
    _, port = await server.start(InternalErrorShield(broken_route), "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            r = await client.post("/anything", content=b"[1]")
    finally:
        await server.stop()
    err = error_of(r, 500)
    assert err["code"] == "internal" and err["id"] and err["id"] in err["message"]
    logged = [rec for rec in caplog.records if err["id"] in rec.getMessage()]
    assert logged and logged[0].exc_info is not None and "a bug in a route" in str(logged[0].exc_info[1])
