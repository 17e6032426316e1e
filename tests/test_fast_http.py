"""server.fast_http on a real uvicorn server and raw sockets: which requests skip ASGI, answer framing, keep-alive,
pipelining order, errors, disconnects and graceful shutdown with an answer still pending."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import uvicorn
from conftest import wait_until

from supervisor_tui.server.fast_http import Answer, fast_protocol
from supervisor_tui.server.serve import HttpServer


class Routes:
    """``/fast/<word>`` skips ASGI: ``now`` answers at once, ``later`` when the test releases it, ``boom`` raises."""

    max_body = 1024

    def __init__(self) -> None:
        self.pending: list[Answer] = []
        self.seen: list[tuple[str, bytes]] = []

    def match(self, target: bytes) -> str | None:
        return target[6:].decode() if target.startswith(b"/fast/") else None

    def handle(self, route: str, headers: list[tuple[bytes, bytes]], body: bytes, answer: Answer) -> None:
        self.seen.append((route, body))
        if route == "boom":
            raise RuntimeError("a bug in a route")
        if route == "later":
            self.pending.append(answer)
            return
        answer(200, json.dumps({"route": route, "body": body.decode()}).encode(), ((b"x-path", b"fast"),))

    def release(self) -> None:
        for answer in self.pending:
            answer(201, b'{"route": "later"}', ())
        self.pending.clear()


async def asgi_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    payload = json.dumps({"path": scope["path"], "method": scope["method"], "body": body.decode()}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload)), (b"x-path", b"asgi")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


@pytest.fixture
async def served() -> AsyncIterator[tuple[HttpServer, Routes, int]]:
    routes = Routes()
    server = HttpServer(shutdown_timeout=5.0)
    _, port = await server.start(asgi_app, "127.0.0.1", 0, fast=routes)
    try:
        yield server, routes, port
    finally:
        await server.stop()


def post(path: str, body: bytes = b"x", *headers: str, version: str = "1.1") -> bytes:
    lines = [f"POST {path} HTTP/{version}", "Host: t", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def open_with_pending_answer(routes: Routes, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection whose fast request's answer is pending (until ``routes.release()``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/fast/later"))
    await writer.drain()
    await wait_until(lambda: routes.pending, 5, 0.01)
    return reader, writer


async def refuses_connections(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer (after any interim 100 Continue): status, headers, body."""
    status = 100
    while status == 100:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *lines = head.decode().split("\r\n")
        status = int(status_line.split()[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    return status, headers, body


async def test_fast_routes_skip_asgi_and_keep_the_connection(served: tuple[HttpServer, Routes, int]) -> None:
    _, routes, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for word in ("one", "two"):
        writer.write(post(f"/fast/{word}", b"hello"))
        status, headers, body = await read_answer(reader)
        assert status == 200
        assert headers["x-path"] == "fast" and headers["content-type"] == "application/json"
        assert "date" in headers and "connection" not in headers  # keep-alive, the server's default headers
        assert json.loads(body) == {"route": word, "body": "hello"}
    assert routes.seen == [("one", b"hello"), ("two", b"hello")]
    writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /fast/x HTTP/1.1\r\nHost: t\r\n\r\n",  # not a POST
        b"POST /fast/x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n",  # chunked
        b"POST /fast/x HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\nx",  # Expect
        post("/fast/x", b"x" * 2000),  # over max_body: the app decides (413 for the console API)
        post("/slow/x"),  # a target the routes don't match
    ],
)
async def test_everything_else_takes_the_asgi_path(
    served: tuple[HttpServer, Routes, int], request_bytes: bytes
) -> None:
    _, routes, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes)
    status, headers, body = await read_answer(reader)
    assert headers.get("x-path") == "asgi", (status, headers, body)
    assert routes.seen == []
    writer.close()


async def test_pipelined_requests_are_answered_in_order(served: tuple[HttpServer, Routes, int]) -> None:
    _, routes, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    # One write: a fast request answered later, an ASGI request, a fast request answered at once.
    writer.write(post("/fast/later") + b"GET /other HTTP/1.1\r\nHost: t\r\n\r\n" + post("/fast/now", b"3"))
    # One segment on loopback: the server parsed all three in the read that made the first one pending.
    await wait_until(lambda: routes.pending, 5, 0.01)
    routes.release()
    answers = [await read_answer(reader) for _ in range(3)]
    assert [a[0] for a in answers] == [201, 200, 200]
    assert [a[1]["x-path"] if "x-path" in a[1] else "fast-later" for a in answers] == ["fast-later", "asgi", "asgi"]
    assert json.loads(answers[1][2])["path"] == "/other"
    assert json.loads(answers[2][2])["body"] == "3"  # queued behind a pending answer: uvicorn's pipeline, ASGI
    assert routes.seen == [("later", b"x")]  # so the routes never saw the third request
    writer.close()


async def test_connection_close_and_http_10_close_after_the_answer(served: tuple[HttpServer, Routes, int]) -> None:
    _, _, port = served
    for request in (post("/fast/a", b"x", "Connection: close"), post("/fast/b", version="1.0")):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        status, headers, _ = await read_answer(reader)
        assert status == 200 and headers["connection"] == "close"
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the server
        writer.close()


async def test_a_failing_route_answers_500_and_the_connection_goes_on(
    served: tuple[HttpServer, Routes, int], caplog: pytest.LogCaptureFixture
) -> None:
    _, _, port = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    with caplog.at_level(logging.ERROR, logger="supervisor_tui.server.fast_http"):
        writer.write(post("/fast/boom"))
        status, _, body = await read_answer(reader)
    assert status == 500 and json.loads(body)["error"]["code"] == "internal_error"
    assert "a bug in a route" in caplog.text
    writer.write(post("/fast/ok"))
    assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_a_client_gone_before_its_answer_costs_nothing(served: tuple[HttpServer, Routes, int]) -> None:
    server, routes, port = served
    reader, writer = await open_with_pending_answer(routes, port)
    writer.close()
    await writer.wait_closed()
    await wait_until(lambda: server.open_connections == 0, 5, 0.01)  # the server saw the client go
    routes.release()  # writes nothing, raises nothing
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(post("/fast/after"))
    assert (await read_answer(reader))[0] == 200
    writer.close()


async def test_graceful_stop_writes_the_pending_answer_then_closes(served: tuple[HttpServer, Routes, int]) -> None:
    server, routes, port = served
    reader, writer = await open_with_pending_answer(routes, port)
    stopping = asyncio.ensure_future(server.stop())
    await wait_until(lambda: refuses_connections(port), 5, 0.01)  # the shutdown has begun
    assert not stopping.done()  # waiting for the answer
    routes.release()
    status, headers, _ = await read_answer(reader)
    assert status == 201 and headers["connection"] == "close"
    await asyncio.wait_for(stopping, 5)
    writer.close()


async def test_untested_uvicorn_versions_serve_everything_through_asgi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uvicorn, "__version__", "9.0.0")
    routes = Routes()
    assert fast_protocol(routes) is None
    server = HttpServer()
    _, port = await server.start(asgi_app, "127.0.0.1", 0, fast=routes)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(post("/fast/x"))
        _, headers, _ = await read_answer(reader)
        assert headers["x-path"] == "asgi" and routes.seen == []
        writer.close()
    finally:
        await server.stop()
