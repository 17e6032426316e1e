"""External plugins over HTTP (seed 000): register, heartbeat, LOST and back, unregister, the upstream allowlist,
keys of local plugins. A real upstream on 127.0.0.1 that the real gateway proxies to."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import wait_until
from fixtures.api.harness import REPORTER, REPORTER_ENDPOINTS, REPORTER_HEALTH, Api, bearer, running_api, upstream

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")


def registration(key: str, port: int, **fields: Any) -> dict[str, Any]:
    return {
        "key": key,
        "name": "Billing",
        "version": "1.2.0",
        "host": "127.0.0.1",
        "port": port,
        "endpoints": [{"method": "GET", "path": "/invoices/{id}"}],
        **fields,
    }


async def register(api: Api, body: dict[str, Any]) -> httpx.Response:
    return await api.client.post("/api/v1/plugins/register", json=body, headers=bearer(api.plugin_token))


def error_code(r: httpx.Response) -> str:
    body = r.json()
    assert set(body) == {"error"} and body["error"]["message"], body
    return str(body["error"]["code"])


async def test_register_proxy_heartbeat_unregister(settings: Settings) -> None:
    async with running_api(settings) as api:
        with upstream() as up:
            r = await register(api, registration("billing", up.port))
            assert r.status_code == 201, r.text
            plugin = r.json()["plugin"]
            assert plugin["kind"] == "external" and plugin["state"] == "RUNNING" and plugin["version"] == "1.2.0"
            assert plugin["upstream"] == f"http://127.0.0.1:{up.port}"
            assert plugin["endpoints"][0]["gateway_url"] == f"{api.url}/api/plugins/billing/invoices/{{id}}"
            listed = {p["key"]: p for p in (await api.client.get("/api/v1/plugins")).json()["plugins"]}
            assert listed["billing"]["kind"] == "external"
            r = await api.client.get("/api/plugins/billing/invoices/42")
            assert r.status_code == 200 and r.text == "upstream /invoices/42"
            r = await api.client.post("/api/v1/plugins/billing/heartbeat", headers=bearer(api.plugin_token))
            assert r.status_code == 200 and r.json()["plugin"]["state"] == "RUNNING"
            # The supervisor neither starts nor stops it.
            for action in ("start", "stop", "restart"):
                r = await api.client.post(f"/api/v1/plugins/billing/{action}")
                assert r.status_code == 409 and error_code(r) == "action_failed"
            # Registering again (a restarted plugin) moves it to its new address.
            with upstream() as moved:
                r = await register(api, registration("billing", moved.port, version="1.3.0"))
                assert r.status_code == 201 and r.json()["plugin"]["version"] == "1.3.0"
                r = await api.client.get("/api/plugins/billing/invoices/7")
                assert r.status_code == 200 and moved.connections >= 1
                r = await api.client.post("/api/v1/plugins/billing/unregister", headers=bearer(api.plugin_token))
                assert r.status_code == 200 and r.json() == {"ok": True}
            r = await api.client.get("/api/v1/plugins/billing")
            assert r.status_code == 404
            r = await api.client.get("/api/plugins/billing/invoices/42")
            assert r.status_code == 404 and error_code(r)
            for what in ("heartbeat", "unregister"):
                r = await api.client.post(f"/api/v1/plugins/billing/{what}", headers=bearer(api.plugin_token))
                assert r.status_code == 404 and error_code(r) == "plugin_not_found"


async def test_silence_makes_it_lost_and_a_heartbeat_brings_it_back(settings: Settings) -> None:
    async with running_api(settings) as api:
        with upstream() as up:
            r = await register(api, registration("billing", up.port, heartbeat_interval=0.5))
            assert r.status_code == 201

            async def served_after_a_heartbeat() -> bool:
                # Heartbeat and request back to back: on a busy machine a second may pass between them, and
                # after 2 x 0.5 s it is LOST again, so this is retried rather than assumed.
                r = await api.client.post("/api/v1/plugins/billing/heartbeat", headers=bearer(api.plugin_token))
                assert r.status_code == 200 and r.json()["plugin"]["state"] == "RUNNING"
                r = await api.client.get("/api/plugins/billing/invoices/1")
                return r.status_code == 200 and r.text == "upstream /invoices/1"

            await wait_until(served_after_a_heartbeat)
            lost = await api.wait_state("billing", "LOST", timeout=30)
            assert "no heartbeat" in lost["detail"]
            served = up.connections
            r = await api.client.get("/api/plugins/billing/invoices/1")
            assert r.status_code == 503 and error_code(r)
            assert up.connections == served  # a LOST plugin's upstream is not even tried
            metrics = (await api.client.get("/metrics")).text
            assert 'supervisor_plugin_state{plugin="billing",state="LOST"} 1.0' in metrics
            await wait_until(served_after_a_heartbeat)  # a heartbeat brings it back


@pytest.mark.parametrize(
    ("where", "why"),
    [
        ({"host": "10.1.2.3"}, "a private address outside the allowlist"),
        ({"host": "example.com"}, "a name that is not listed"),
        ({"url": "http://10.1.2.3:8080"}, "the url form"),
        ({"host": "169.254.169.254"}, "cloud metadata"),
        ({"host": "0.0.0.0"}, "every local address"),
        ({"host": "::ffff:10.1.2.3"}, "an IPv4 address in IPv6 clothing"),
        ({"url": "http://127.0.0.1@10.1.2.3:8080"}, "user info that looks like loopback"),
    ],
)
async def test_upstreams_outside_the_allowlist_are_refused(settings: Settings, where: dict[str, Any], why: str) -> None:
    async with running_api(settings) as api:
        body = registration("sneaky", 8080, **where)
        if "url" in where:
            body.pop("host"), body.pop("port")
        r = await register(api, body)
        assert r.status_code == 403 and error_code(r) == "upstream_not_allowed", (why, r.text)
        assert (await api.client.get("/api/v1/plugins/sneaky")).status_code == 404
        assert (await api.client.get("/api/plugins/sneaky/invoices/1")).status_code == 404


async def test_a_refused_upstream_is_never_contacted(make_settings: Callable[..., Settings]) -> None:
    # Only addresses are allowed: "localhost" (which does reach the upstream) is a name that is not listed.
    settings = make_settings(**{"gateway.upstream_allowlist": ["127.0.0.0/8"]})
    async with running_api(settings) as api:
        with upstream() as up:
            r = await register(api, registration("billing", up.port, host="localhost"))
            assert r.status_code == 403 and error_code(r) == "upstream_not_allowed"
            assert (await api.client.get("/api/plugins/billing/invoices/1")).status_code == 404
            assert up.connections == 0
            r = await register(api, registration("billing", up.port))  # 127.0.0.1 is in the network
            assert r.status_code == 201


async def test_a_wider_allowlist_admits_its_hosts(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(**{"gateway.upstream_allowlist": ["127.0.0.0/8", "10.0.0.0/8", "billing.internal"]})
    async with running_api(settings) as api:
        for host in ("10.1.2.3", "billing.internal"):
            r = await register(api, registration(f"b-{host.split('.')[0]}", 8080, host=host))
            assert r.status_code == 201, r.text
        r = await register(api, registration("other", 8080, host="192.168.1.1"))
        assert r.status_code == 403


async def test_a_local_plugins_key_cannot_be_taken_over(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    make_plugin("web", str(REPORTER), endpoints=REPORTER_ENDPOINTS, health=REPORTER_HEALTH)
    async with running_api(settings) as api:
        before = await api.plugin("web")
        with upstream() as up:
            r = await register(api, registration("web", up.port, endpoints=[{"method": "GET", "path": "/hello"}]))
            assert r.status_code == 409 and error_code(r) == "conflict"
            for what in ("heartbeat", "unregister"):
                r = await api.client.post(f"/api/v1/plugins/web/{what}", headers=bearer(api.plugin_token))
                assert r.status_code == 409 and error_code(r) == "conflict"
            after = await api.plugin("web")
            assert (after["kind"], after["state"], after["pid"]) == ("process", "RUNNING", before["pid"])
            r = await api.client.get("/api/plugins/web/hello")
            assert r.text == "hello from web" and up.connections == 0


async def test_bad_registrations_are_refused_with_the_reason(settings: Settings) -> None:
    async with running_api(settings) as api:
        cases: list[tuple[dict[str, Any], int, str]] = [
            ({"key": "Bad Key", "port": 3010}, 422, "key"),
            ({"key": "nop"}, 422, "port"),
            ({"key": "nop", "port": 0}, 422, "port"),
            ({"key": "nop", "url": "ftp://127.0.0.1:21"}, 422, "url"),
            ({"key": "nop", "url": "http://127.0.0.1:3000/base"}, 422, "url"),
            ({"key": "nop", "port": 3010, "endpoints": [{"method": "BREW", "path": "/pot"}]}, 422, "endpoints"),
            ({"key": "nop", "port": 3010, "heartbeat_interval": 0}, 422, "heartbeat_interval"),
            # JSON true is not the number 1, nor "3010" a port.
            ({"key": "nop", "port": True}, 422, "port"),
            ({"key": "nop", "port": "3010"}, 422, "port"),
            ({"key": "nop", "port": 3010, "heartbeat_interval": True}, 422, "heartbeat_interval"),
            ({"key": "nop", "port": 3010, "timestamp": False}, 422, "timestamp"),
        ]
        for body, status, field in cases:
            r = await register(api, body)
            assert r.status_code == status, (body, r.text)
            assert field in r.json()["error"]["message"], (body, r.text)
        assert [p["key"] for p in (await api.client.get("/api/v1/plugins")).json()["plugins"]] == []
        # Wrong or missing token: 401, nothing registered.
        async with httpx.AsyncClient(base_url=api.url) as anonymous:
            for headers in ({}, bearer("nope")):
                r = await anonymous.post("/api/v1/plugins/register", json=registration("nop", 3010), headers=headers)
                assert r.status_code == 401
        assert (await api.client.get("/api/v1/plugins/nop")).status_code == 404


async def test_control_characters_in_a_registration_are_refused(settings: Settings) -> None:
    async with running_api(settings) as api:
        with upstream() as up:
            endpoint = {"method": "GET", "path": "/invoices/{id}"}
            for fields, field in (
                ({"name": "Billing\x1b]0;PWNED\x07"}, "name"),
                ({"version": "1.0\x1b]52;c;cHduZWQ=\x07"}, "version"),
                ({"key": "billing\n"}, "key"),
                ({"host": "127.0.0.1\u202e"}, "host"),
                ({"endpoints": [{**endpoint, "description": "invoice\u202efdp.exe"}]}, "endpoints[0].description"),
                ({"endpoints": [{"method": "GET", "path": "/invoices\n"}]}, "endpoints[0].path"),
            ):
                r = await register(api, {**registration("billing", up.port), **fields})
                assert r.status_code == 422 and error_code(r) == "invalid_registration", (fields, r.text)
                message = r.json()["error"]["message"]
                assert f"{field}:" in message and ("control" in message or field == "key"), message
            assert (await api.client.get("/api/v1/plugins/billing")).status_code == 404
            # The same registration without them is taken.
            assert (await register(api, registration("billing", up.port))).status_code == 201
