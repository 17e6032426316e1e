"""The gateway against a real upstream process: routing, status paths, headers, bodies, health reports."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from conftest import REPO, wait_until
from fixtures.gateway.harness import fixture_process, served_gateway
from fixtures.ports import free_port

from supervisor_tui.server.gateway import PluginRoute, RouteTable
from supervisor_tui.server.serve import BindError, HttpServer

ENDPOINTS = (
    ("GET", "/hello"),
    ("GET", "/items/{item_id}"),
    ("PUT", "/items/{item_id}"),
    ("GET", "/echo-request"),
    ("POST", "/upload"),
    ("GET", "/slow"),
    ("GET", "/fail"),
    ("GET", "/hop"),
)


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with fixture_process("upstream.py") as (_, port):
        yield f"http://127.0.0.1:{port}"


def refused_url() -> str:
    """A URL nothing listens on: bind a port, then free it."""
    return f"http://127.0.0.1:{free_port()}"


def error_code(resp: httpx.Response) -> str:
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body["error"]) == {"code", "message"} and body["error"]["message"]
    return str(body["error"]["code"])


@pytest.fixture
async def gw(upstream: str) -> AsyncIterator[tuple[httpx.AsyncClient, RouteTable, list[tuple[str, bool]]]]:
    table = RouteTable([PluginRoute("demo", upstream, ENDPOINTS, max_body=4 * 1024**2)])
    reports: list[tuple[str, bool]] = []
    async with served_gateway(table, lambda key, ok: reports.append((key, ok))) as base:
        async with httpx.AsyncClient(base_url=base, timeout=20) as client:
            yield client, table, reports


async def test_declared_endpoint_is_proxied(gw) -> None:
    client, _, _ = gw
    resp = await client.get("/api/plugins/demo/hello")
    assert resp.status_code == 200 and resp.text == "hello"


async def test_path_params_and_query_string_pass_through_unchanged(gw) -> None:
    client, _, _ = gw
    resp = await client.get("/api/plugins/demo/items/a%20b?x=1&x=2&y=%2F%20&empty=")
    seen = resp.json()
    assert seen["path"] == "/items/a b"
    assert seen["raw_path"] == "/items/a%20b"
    assert seen["query_string"] == "x=1&x=2&y=%2F%20&empty="
    resp = await client.put("/api/plugins/demo/items/42")
    assert resp.json()["method"] == "PUT"


async def test_undeclared_path_and_unknown_plugin_are_404(gw) -> None:
    client, _, _ = gw
    for path in ("/api/plugins/demo/nope", "/api/plugins/demo/items/1/extra", "/api/plugins/demo", "/api/plugins/x/a"):
        resp = await client.get(path)
        assert resp.status_code == 404, path
        assert error_code(resp) in ("endpoint_not_found", "plugin_not_found")


async def test_other_method_is_405_with_allow(gw) -> None:
    client, _, _ = gw
    resp = await client.delete("/api/plugins/demo/items/7")
    assert resp.status_code == 405
    assert resp.headers["allow"] == "GET, HEAD, PUT"
    assert resp.headers["x-request-id"]
    assert error_code(resp) == "method_not_allowed"
    resp = await client.post("/api/plugins/demo/hello")
    assert resp.status_code == 405 and resp.headers["allow"] == "GET, HEAD"


async def test_unavailable_plugin_is_503_with_retry_after(gw, upstream: str) -> None:
    client, table, reports = gw
    table.set(PluginRoute("demo", upstream, ENDPOINTS, available=False, unavailable_reason="state is BACKOFF"))
    resp = await client.get("/api/plugins/demo/hello")
    assert resp.status_code == 503
    assert int(resp.headers["retry-after"]) > 0
    assert error_code(resp) == "plugin_unavailable"
    assert "BACKOFF" in resp.json()["error"]["message"]
    resp = await client.get("/api/plugins/demo/hello", headers={"X-Request-ID": "r-503"})
    assert resp.headers["x-request-id"] == "r-503"
    assert reports == []  # nothing reached an upstream


async def test_refused_upstream_is_502_and_reported(gw) -> None:
    client, table, reports = gw
    table.set(PluginRoute("demo", refused_url(), ENDPOINTS))
    resp = await client.get("/api/plugins/demo/hello")
    assert resp.status_code == 502
    assert error_code(resp) == "upstream_unreachable"
    assert reports == [("demo", False)]


async def test_passive_health_reports_failures_and_the_recovery(gw) -> None:
    client, _, reports = gw
    for _ in range(3):
        assert (await client.get("/api/plugins/demo/fail")).status_code == 500
    assert reports == [("demo", False)] * 3
    assert (await client.get("/api/plugins/demo/hello")).status_code == 200
    assert (await client.get("/api/plugins/demo/hello")).status_code == 200
    assert reports == [("demo", False)] * 3 + [("demo", True)]  # successes only after a failure


async def test_slow_upstream_is_504(gw, upstream: str) -> None:
    client, table, reports = gw
    table.set(PluginRoute("demo", upstream, ENDPOINTS, timeout=0.3))
    resp = await client.get("/api/plugins/demo/slow", params={"wait": "20"})
    assert resp.status_code == 504
    assert error_code(resp) == "upstream_timeout"
    assert reports == [("demo", False)]


async def test_content_length_over_limit_is_413_before_the_body(gw) -> None:
    client, _, _ = gw
    port = client.base_url.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # Only the head: the answer must come without the gateway reading a byte of the 20 MB body.
    writer.write(
        b"POST /api/plugins/demo/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 20000000\r\n"
        b"Content-Type: application/octet-stream\r\n\r\n"
    )
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), 10)
    assert status.startswith(b"HTTP/1.1 413")
    writer.close()


async def test_chunked_body_over_limit_is_cut_with_413(gw, upstream: str) -> None:
    client, _, _ = gw

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(12):
            yield b"z" * 1024**2

    resp = await client.post("/api/plugins/demo/upload", content=chunks())
    assert resp.status_code == 413
    assert error_code(resp) == "body_too_large"
    async with httpx.AsyncClient() as direct:
        uploads = (await direct.get(f"{upstream}/uploads")).json()
    assert all(n < 12 * 1024**2 for n in uploads)


async def test_streamed_upload_within_limit_arrives_whole(gw) -> None:
    client, _, _ = gw

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(3):
            yield b"u" * 1024**2

    resp = await client.post("/api/plugins/demo/upload", content=chunks())
    assert resp.status_code == 200 and resp.json() == {"received": 3 * 1024**2}
    resp = await client.post("/api/plugins/demo/upload", content=b"k" * 1000)
    assert resp.json() == {"received": 1000}


async def test_request_headers_hop_by_hop_dropped_and_forwarded_set(gw, upstream: str) -> None:
    client, _, _ = gw
    resp = await client.get(
        "/api/plugins/demo/echo-request",
        headers={
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "Keep-Alive": "timeout=5",
            "Proxy-Authorization": "Basic eDp5",
            "TE": "trailers",
            "Trailer": "X-Sum",
            "Upgrade": "h2c",
            "X-Keep": "yes",
            "X-Forwarded-For": "10.0.0.9",
            "Host": "public.example:8443",
        },
    )
    seen = {k: v for k, v in resp.json()["headers"]}
    for dropped in ("connection", "x-drop-me", "keep-alive", "proxy-authorization", "te", "trailer", "upgrade"):
        assert dropped not in seen, dropped
    assert seen["x-keep"] == "yes"
    assert seen["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "public.example:8443"
    assert seen["x-forwarded-prefix"] == "/api/plugins/demo"
    # The connection went to the registered upstream, whatever Host the client sent.
    assert seen["host"] == upstream.removeprefix("http://")
    assert seen["x-request-id"] and resp.headers["x-request-id"] == seen["x-request-id"]


async def test_request_id_is_passed_through_and_generated_ids_differ(gw) -> None:
    client, _, _ = gw
    resp = await client.get("/api/plugins/demo/echo-request", headers={"X-Request-ID": "abc-123"})
    assert dict(resp.json()["headers"])["x-request-id"] == "abc-123"
    assert resp.headers["x-request-id"] == "abc-123"
    ids = {(await client.get("/api/plugins/demo/hello")).headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


async def test_response_hop_by_hop_headers_are_dropped(gw) -> None:
    client, _, _ = gw
    resp = await client.get("/api/plugins/demo/hop", headers={"X-Request-ID": "rid-1"})
    assert resp.headers["x-public"] == "ok"
    for dropped in ("x-private", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert dropped not in resp.headers, dropped
    assert resp.headers.get("connection", "keep-alive") == "keep-alive"
    assert resp.headers.get_list("x-request-id") == ["rid-1"]
    assert len(resp.headers.get_list("date")) == 1


async def test_client_disconnect_cancels_the_upstream_request(gw, upstream: str) -> None:
    client, _, _ = gw
    async with httpx.AsyncClient(base_url=upstream) as direct:
        before = (await direct.get("/slow/stats")).json()
        task = asyncio.create_task(client.get("/api/plugins/demo/slow", params={"wait": "30"}))

        async def stats() -> dict[str, int]:
            return dict((await direct.get("/slow/stats")).json())

        async def changed(name: str) -> bool:
            return (await stats())[name] != before[name]

        await wait_until(lambda: changed("slow_started"), 10, 0, failure="the request never reached the upstream")
        task.cancel()  # closes the client's connection mid-request
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_until(lambda: changed("slow_cancelled"), 10, 0, failure="the upstream never saw the request go away")


async def test_stats_snapshot(upstream: str) -> None:
    from supervisor_tui.server.gateway import Gateway

    table = RouteTable([PluginRoute("demo", upstream, ENDPOINTS)])
    gateway = Gateway(table)
    server = HttpServer(shutdown_timeout=1.0)
    host, port = await server.start(gateway, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            for _ in range(3):
                await client.get("/api/plugins/demo/hello")
            await client.get("/api/plugins/demo/fail")
            await client.get("/api/plugins/nobody/x")
    finally:
        await server.stop()
        await gateway.close()
    stats = gateway.stats()
    assert stats.requests_by_plugin() == {"demo": 4}
    series = {(s.plugin, s.method, s.status_class): s for s in stats.series()}
    ok = series[("demo", "GET", "2xx")]
    assert ok.count == 3 and ok.bucket_counts[-1] == 3 and len(ok.bucket_counts) == len(stats.bucket_bounds) + 1
    assert ok.buckets()[-1] == ("+Inf", 3.0) and ok.total_seconds > 0
    assert series[("demo", "GET", "5xx")].count == 1
    assert series[("", "GET", "4xx")].count == 1
    assert stats.in_flight == 0


async def test_bind_failure_is_a_clean_exception() -> None:
    first = HttpServer(shutdown_timeout=1.0)
    host, port = await first.start(lambda *a: None, "127.0.0.1", 0)
    try:
        with pytest.raises(BindError, match=f"{port}"):
            await HttpServer().start(lambda *a: None, host, port)
    finally:
        await first.stop()


def test_error_bodies_are_json() -> None:
    from supervisor_tui.server.errors import error_body

    assert json.loads(error_body("x", 'quote " and \\ and \n')) == {
        "error": {"code": "x", "message": 'quote " and \\ and \n'}
    }


async def test_upstream_connections_are_kept_alive_and_reused(upstream: str) -> None:
    from supervisor_tui.server.gateway import Gateway

    table = RouteTable([PluginRoute("demo", upstream, ENDPOINTS)])
    gateway = Gateway(table)
    server = HttpServer(shutdown_timeout=1.0)
    host, port = await server.start(gateway, "127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            for path in ("/hello", "/items/1", "/hop", "/fail") * 5:
                assert (await client.get(f"/api/plugins/demo{path}")).status_code in (200, 500)
    finally:
        await server.stop()
        await gateway.close()
    assert gateway.stats().upstream_opened == 1


async def test_head_is_allowed_where_get_is_declared(gw) -> None:
    client, _, _ = gw
    resp = await client.head("/api/plugins/demo/echo-request")
    assert resp.status_code == 200 and resp.content == b""
    assert int(resp.headers["content-length"]) > 0
    assert (await client.get("/api/plugins/demo/hello")).text == "hello"


@contextlib.asynccontextmanager
async def raw_upstream(answer: bytes, close_after: bool = True) -> AsyncIterator[str]:
    """A socket-level upstream that reads one request head and writes ``answer`` byte for byte."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        if close_after:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.parametrize(
    ("answer", "status", "body"),
    [
        # Early hints first: only the final answer reaches the client.
        (
            b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            200,
            b"ok",
        ),
        # No Content-Length, no chunking: the body ends with the connection.
        (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end", 200, b"until the end"),
        # The upstream hangs up without a word: 502.
        (b"", 502, None),
    ],
)
async def test_socket_level_upstream_answers(answer: bytes, status: int, body: bytes | None) -> None:
    async with raw_upstream(answer) as url:
        table = RouteTable([PluginRoute("raw", url, (("GET", "/x"),))])
        async with served_gateway(table) as base, httpx.AsyncClient(base_url=base) as client:
            resp = await client.get("/api/plugins/raw/x")
    assert resp.status_code == status
    if body is not None:
        assert resp.content == body
    else:
        assert error_code(resp) == "upstream_unreachable"


async def test_upstream_breaking_off_mid_body_breaks_the_client_response() -> None:
    async with raw_upstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"p" * 1000) as url:
        table = RouteTable([PluginRoute("raw", url, (("GET", "/x"),))])
        async with served_gateway(table) as base, httpx.AsyncClient(base_url=base) as client:
            with pytest.raises(httpx.RemoteProtocolError):
                await client.get("/api/plugins/raw/x")


async def test_a_kept_alive_connection_dropped_by_the_upstream_is_retried_once() -> None:
    """The upstream answers the first request of each connection and hangs up on the second."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nyes"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")), 0
        )
        await reader.readexactly(length)
        writer.write(answer)
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    table = RouteTable([PluginRoute("raw", url, (("GET", "/x"), ("POST", "/x")))])
    try:
        async with served_gateway(table) as base, httpx.AsyncClient(base_url=base) as client:
            assert (await client.get("/api/plugins/raw/x")).text == "yes"
            assert (await client.get("/api/plugins/raw/x")).text == "yes"  # reused, dropped, retried
            # A body cannot be replayed: the same drop is a 502 for a POST.
            resp = await client.post("/api/plugins/raw/x", content=b"once")
            assert resp.status_code == 502
    finally:
        server.close()


async def test_gateway_served_alone_closes_its_pool_on_lifespan_shutdown(upstream: str) -> None:
    from supervisor_tui.server.gateway import Gateway

    gateway = Gateway(RouteTable([PluginRoute("demo", upstream, ENDPOINTS)]))
    server = HttpServer(shutdown_timeout=1.0, lifespan="on")
    host, port = await server.start(gateway, "127.0.0.1", 0)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"http://{host}:{port}/api/plugins/demo/hello")).text == "hello"
    assert gateway.stats().upstream_idle == 1
    await server.stop()
    assert gateway.stats().upstream_idle == 0


async def test_connecting_is_bounded_by_the_timeout_too() -> None:
    """An upstream whose listen queue is full never completes the handshake: 504, not a hang."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        # Fill the accept queue so further connection attempts stall in the handshake.
        fillers = []
        for _ in range(8):
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        try:
            table = RouteTable([PluginRoute("stuck", f"http://127.0.0.1:{port}", (("GET", "/x"),), timeout=0.3)])
            async with served_gateway(table) as base, httpx.AsyncClient(base_url=base, timeout=20) as client:
                resp = await client.get("/api/plugins/stuck/x")
        finally:
            for s in fillers:
                s.close()
    assert resp.status_code == 504
    assert error_code(resp) == "upstream_timeout"


@pytest.mark.parametrize("hang_up", [False, True])
async def test_an_upstream_answering_before_the_whole_body_is_relayed(hang_up: bool) -> None:
    answer = b'HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{"who": "you?"}'

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(64):
            yield b"b" * 65536

    async with raw_upstream(answer, close_after=hang_up) as url:
        table = RouteTable([PluginRoute("raw", url, (("POST", "/x"),))])
        async with served_gateway(table) as base, httpx.AsyncClient(base_url=base) as client:
            resp = await client.post("/api/plugins/raw/x", content=chunks())
    assert resp.status_code == 401 and resp.json() == {"who": "you?"}


async def test_absolute_form_targets_still_go_to_the_registered_upstream(gw, upstream: str) -> None:
    client, _, _ = gw
    port = client.base_url.port
    assert port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"GET http://evil.example:9/api/plugins/demo/echo-request?q=1 HTTP/1.1\r\nHost: evil.example:9\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    seen = json.loads(body)
    assert dict(seen["headers"])["host"] == upstream.removeprefix("http://")
    assert seen["path"] == "/echo-request" and seen["query_string"] == "q=1"


def test_the_gateway_needs_no_package_outside_its_dependencies() -> None:
    """yarl and aiohttp only arrive with the dev extra: a bare install must still compile and serve routes."""
    code = (
        "import sys\n"
        "sys.modules['yarl'] = sys.modules['aiohttp'] = None  # importing them raises ImportError\n"
        "from supervisor_tui.server.gateway import PluginRoute, RouteTable\n"
        "RouteTable([PluginRoute('k', 'http://127.0.0.1:4001/base/', (('GET', '/x'),))])\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1:4001", ("http", "127.0.0.1", 4001, b"", b"127.0.0.1:4001")),
        ("http://127.0.0.1:4001/", ("http", "127.0.0.1", 4001, b"", b"127.0.0.1:4001")),
        ("https://Plugin.Example", ("https", "plugin.example", 443, b"", b"plugin.example")),
        ("HTTP://Host:80/base/", ("http", "host", 80, b"/base", b"host:80")),
        ("http://[0:0:0:0:0:0:0:1]:4001/", ("http", "::1", 4001, b"", b"[::1]:4001")),
        ("http://h:080", ("http", "h", 80, b"", b"h:80")),
        ("http://h:/x", ("http", "h", 80, b"/x", b"h")),
        ("http://u:p@h:5/a", ("http", "h", 5, b"/a", b"u:p@h:5")),
        ("http://h/a b/%7e/%2f/%zz/\u00e9", ("http", "h", 80, b"/a%20b/~/%2F/%25zz/%C3%A9", b"h")),
        ("http://h/a/./b/../c/", ("http", "h", 80, b"/a/c", b"h")),
        ("http://h/%2e%2e/x/", ("http", "h", 80, b"/x", b"h")),
        ("http://h/base?q=1#f", ("http", "h", 80, b"/base", b"h")),
    ],
)
def test_upstream_urls_are_read_in_their_canonical_form(url: str, address: tuple[str, str, int, bytes, bytes]) -> None:
    from supervisor_tui.server.gateway_routes import CompiledRoute

    upstream = CompiledRoute(PluginRoute("k", url, ())).targets[0]
    assert (upstream.scheme, upstream.host, upstream.port) == address[:3]
    assert (upstream.base_path, upstream.host_header) == address[3:]


@pytest.mark.parametrize(
    "url", ["ftp://h/x", "127.0.0.1:4001", "http://", "http:///x", "http://h:port/", "http://h:99999"]
)
def test_an_unusable_upstream_url_is_refused_when_the_route_is_set(url: str) -> None:
    with pytest.raises(ValueError, match=r"upstream for 'k' (must be an http\(s\) URL|is not a valid URL)"):
        RouteTable().set(PluginRoute("k", url, ()))


def test_the_route_table_hands_out_compiled_routes_that_pick_upstreams_round_robin() -> None:
    from supervisor_tui.server.gateway_routes import Upstream

    upstreams = (
        Upstream("replica 1", "http://127.0.0.1:4001"),
        Upstream("replica 2", "http://127.0.0.1:4002", up=False),
        Upstream("node-b", "http://127.0.0.1:4003", via_node=True),
    )
    table = RouteTable([PluginRoute("k", None, (("GET", "/x/{id}"),), upstreams=upstreams)])
    route = table.compiled("k")
    assert route is not None and table.compiled("other") is None
    assert [route.targets[route.pick()].label for _ in range(4)] == ["replica 1", "node-b"] * 2
    assert [t.label for t in route.local_targets] == ["replica 1"]  # a forwarded request never crosses again
    assert route.match("/x/7") == frozenset({"GET", "HEAD"}) and route.match("/x") is None
    route.requests = 5
    table.set(PluginRoute("k", "http://127.0.0.1:4009", (("GET", "/y"),)))
    rebuilt = table.compiled("k")
    assert rebuilt is not None and rebuilt is not route and rebuilt.requests == 5  # counters outlive a rebuild
    assert table.request_counts() == {"k": 5}
