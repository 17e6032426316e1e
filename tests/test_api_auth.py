"""Tokens: every admin route, /ws/events and /metrics need the admin token; token files; tokens never leak."""

from __future__ import annotations

import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from conftest import HeadlessProcess, SharedHeadless
from fixtures.api.harness import REPORTER, REPORTER_ENDPOINTS, REPORTER_HEALTH, bearer, running_api, shared_api

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

# Routes an external plugin calls with the plugin token (the admin token works there too).
PLUGIN_ROUTES = {
    ("post", "/api/v1/plugins/register"),
    ("post", "/api/v1/plugins/{key}/heartbeat"),
    ("post", "/api/v1/plugins/{key}/unregister"),
}


def admin_operations(openapi: dict[str, Any]) -> list[tuple[str, str]]:
    """(method, path template) of every documented /api/v1 operation and /metrics."""
    ops = []
    for path, item in openapi["paths"].items():
        if path.startswith("/api/v1/") or path == "/metrics":
            ops += [(method, path) for method in item if method in ("get", "post", "put", "delete", "patch")]
    return ops


def assert_unauthorized(r: httpx.Response, presented: str | None = None) -> None:
    assert r.status_code == 401, (r.request.method, r.request.url, r.status_code, r.text)
    assert r.json()["error"]["code"] == "unauthorized" and r.json()["error"]["message"]
    assert r.headers["www-authenticate"] == "Bearer"
    if presented:
        assert presented not in r.text


async def test_every_admin_route_needs_the_admin_token(shared_headless: SharedHeadless) -> None:
    async with shared_api(shared_headless) as api:
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as anonymous:
            openapi = (await anonymous.get("/openapi.json")).json()
            ops = admin_operations(openapi)
            assert len(ops) >= 16, ops  # the whole admin API, not a handful
            wrong = "wrong-" + api.admin_token[::-1]
            for method, template in ops:
                # A key that does not exist: the right token gets past auth to a 404/422 and nothing changes.
                path = template.replace("{key}", "nope")
                body = {} if method in ("post", "put") else None
                assert_unauthorized(await anonymous.request(method, path, json=body))
                assert_unauthorized(await anonymous.request(method, path, json=body, headers=bearer(wrong)), wrong)
                for header in (f"Basic {api.admin_token}", api.admin_token, "Bearer", f"Bearer {api.admin_token}x"):
                    r = await anonymous.request(method, path, json=body, headers={"Authorization": header})
                    assert_unauthorized(r)
                # Auth is checked before the body is: an anonymous client learns nothing from validation.
                if body is not None:
                    r = await anonymous.request(
                        method, path, content=b"{oops", headers={"Content-Type": "application/json"}
                    )
                    assert_unauthorized(r)
                r = await anonymous.request(method, path, json=body, headers=bearer(api.admin_token))
                assert r.status_code not in (401, 403) and r.status_code < 500, (method, path, r.status_code, r.text)
                # The scheme name is case-insensitive (RFC 7235).
                r = await anonymous.request(
                    method, path, json=body, headers={"Authorization": f"bearer {api.admin_token}"}
                )
                assert r.status_code != 401
                # The plugin token opens only the registration routes.
                r = await anonymous.request(method, path, json=body, headers=bearer(api.plugin_token))
                if (method, template) in PLUGIN_ROUTES:
                    assert r.status_code != 401, (method, path)
                else:
                    assert_unauthorized(r)


async def test_ws_events_needs_the_admin_token(shared_headless: SharedHeadless) -> None:
    async with shared_api(shared_headless) as api:
        ws_url = api.url.replace("http://", "ws://") + "/ws/events"
        for headers in ({}, bearer("wrong"), bearer(api.plugin_token)):
            with pytest.raises(websockets.InvalidStatus) as refused:
                async with websockets.connect(ws_url, additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 403
        async with websockets.connect(ws_url + "?topics=plugin", additional_headers=bearer(api.admin_token)) as ws:
            await ws.ping()


async def test_public_metrics_opens_only_metrics(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**{"auth.public_metrics": True})
    async with running_api(settings) as api:
        async with httpx.AsyncClient(base_url=api.url) as anonymous:
            r = await anonymous.get("/metrics")
            assert r.status_code == 200 and "supervisor_plugin_state" in r.text
            assert_unauthorized(await anonymous.get("/api/v1/status"))


async def test_token_files_are_private_and_kept(settings: Settings) -> None:
    async with running_api(settings) as api:
        admin, plugin = api.admin_token, api.plugin_token
    assert admin != plugin and len(admin) >= 32
    for name, token in (("admin.token", admin), ("plugin.token", plugin)):
        path = settings.data_dir / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() == token
    async with running_api(settings) as api:  # the next start reuses them
        assert (api.admin_token, api.plugin_token) == (admin, plugin)
        r = await api.client.get("/api/v1/status", headers=bearer(admin))
        assert r.status_code == 200


async def test_tokens_from_settings_are_used_and_no_file_is_written(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**{"auth.admin_token": "admin-from-settings", "auth.plugin_token": "plugin-from-settings"})
    async with running_api(settings) as api:
        r = await api.client.get("/api/v1/status", headers=bearer("admin-from-settings"))
        assert r.status_code == 200
        r = await api.client.post("/api/v1/plugins/nope/heartbeat", headers=bearer("plugin-from-settings"))
        assert r.status_code == 404
    assert not (settings.data_dir / "admin.token").exists()
    assert not (settings.data_dir / "plugin.token").exists()


async def test_the_token_location_is_printed_once_and_tokens_never_in_logs(
    headless: Callable[..., HeadlessProcess], settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("talk", str(REPORTER), endpoints=REPORTER_ENDPOINTS, health=REPORTER_HEALTH)
    proc = headless()
    url = (await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"]
    await proc.wait_state("talk", "RUNNING")
    token_file = settings.data_dir / "admin.token"
    admin = token_file.read_text().strip()
    plugin = (settings.data_dir / "plugin.token").read_text().strip()
    created = proc.find(lambda r: r.get("event") == "token_created")
    assert [str(token_file) in r["message"] for r in created].count(True) == 1
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        # Wrong tokens, the right ones, and a plugin that prints the token on its stdout (a log line).
        assert (await client.get("/api/v1/status", headers=bearer(admin + "x"))).status_code == 401
        assert (await client.get("/api/v1/status", headers=bearer(admin))).status_code == 200
        r = await client.post("/api/v1/plugins/nope/heartbeat", headers=bearer(plugin))
        assert r.status_code == 404 and plugin not in r.text
        r = await client.get("/api/plugins/talk/say", params={"text": f"my token is {admin} and {plugin}"})
        assert r.status_code == 200
        await proc.wait_for(lambda r: r.get("source") == "talk" and "my token is" in r.get("message", ""))
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    logs = "".join(p.read_text(errors="replace") for p in (settings.data_dir / "logs").glob("*.log*"))
    assert "my token is" in logs  # the line was written, without the secrets
    for secret in (admin, plugin):
        assert secret not in "\n".join(proc.lines)
        assert secret not in proc.stderr
        assert secret not in logs
    # The next start does not print a location again: nothing was created.
    again = headless()
    await again.wait_for(lambda r: r.get("event") == "api_listening")
    again.signal(signal.SIGTERM)
    assert await again.wait() == 0
    assert not again.find(lambda r: r.get("event") == "token_created")


async def test_admin_token_from_the_environment(
    headless: Callable[..., HeadlessProcess], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERVISOR_TUI_AUTH_ADMIN_TOKEN", "token-from-env")
    proc = headless()
    url = (await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"]
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/api/v1/status", headers=bearer("token-from-env"))).status_code == 200
    assert not (settings.data_dir / "admin.token").exists()
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert "token-from-env" not in "\n".join(proc.lines)


def test_a_new_token_never_looks_like_an_option() -> None:
    """`ctl --token TOKEN` must take any token the supervisor made: one token_urlsafe draw in 64 starts with "-",
    which argparse would read as the next option ("--token: expected one argument")."""
    from supervisor_tui.core.private import new_token

    tokens = [new_token() for _ in range(2000)]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens) and all(len(t) == 43 for t in tokens)
