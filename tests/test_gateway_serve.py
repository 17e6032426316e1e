"""HttpServer runs uvicorn inside the caller's event loop and leaves the process's signals alone."""

from __future__ import annotations

import asyncio
import signal
import socket
from typing import Any

import httpx

from supervisor_tui.server.serve import HttpServer, bind_socket


class HeldApp:
    """Answers every request only once ``release`` is set; ``arrived`` tells a request is in."""

    def __init__(self) -> None:
        self.arrived = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.arrived.set()
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"done"})


async def test_signals_stay_with_the_host_process() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = HttpServer(shutdown_timeout=1.0)
    app = HeldApp()
    app.release.set()
    host, port = await server.start(app, "127.0.0.1", 0)
    try:
        assert {sig: signal.getsignal(sig) for sig in before} == before
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"http://{host}:{port}/")).text == "done"
    finally:
        await server.stop()
    assert {sig: signal.getsignal(sig) for sig in before} == before


async def test_stop_lets_a_running_request_finish_and_frees_the_port() -> None:
    server = HttpServer(shutdown_timeout=10.0)
    app = HeldApp()
    host, port = await server.start(app, "127.0.0.1", 0)
    async with httpx.AsyncClient() as client:
        request = asyncio.create_task(client.get(f"http://{host}:{port}/"))
        await asyncio.wait_for(app.arrived.wait(), 10)
        stopping = asyncio.create_task(server.stop())
        app.release.set()
        resp = await asyncio.wait_for(request, 10)
        await asyncio.wait_for(stopping, 15)
    assert resp.status_code == 200 and resp.text == "done"
    bind_socket(host, port).close()  # nothing holds the port any more


async def test_stop_is_bounded_when_a_request_never_finishes() -> None:
    server = HttpServer(shutdown_timeout=0.2)
    app = HeldApp()  # never released
    host, port = await server.start(app, "127.0.0.1", 0)
    with socket.create_connection((host, port)) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        await asyncio.wait_for(app.arrived.wait(), 10)
        await asyncio.wait_for(server.stop(), 10)
