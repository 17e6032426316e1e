"""One model per plugin, used as the wire shape: every field of the core's PluginSnapshot Struct (and of its parts)
is in /openapi.json, in the admin API's answer, and in what the attached TUI's client returns, with no parser in
between: a field added to the Struct reaches all three by itself. Against a real headless supervisor."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from conftest import HeadlessProcess, wait_until
from fixtures.api.harness import bearer
from test_ctl import start_supervisor

from supervisor_tui.config import Settings
from supervisor_tui.plugins.model import Endpoint, PluginSnapshot, PluginState, ReplicaSnapshot
from supervisor_tui.tui.client import ClientError
from supervisor_tui.tui.client_remote import RemoteClient

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

ENDPOINTS = [{"method": "GET", "path": "/whoami", "description": "which replica answers"}]


MOVING = ("uptime", "last_metrics", "requests", "cpu_percent", "rss")  # figures that change between two reads


def steady(plugin: dict[str, Any]) -> dict[str, Any]:
    """A plugin's JSON without the figures that move between two reads."""
    out = {k: v for k, v in plugin.items() if k not in MOVING}
    out["replicas"] = [{k: v for k, v in r.items() if k not in MOVING} for r in plugin["replicas"]]
    return out


def field_names(struct: type[msgspec.Struct]) -> set[str]:
    return {f.encode_name for f in msgspec.structs.fields(struct)}


def schema_of(spec: dict[str, Any], name: str) -> set[str]:
    return set(spec["components"]["schemas"][name]["properties"])


async def test_every_snapshot_field_is_documented_sent_and_decoded_by_the_attached_tui(
    headless: Callable[..., HeadlessProcess], settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("web", "replica_server.py", endpoints=ENDPOINTS)
    proc, url = await start_supervisor(headless)
    await proc.wait_state("web", "RUNNING")
    token = (settings.data_dir / "admin.token").read_text().strip()
    async with httpx.AsyncClient(base_url=url, headers=bearer(token), timeout=60) as http:
        assert (await http.post("/api/v1/plugins/web/scale", json={"replicas": 2})).status_code == 200
        assert (await http.get("/api/plugins/web/whoami")).status_code == 200  # one request through the gateway

        async def settled() -> dict[str, Any] | None:
            body: dict[str, Any] = (await http.get("/api/v1/plugins/web")).json()
            running = [r for r in body["replicas"] if r["state"] == "RUNNING"]
            return body if len(running) == 2 and body["last_metrics"] and body["requests"] else None

        await wait_until(settled, timeout=60)
        spec = (await http.get("/openapi.json")).json()
        raw = (await http.get("/api/v1/plugins/web")).json()
        plugin_path = spec["paths"]["/api/v1/plugins/{key}"]["get"]["responses"]["200"]["content"]
    # Documented: the answer's schema is the Struct's, field for field (nested Structs too).
    assert plugin_path["application/json"]["schema"] == {"$ref": "#/components/schemas/PluginSnapshot"}
    assert schema_of(spec, "PluginSnapshot") == field_names(PluginSnapshot) == set(raw)
    assert schema_of(spec, "ReplicaSnapshot") == field_names(ReplicaSnapshot) == set(raw["replicas"][0])
    assert schema_of(spec, "Endpoint") == field_names(Endpoint) == set(raw["endpoints"][0])
    assert set(spec["components"]["schemas"]["PluginState"]["enum"]) == {s.value for s in PluginState}
    assert raw["endpoints"][0]["gateway_url"] == f"{url}/api/plugins/web/whoami"
    assert raw["manifest_path"].endswith("manifest.json") and raw["timeout"] > 0  # once dropped by PluginOut

    client = RemoteClient(url, token)
    try:
        seen = await client.plugin("web")
        listed = {p.key: p for p in await client.plugins()}["web"]
    finally:
        await client.close()
    # Decoded into the core's own Struct, every field as the API sent it: nothing guessed, nothing dropped.
    assert type(seen) is PluginSnapshot and seen.state is PluginState.RUNNING
    assert type(seen.replicas[1]) is ReplicaSnapshot and seen.replicas[1].state is PluginState.RUNNING
    assert steady(msgspec.json.decode(msgspec.json.encode(seen))) == steady(raw)
    assert seen.last_metrics is not None and seen.last_metrics.key == "web" and seen.cpu_percent is not None
    assert seen.requests >= 1 and listed.requests >= 1


class JsonServer:
    """A real HTTP server on 127.0.0.1 (ephemeral port, in a thread) answering every GET with ``body``: a remote
    that is not quite the supervisor the TUI expects."""

    def __init__(self, body: bytes) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> JsonServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


async def test_an_answer_of_another_shape_is_a_clear_error_not_a_guess() -> None:
    with JsonServer(b'{"key": "web", "restarts": "three"}') as remote:
        client = RemoteClient(remote.url, "token")
        try:
            with pytest.raises(ClientError, match=r"unexpected body: Expected `int`, got `str` - at `\$.restarts`"):
                await client.plugin("web")
        finally:
            await client.close()
    # An older supervisor's answer, without the newer fields, decodes with a never-ran plugin's values for them.
    with JsonServer(b'{"key": "web", "state": "RUNNING", "requests": 4}') as remote:
        client = RemoteClient(remote.url, "token")
        try:
            assert await client.plugin("web") == PluginSnapshot(key="web", state=PluginState.RUNNING, requests=4)
        finally:
            await client.close()
