"""uvicorn's httptools protocol with a way around ASGI for a few hot POST routes (the heartbeat ingest).

Per request, uvicorn's ASGI path builds a scope, a request/response cycle with its event, a task running the
app, and two messages for the answer; for a heartbeat that costs more loop time than checking and queueing it.
``fast_protocol(routes)`` gives a protocol class for ``uvicorn.Config(http=...)`` that hands some requests to
``routes`` directly: POST, a request target ``routes.match`` recognizes, a Content-Length body of at most
``routes.max_body`` bytes, no Transfer-Encoding, no ``Expect: 100-continue``, no upgrade, and no answer still
pending on the connection. Once the body is read, ``routes.handle(route, headers, body, answer)`` checks it and
calls ``answer(status, json_body, headers)`` exactly once, then or later (after a group commit); the answer is
written in one piece with the server's default headers (Date), keep-alive and ``Connection: close`` handled as
uvicorn does. Every other request takes uvicorn's ASGI path unchanged; a request that arrives on the connection
while a fast answer is pending queues behind it in uvicorn's pipeline, so answers stay in request order. Graceful
shutdown works as for ASGI requests: the pending answer is written, then the connection closes.

This subclasses uvicorn internals (the parser callbacks, ``cycle``, ``on_response_complete``), so it is used only
with the uvicorn versions it was tested with (``SUPPORTED_UVICORN``); with any other version ``fast_protocol``
returns None and every request takes the ASGI path, which gives the same answers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import uvicorn

Answer = Callable[[int, bytes, Sequence[tuple[bytes, bytes]]], None]

SUPPORTED_UVICORN = ((0, 30), (0, 55))  # [from, to): tested with 0.30.6, 0.40.0 and 0.54.0, as pyproject.toml pins

log = logging.getLogger(__name__)


class FastRoutes(Protocol):
    max_body: int

    def match(self, target: bytes) -> Any | None:
        """The route for this request target (path and query as sent), or None for the ASGI path."""

    def handle(self, route: Any, headers: list[tuple[bytes, bytes]], body: bytes, answer: Answer) -> None:
        """Answer the request through ``answer``, now or later (headers are lower-cased names, raw values)."""


def _version() -> tuple[int, int]:
    try:
        major, minor = uvicorn.__version__.split(".")[:2]
        return int(major), int(minor)
    except ValueError:
        return (0, 0)


def fast_protocol(routes: FastRoutes) -> type | None:
    """A protocol class that serves ``routes`` without ASGI, or None where that is not available (no httptools,
    an untested uvicorn version)."""
    low, high = SUPPORTED_UVICORN
    if not low <= _version() < high:
        return None
    try:
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:
        return None

    class FastHttpProtocol(HttpToolsProtocol):
        def on_headers_complete(self) -> None:
            cycle = self.cycle
            parser = self.parser
            if (
                (cycle is None or cycle.response_complete)
                and parser.get_method() == b"POST"
                and not self.expect_100_continue
                and not parser.should_upgrade()
            ):
                route = routes.match(self.url)
                if route is not None:
                    length = -1
                    for name, value in self.headers:
                        if name == b"content-length":
                            length = int(value) if value.isdigit() else -1
                        elif name == b"transfer-encoding":
                            length = -1
                            break
                    if 0 <= length <= routes.max_body:
                        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
                        self.cycle = _FastCycle(route, keep_alive)  # type: ignore[assignment]
                        return
            super().on_headers_complete()

        def on_body(self, body: bytes) -> None:
            cycle = self.cycle
            if type(cycle) is _FastCycle:
                cycle.body += body
                return
            super().on_body(body)

        def on_message_complete(self) -> None:
            cycle = self.cycle
            if type(cycle) is not _FastCycle:
                super().on_message_complete()
                return

            def answer(status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
                self._answer(cycle, status, body, headers)

            try:
                routes.handle(cycle.route, self.headers, bytes(cycle.body), answer)
            except Exception:  # a bug in a route must cost one 500, not the connection or the server
                log.exception("request to %s failed", self.url[:200].decode("latin-1"))
                answer(500, b'{"error": {"code": "internal_error", "message": "internal server error"}}', ())

        def _answer(self, cycle: _FastCycle, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]]) -> None:
            if cycle.response_complete:
                return
            cycle.response_complete = True
            transport = self.transport
            if cycle.disconnected or transport.is_closing():
                return
            out = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                out += (name, b": ", value, b"\r\n")
            out.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
            for name, value in headers:
                out += (name, b": ", value, b"\r\n")
            if not cycle.keep_alive:
                out.append(b"connection: close\r\n")
            out += (b"\r\n", body)
            transport.write(b"".join(out))
            if cycle.keep_alive:
                self.on_response_complete()  # keep-alive timer, or the next pipelined request
            else:
                transport.close()

    return FastHttpProtocol


class _NoEvent:
    __slots__ = ()

    def set(self) -> None:
        return None


class _FastCycle:
    """A fast request in ``protocol.cycle``: what uvicorn's own code reads there (``response_complete``,
    ``keep_alive`` on shutdown, ``disconnected`` and ``message_event`` when the connection is lost)."""

    __slots__ = ("body", "disconnected", "keep_alive", "response_complete", "route")
    message_event = _NoEvent()

    def __init__(self, route: Any, keep_alive: bool) -> None:
        self.route = route
        self.body = bytearray()
        self.keep_alive = keep_alive
        self.disconnected = False
        self.response_complete = False
