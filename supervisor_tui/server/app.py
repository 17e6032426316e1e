"""The top-level ASGI app: dispatches by path prefix before any framework routing runs.

/api/plugins/...                          -> the gateway (raw ASGI, hot path)
/api/consolas/..., console registration
and heartbeats under /api/consoles/       -> the console ingest (raw ASGI, hot path)
everything else (the console admin reads
too)                                      -> the admin app (FastAPI, built at its first request: admin_lazy),
                                             behind a request-body limit
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from supervisor_tui.server.consoles_api import is_ingest
from supervisor_tui.server.errors import send_error

GATEWAY_PREFIX = "/api/plugins/"


class BodyLimit:
    """Answers 413 when a request body is larger than ``limit``, before reading it in full."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    await send_error(send, 400, "bad_request", "invalid Content-Length")
                    return
                if too_big:
                    await send_error(send, 413, "payload_too_large", f"request body over {self.limit} bytes")
                    return
        seen = 0
        started = False
        too_large = False

        async def limited_receive() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    too_large = True
                    raise _TooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if too_large:
                # The app may have caught _TooLarge (FastAPI turns any body-read failure into its own 400):
                # whatever it answers, the client gets the 413.
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await send_error(send, 413, "payload_too_large", f"request body over {self.limit} bytes")
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await send_error(send, 413, "payload_too_large", f"request body over {self.limit} bytes")


class _TooLarge(Exception):
    pass


class RootApp:
    """One ASGI app for the whole HTTP surface."""

    def __init__(self, admin: ASGIApp, gateway: ASGIApp, consoles: ASGIApp, max_body: int) -> None:
        self.admin = admin
        self.gateway = gateway
        self.consoles = consoles
        self.admin_limited = BodyLimit(admin, max_body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path: str = scope["path"]
            if path.startswith(GATEWAY_PREFIX):
                await self.gateway(scope, receive, send)
                return
            if is_ingest(path):
                await self.consoles(scope, receive, send)
                return
            await self.admin_limited(scope, receive, send)
            return
        if scope["type"] == "lifespan":
            await _lifespan_noop(receive, send)
            return
        await self.admin(scope, receive, send)


async def _lifespan_noop(receive: Receive, send: Send) -> None:
    """The runtime owns startup and shutdown; the server's lifespan just acknowledges."""
    while True:
        message: dict[str, Any] = dict(await receive())
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
