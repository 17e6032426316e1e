"""What a client without credentials can make the HTTP server spend: header size and count, slow and idle
connections, the connection cap, Host (DNS rebinding), registration floods and cross-site content types.

Real sockets on 127.0.0.1 against a real uvicorn server (``HttpServer`` with fast_http's protocol), the console
API composed from its real parts, and real ``supervisor-tui --headless`` processes (one with a low open-files limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HeadlessProcess, wait_until
from fixtures.consoles.harness import ConsoleServer, served_consoles
from test_fast_http import Routes, asgi_app, post, read_answer

from supervisor_tui.config import ConfigError, load_settings
from supervisor_tui.server.limits import AllowedHosts, ConnectionLimits, RateLimit, allowed_hosts
from supervisor_tui.server.serve import HttpServer

Headless = Callable[..., HeadlessProcess]


@contextlib.asynccontextmanager
async def serving(**limits: Any) -> AsyncIterator[tuple[int, Routes, list[str]]]:
    """An HttpServer with ``/fast/...`` answered without ASGI and everything else through ``asgi_app``; yields its
    port, the routes and the warnings the limits logged."""
    warnings: list[str] = []
    routes = Routes()
    server = HttpServer()
    _, port = await server.start(
        asgi_app, "127.0.0.1", 0, fast=routes, limits=ConnectionLimits(warn=warnings.append, **limits)
    )
    try:
        yield port, routes, warnings
    finally:
        await server.stop()


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def closed_by_server(reader: asyncio.StreamReader, timeout: float = 10.0) -> bytes:  # noqa: ASYNC109
    """Everything the server sent until it closed the connection (fails if it stays open ``timeout`` s)."""
    return await asyncio.wait_for(reader.read(), timeout)


def error_of(raw: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    """Status, headers and error object of one raw answer."""
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)["error"]


# Targets that take each way through the server: answered by the fast routes, or by the ASGI app.
PATHS = pytest.mark.parametrize("target", ["/fast/x", "/asgi/x"])


# -- the request head ----------------------------------------------------------------------------------------------
@PATHS
async def test_a_head_over_max_header_bytes_gets_431_and_the_connection_closes(target: str) -> None:
    async with serving() as (port, routes, _):
        reader, writer = await connect(port)
        # One header that never ends: 16 MiB offered, the server answers long before it would all be read.
        writer.write(f"POST {target} HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nX-Big: ".encode())
        with contextlib.suppress(ConnectionError):
            for _ in range(256):
                writer.write(b"a" * 65536)
                await writer.drain()
        status, headers, err = error_of(await closed_by_server(reader))
        assert status == 431 and err["code"] == "headers_too_large" and "65536 bytes" in err["message"]
        assert headers["connection"] == "close" and headers["content-type"] == "application/json"
        assert routes.seen == []
        writer.close()


@PATHS
async def test_many_small_headers_over_the_size_or_the_count_get_431(target: str) -> None:
    async with serving(max_header_bytes=8192, max_headers=20) as (port, routes, _):
        for why, extra in (
            ("over the size", [f"X-H{i}: {'v' * 500}" for i in range(18)]),  # 20 lines, 9 KiB
            ("over the count", [f"X-H{i}: v" for i in range(19)]),  # 21 lines, tiny
        ):
            reader, writer = await connect(port)
            writer.write(post(target, b"x", *extra))
            status, _, err = error_of(await closed_by_server(reader))
            assert status == 431 and err["code"] == "headers_too_large", why
            writer.close()
        assert routes.seen == []


@PATHS
async def test_heads_within_the_limits_are_answered(target: str) -> None:
    async with serving(max_header_bytes=8192, max_headers=20) as (port, _, _):
        reader, writer = await connect(port)
        writer.write(post(target, b"x", *[f"X-H{i}: {'v' * 300}" for i in range(18)]))  # 20 lines, ~6 KiB
        status, headers, _ = await read_answer(reader)
        assert status == 200 and headers["x-path"] == target[1:5]
        writer.close()


# -- slow and idle connections ------------------------------------------------------------------------------------
@PATHS
async def test_a_slow_head_gets_408_after_the_header_timeout(target: str) -> None:
    async with serving(header_timeout=0.5) as (port, routes, _):
        reader, writer = await connect(port)
        writer.write(f"POST {target} HTTP/1.1\r\nHost: t\r\n".encode())  # half a head, then nothing
        status, headers, err = error_of(await closed_by_server(reader))
        assert status == 408 and err["code"] == "request_timeout" and headers["connection"] == "close"
        assert routes.seen == []
        writer.close()


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout() -> None:
    async with serving(header_timeout=0.5) as (port, _, _):
        reader, writer = await connect(port)
        status, _, err = error_of(await closed_by_server(reader))
        assert status == 408 and err["code"] == "request_timeout"
        writer.close()


@PATHS
async def test_the_header_timeout_applies_to_each_request_on_a_keep_alive_connection(target: str) -> None:
    async with serving(header_timeout=0.5, idle_timeout=60.0) as (port, _, _):
        reader, writer = await connect(port)
        writer.write(post(target))
        assert (await read_answer(reader))[0] == 200
        writer.write(f"POST {target} HTTP/1.1\r\n".encode())  # the next head starts and stalls
        status, _, err = error_of(await closed_by_server(reader))
        assert status == 408 and err["code"] == "request_timeout"
        writer.close()


async def test_a_head_timing_out_behind_a_pending_answer_lets_that_answer_finish() -> None:
    async with serving(header_timeout=0.5) as (port, routes, _):
        reader, writer = await connect(port)
        writer.write(post("/fast/later") + b"POST /fast/next HTTP/1.1\r\n")  # the second head stalls
        await wait_until(lambda: routes.pending)
        with pytest.raises(TimeoutError):  # no 408 while the first answer is pending
            await asyncio.wait_for(reader.read(1), 1.0)
        routes.release()
        status, headers, _ = await read_answer(reader)
        assert status == 201 and headers["connection"] == "close"
        assert await closed_by_server(reader) == b""
        writer.close()


@PATHS
async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(target: str) -> None:
    async with serving(header_timeout=60.0, idle_timeout=0.3) as (port, _, _):
        reader, writer = await connect(port)
        writer.write(post(target))
        assert (await read_answer(reader))[0] == 200
        assert await closed_by_server(reader) == b""  # closed without a word: nothing was asked
        writer.close()


# -- the connection cap --------------------------------------------------------------------------------------------
async def test_connections_beyond_the_cap_get_503_with_one_warning_per_episode() -> None:
    async with serving(max_connections=5, header_timeout=60.0, idle_timeout=60.0) as (port, _, warnings):
        for episode in (1, 2):
            held = [await connect(port) for _ in range(5)]
            for reader, writer in held:  # each one answered: all five are open on the server
                writer.write(post("/fast/x"))
                assert (await read_answer(reader))[0] == 200
            for _ in range(3):
                reader, writer = await connect(port)
                status, headers, err = error_of(await closed_by_server(reader))
                assert status == 503 and err["code"] == "too_many_connections" and headers["retry-after"] == "1"
                writer.close()
            assert len(warnings) == episode, warnings
            assert "server.max_connections" in warnings[-1] and "ulimit -n" in warnings[-1]
            for _, writer in held:
                writer.close()
                await writer.wait_closed()

            async def answered() -> bool:
                reader, writer = await connect(port)
                try:
                    writer.write(post("/asgi/x"))
                    return (await read_answer(reader))[0] == 200
                except (ConnectionError, asyncio.IncompleteReadError):
                    return False
                finally:
                    writer.close()

            await wait_until(answered, timeout=10)
        assert len(warnings) == 2


# -- Host --------------------------------------------------------------------------------------------------------
def test_allowed_hosts_takes_loopback_names_and_the_listed_patterns() -> None:
    loopback_only = allowed_hosts("127.0.0.1", ())
    assert loopback_only is not None
    for host in (
        b"localhost",
        b"LOCALHOST:4000",
        b"127.0.0.1",
        b"127.8.9.10:80",
        b"[::1]",
        b"[::1]:4000",
        b"a.localhost",
    ):
        assert loopback_only(host), host
    for host in (b"evil.example", b"evil.example:4000", b"10.0.0.1", b"localhost.evil.example", b"[::2]:80", b""):
        assert not loopback_only(host), host
    assert allowed_hosts("0.0.0.0", ()) is None  # bound elsewhere, none listed: any Host
    listed = AllowedHosts(("sup.example", ".corp.example", "10.0.0.0/8"))
    assert allowed_hosts("0.0.0.0", ("sup.example",)) is not None
    for host in (b"sup.example:4000", b"corp.example", b"a.b.corp.example", b"10.1.2.3:80", b"localhost:1"):
        assert listed(host), host
    for host in (b"evil.example", b"xcorp.example", b"11.0.0.1", b"sup.example.evil"):
        assert not listed(host), host
    assert AllowedHosts(("*",))(b"anything.example")


@PATHS
async def test_a_refused_host_gets_400_on_every_path_and_loopback_names_pass(target: str) -> None:
    async with serving(allowed_hosts=allowed_hosts("127.0.0.1", ())) as (port, routes, _):
        for host in ("localhost:4000", "127.0.0.1", "[::1]:4000"):
            reader, writer = await connect(port)
            writer.write(post(target).replace(b"Host: t", f"Host: {host}".encode()))
            assert (await read_answer(reader))[0] == 200, host
            writer.close()
        seen = len(routes.seen)
        reader, writer = await connect(port)
        writer.write(post(target).replace(b"Host: t", b"Host: rebound.example:4000"))
        status, _, err = error_of(await closed_by_server(reader))
        assert status == 400 and err["code"] == "host_not_allowed" and "rebound.example" in err["message"]
        assert len(routes.seen) == seen
        writer.close()


@PATHS
async def test_a_second_host_header_gets_400_whichever_comes_first(target: str) -> None:
    async with serving(allowed_hosts=allowed_hosts("127.0.0.1", ())) as (port, routes, _):
        for extra in (b"Host: rebound.example", b"Host: 127.0.0.1"):
            reader, writer = await connect(port)
            writer.write(post(target).replace(b"Host: t", b"Host: 127.0.0.1\r\n" + extra))
            status, _, err = error_of(await closed_by_server(reader))
            assert status == 400 and "more than one Host" in err["message"], err
            writer.close()
        assert routes.seen == []


async def test_a_refused_host_gets_400_on_a_websocket_upgrade() -> None:
    async with serving(allowed_hosts=allowed_hosts("127.0.0.1", ())) as (port, _, _):
        reader, writer = await connect(port)
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: rebound.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        status, _, err = error_of(await closed_by_server(reader))
        assert status == 400 and err["code"] == "host_not_allowed"
        writer.close()


# -- settings ------------------------------------------------------------------------------------------------------
def test_limit_settings_come_from_env_and_bad_values_name_the_key(tmp_path: Path) -> None:
    env = {
        "SUPERVISOR_TUI_SERVER_MAX_HEADER_BYTES": "16KiB",
        "SUPERVISOR_TUI_SERVER_MAX_HEADERS": "50",
        "SUPERVISOR_TUI_SERVER_HEADER_TIMEOUT": "2s",
        "SUPERVISOR_TUI_SERVER_IDLE_TIMEOUT": "500ms",
        "SUPERVISOR_TUI_SERVER_MAX_CONNECTIONS": "7",
        "SUPERVISOR_TUI_SERVER_ALLOWED_HOSTS": "sup.example, .corp.example",
        "SUPERVISOR_TUI_CONSOLES_REGISTER_RATE": "5",
        "SUPERVISOR_TUI_CONSOLES_REGISTER_RATE_GLOBAL": "50",
    }
    limits = ConnectionLimits.from_settings(load_settings(env=env, base_dir=tmp_path))
    assert (limits.max_header_bytes, limits.max_headers, limits.header_timeout, limits.idle_timeout) == (
        16384,
        50,
        2.0,
        0.5,
    )
    assert limits.max_connections == 7
    assert limits.allowed_hosts is not None and limits.allowed_hosts(b"x.corp.example")
    defaults = ConnectionLimits.from_settings(load_settings(env={}, base_dir=tmp_path))
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert defaults.max_headers == 100 and defaults.max_header_bytes == 65536 and defaults.header_timeout == 15.0
    assert defaults.max_connections == max(8, min(32768, soft // 2))
    for key, value in (
        ("SUPERVISOR_TUI_SERVER_MAX_HEADER_BYTES", "10"),
        ("SUPERVISOR_TUI_SERVER_HEADER_TIMEOUT", "0"),
        ("SUPERVISOR_TUI_SERVER_MAX_HEADERS", "lots"),
        ("SUPERVISOR_TUI_SERVER_ALLOWED_HOSTS", "bad host!"),
        ("SUPERVISOR_TUI_CONSOLES_REGISTER_RATE", "-1"),
    ):
        with pytest.raises(ConfigError) as info:
            load_settings(env={key: value}, base_dir=tmp_path)
        assert key.removeprefix("SUPERVISOR_TUI_").lower().replace("_", ".", 1) in str(info.value)


# -- console registration and heartbeats ---------------------------------------------------------------------------
CID = "550e8400-e29b-41d4-a716-446655440000"


@pytest.fixture(params=["fast", "asgi"])
def path(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def console_count(client: httpx.AsyncClient, srv: ConsoleServer) -> int:
    r = await client.get("/api/consoles", headers=srv.admin)
    return int(r.json()["total"])


async def test_registrations_over_the_rate_get_429_per_address_and_in_total(tmp_path: Path, path: str) -> None:
    async with (
        served_consoles(tmp_path, path=path, consoles__register_rate=3, consoles__register_rate_global=5) as srv,
        httpx.AsyncClient(base_url=srv.url) as first,
        httpx.AsyncClient(base_url=srv.url, transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2")) as second,
    ):
        for i in range(3):
            r = await first.post("/api/consoles/register", json={"id": f"a{i}", "name": f"A{i}"})
            assert r.status_code == 201, r.text
        r = await first.post("/api/consolas/registrar", json={"id": "a3", "nombre": "A3"})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
        err = r.json()["error"]
        assert err["code"] == "rate_limited" and "consoles.register_rate" in err["message"]
        # Another address has its own bucket, until the shared one (5 a minute) runs dry too.
        for i in range(2):
            r = await second.post("/api/consoles/register", json={"id": f"b{i}", "name": f"B{i}"})
            assert r.status_code == 201, r.text
        r = await second.post("/api/consoles/register", json={"id": "b2", "name": "B2"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited"
        assert await console_count(first, srv) == 5  # nothing stored for the refused ones


async def test_by_default_one_address_gets_60_registrations_a_minute_then_429(tmp_path: Path) -> None:
    # The bucket holds 60 and refills one a second while the requests go out, so a loaded machine may see a
    # 61st go through: count what the bucket allows for the time the requests took, not a fixed 60.
    async with served_consoles(tmp_path) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        started = time.monotonic()
        accepted = 0
        while (
            r := await client.post("/api/consoles/register", json={"id": f"c{accepted}", "name": "C"})
        ).status_code == 201:
            accepted += 1
            allowed = 60 + (time.monotonic() - started) * 60 / 60  # a full bucket, and what refilled meanwhile
            assert accepted <= allowed, f"{accepted} registrations went through where the bucket allows {allowed:.1f}"
        assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limited", r.text
        assert accepted >= 60
        assert await console_count(client, srv) == accepted  # nothing stored for the refused one


async def test_refused_content_types_do_not_use_up_the_registration_budget(tmp_path: Path) -> None:
    # What a web page can send cross-site (text/plain) is refused before the rate limit counts it, so a page
    # flooding the endpoint cannot lock real consoles out.
    async with (
        served_consoles(tmp_path, consoles__register_rate=2, consoles__register_rate_global=2) as srv,
        httpx.AsyncClient(base_url=srv.url) as client,
    ):
        body = json.dumps({"id": CID, "nombre": "N"})
        for _ in range(5):
            r = await client.post("/api/consolas/registrar", content=body, headers={"Content-Type": "text/plain"})
            assert r.status_code == 415, r.text
        r = await client.post("/api/consolas/registrar", content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 201, r.text


def test_a_rate_limit_bucket_refills_at_its_rate() -> None:
    now = [1000.0]
    limit = RateLimit(per_client=2, total=0, clock=lambda: now[0])
    assert limit.take("a") == 0 and limit.take("a") == 0
    assert limit.take("a") == pytest.approx(30.0)  # one token every 30 s at 2 a minute
    assert limit.take("b") == 0
    now[0] += 30.0
    assert limit.take("a") == 0 and limit.take("a") > 0


async def test_registration_and_heartbeats_need_a_json_content_type(tmp_path: Path, path: str) -> None:
    async with served_consoles(tmp_path, path=path) as srv, httpx.AsyncClient(base_url=srv.url) as client:
        body = json.dumps({"id": CID, "nombre": "N"})
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            r = await client.post("/api/consolas/registrar", content=body, headers=headers)
            assert r.status_code == 415, (content_type, r.text)
            assert r.json()["error"]["code"] == "unsupported_media_type"
        assert await console_count(client, srv) == 0
        r = await client.post(
            "/api/consolas/registrar", content=body, headers={"Content-Type": "Application/JSON; charset=utf-8"}
        )
        assert r.status_code == 201, r.text
        auth = {"Authorization": f"Bearer {r.json()['token']}"}
        heartbeat = json.dumps({"estado": "ocupada"})
        for url in (f"/api/consolas/{CID}/heartbeat", f"/api/consoles/{CID}/heartbeat"):
            r = await client.post(url, content=heartbeat, headers={**auth, "Content-Type": "text/plain"})
            assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text
            r = await client.post(url, content=heartbeat, headers=auth)  # none at all: the same answer
            assert r.status_code == 415, r.text
        r = await client.get(f"/api/consoles/{CID}", headers=srv.admin)
        assert r.json()["heartbeats"] == 0 and r.json()["state"] == "idle"


# -- the real supervisor: settings reach the server, on every part of the HTTP surface -----------------------------
async def started(headless: Headless) -> tuple[HeadlessProcess, int]:
    proc = headless()
    url = (await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"]
    return proc, int(url.rsplit(":", 1)[1])


async def test_headless_applies_the_header_limits_and_timeouts_from_settings(
    headless: Headless, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERVISOR_TUI_SERVER_HEADER_TIMEOUT", "0.5")
    monkeypatch.setenv("SUPERVISOR_TUI_SERVER_IDLE_TIMEOUT", "0.3")
    _, port = await started(headless)
    # A slowloris head: 408, closed.
    reader, writer = await connect(port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: a")
    status, _, err = error_of(await closed_by_server(reader))
    assert status == 408 and err["code"] == "request_timeout"
    writer.close()
    # An idle keep-alive connection: closed well before uvicorn's own 5 s.
    reader, writer = await connect(port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert (await read_answer(reader))[0] == 200
    assert await closed_by_server(reader, timeout=4.0) == b""
    writer.close()
    # 16 MiB of one header, and 100,000 headers: 431 long before the end.
    for filler in (b"a" * 65536, b"X-A: b\r\n" * 8192):
        reader, writer = await connect(port)
        writer.write(b"POST /api/consolas/registrar HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        with contextlib.suppress(ConnectionError):
            for _ in range(256):
                writer.write(filler)
                await writer.drain()
        status, _, err = error_of(await closed_by_server(reader))
        assert status == 431 and err["code"] == "headers_too_large"
        writer.close()


async def test_headless_refuses_connections_over_the_cap_and_says_so_once(
    headless: Headless, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERVISOR_TUI_SERVER_MAX_CONNECTIONS", "5")
    proc, port = await started(headless)
    held = [await connect(port) for _ in range(5)]
    for reader, writer in held:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert (await read_answer(reader))[0] == 200
    for _ in range(3):
        reader, writer = await connect(port)
        status, _, err = error_of(await closed_by_server(reader))
        assert status == 503 and err["code"] == "too_many_connections"
        writer.close()
    for _, writer in held:
        writer.close()

    async def health() -> bool:
        async with httpx.AsyncClient() as client:
            with contextlib.suppress(httpx.HTTPError):
                return (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200
        return False

    await wait_until(health, timeout=10)
    warnings = proc.find(lambda r: r.get("event") == "connection_limit")
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert "server.max_connections" in warnings[0]["message"]


async def test_headless_bound_to_loopback_answers_only_loopback_hosts_everywhere(headless: Headless) -> None:
    _, port = await started(headless)
    requests = [
        b"GET /health HTTP/1.1\r\nHost: %s\r\n\r\n",  # admin API
        b"GET /api/plugins/nope/x HTTP/1.1\r\nHost: %s\r\n\r\n",  # gateway
        b"POST /api/consolas/registrar HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
        b'Content-Length: 27\r\n\r\n{"id": "c1", "nombre": "C"}',  # console registration
        b"GET /ws/events HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",  # events websocket
    ]
    for request in requests:
        reader, writer = await connect(port)
        writer.write(request % b"rebound.example:4000")
        status, _, err = error_of(await closed_by_server(reader))
        assert status == 400 and err["code"] == "host_not_allowed", request
        writer.close()
    async with httpx.AsyncClient(base_url=f"http://localhost:{port}") as client:
        assert (await client.get("/health")).status_code == 200
        r = await client.post("/api/consolas/registrar", json={"id": "c1", "nombre": "C"})
        assert r.status_code == 201, r.text


@contextlib.contextmanager
def open_files_limit(soft: int) -> Iterator[None]:
    """Children started inside inherit ``soft`` as their RLIMIT_NOFILE (this process gets its own back after)."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


async def test_idle_sockets_under_a_low_open_files_limit_leave_the_supervisor_working(
    headless: Headless, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERVISOR_TUI_SERVER_HEADER_TIMEOUT", "1")
    with open_files_limit(256):
        proc = headless()
    url = (await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"]
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        assert (await client.get("/health")).status_code == 200
    idle = [socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) for _ in range(300)]
    try:
        # While all 300 are still open on this side: the cap (128 under 256) refused the surplus at once, the
        # header timeout closed the rest, and the server has descriptors for new clients again.
        async def registered() -> bool:
            async with httpx.AsyncClient(base_url=url, timeout=2) as fresh:
                with contextlib.suppress(httpx.HTTPError):
                    r = await fresh.post("/api/consolas/registrar", json={"id": "c1", "nombre": "C"})
                    return r.status_code == 201
            return False

        await wait_until(registered, timeout=20)
        for i in range(5):  # not one lucky accept: every new client is served now
            async with httpx.AsyncClient(base_url=url, timeout=2) as fresh:
                r = await fresh.post("/api/consolas/registrar", json={"id": f"d{i}", "nombre": "D"})
                assert r.status_code == 201, r.text
    finally:
        for s in idle:
            s.close()
    assert len(proc.find(lambda r: r.get("event") == "connection_limit")) == 1
