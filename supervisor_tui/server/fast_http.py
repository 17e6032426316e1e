"""uvicorn's httptools protocol with the server's connection limits, and a way around ASGI for a few hot POST
routes (the heartbeat ingest).

A fenced hack, kept because it was measured (``bench/heartbeats.py --rounds 3 --against DIR``; bench/README.md,
"Heartbeats without ASGI"): 45-54 us of event-loop CPU per heartbeat against 63-70 us through ASGI, and 0.41 of
the hello rate against 0.35 with both servers in the same run. scripts/test_pins.sh runs its tests at both ends
of pyproject.toml's uvicorn pin, so a uvicorn release that moves these internals fails the test command.

``fast_protocol(routes, limits)`` gives the protocol class the server uses for every connection. It enforces
``limits`` (server.limits.ConnectionLimits) on every request, whichever path answers it: a request head over
``max_header_bytes`` (counted as it is fed to the parser, so one endless header is cut too) or with more than
``max_headers`` header lines gets 431; a head not complete within ``header_timeout`` of the connection opening
(or of its first byte, on a keep-alive connection) gets 408; a Host that ``allowed_hosts`` refuses gets 400
(a request without Host passes: browsers always send one); a connection beyond ``max_connections`` open ones gets
503 at once. Each of these is the JSON error shape with ``Connection: close``, then the connection closes (after
the answer still pending to an earlier request, if any, instead of this one). Idle keep-alive connections close
after ``idle_timeout`` (uvicorn's ``timeout_keep_alive``).

Without ASGI: per request, uvicorn's ASGI path builds a scope, a request/response cycle with its event, a task
running the app, and two messages for the answer; for a heartbeat that costs more loop time than checking and
queueing it. With ``routes``, the protocol hands some requests to them directly: POST, a request target
``routes.match`` recognizes, a Content-Length body of at most ``routes.max_body`` bytes, no Transfer-Encoding, no
``Expect: 100-continue``, no upgrade, and no answer still pending on the connection. Once the body is read,
``routes.handle(route, headers, body, answer)`` checks it and calls ``answer(status, json_body, headers)`` exactly
once, then or later (after a group commit); the answer is written in one piece with the server's default headers
(Date), keep-alive and ``Connection: close`` handled as uvicorn does. Every other request takes uvicorn's ASGI path
unchanged; a request that arrives on the connection while a fast answer is pending queues behind it in uvicorn's
pipeline, so answers stay in request order. Graceful shutdown works as for ASGI requests: the pending answer is
written, then the connection closes.

This subclasses uvicorn internals (the parser callbacks, ``cycle``, ``on_response_complete``), so it is used only
with the uvicorn versions it was tested with (``SUPPORTED_UVICORN``); with any other version ``fast_protocol``
returns None: every request takes uvicorn's own protocol and ASGI path (the same answers, none of the limits).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import uvicorn

from supervisor_tui.server.errors import error_body
from supervisor_tui.server.limits import ConnectionLimits

Answer = Callable[[int, bytes, Sequence[tuple[bytes, bytes]]], None]

SUPPORTED_UVICORN = ((0, 30), (0, 55))  # [from, to): pyproject.toml's pin, both ends tested by scripts/test_pins.sh

log = logging.getLogger(__name__)

LINGER_SECONDS = 2.0  # how long a refused connection may go on sending before it is closed


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


def fast_protocol(routes: FastRoutes | None, limits: ConnectionLimits | None = None) -> type | None:
    """A protocol class that enforces ``limits`` (defaults: ConnectionLimits()) on every connection and serves
    ``routes`` (if any) without ASGI, or None where that is not available (no httptools, an untested uvicorn)."""
    low, high = SUPPORTED_UVICORN
    if not low <= _version() < high:
        return None
    try:
        import httptools
        from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
    except ImportError:
        return None
    limits = limits or ConnectionLimits()
    max_header_bytes, max_headers, header_timeout = limits.max_header_bytes, limits.max_headers, limits.header_timeout
    check_host = limits.allowed_hosts
    cap = _ConnectionCap(limits.max_connections, limits.warn)

    class FastHttpProtocol(HttpToolsProtocol):
        # Per connection: the head being read (bytes fed and counted, headers seen, the Host) and its deadline.
        _head_timer: asyncio.TimerHandle | None = None
        _in_head = True
        _head_fed = 0
        _head_size = 0
        _header_count = 0
        _host: bytes | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            if not cap.admit(len(self.connections)):
                self.transport = transport
                self._refuse(503, "too_many_connections", cap.message, ((b"retry-after", b"1"),), linger=False)
                return
            super().connection_made(transport)
            self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def connection_lost(self, exc: Exception | None) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # uvicorn's, plus the size of the head: bytes fed while no head was complete (the parser holds a
            # header until it ends, so counting callbacks alone would not bound a single huge header).
            if self._refused:  # answered and closing: what still arrives is dropped
                return
            self._unset_keepalive_if_required()
            if self._in_head:
                self._head_fed += len(data)
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                if self._refused:  # a limit stopped the parser and has answered
                    return
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
                return
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            if self._in_head and self._head_fed > max_header_bytes:
                self._refuse(431, "headers_too_large", f"the request head is over {max_header_bytes} bytes")

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._in_head = True
            self._head_size = self._header_count = 0
            self._host = None
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(header_timeout, self._head_timed_out)

        def on_url(self, url: bytes) -> None:
            self.url += url
            self._head_size += len(url)
            if self._head_size > max_header_bytes:
                self._stop(431, "headers_too_large", f"the request head is over {max_header_bytes} bytes")

        def on_header(self, name: bytes, value: bytes) -> None:
            name = name.lower()
            self._header_count += 1
            self._head_size += len(name) + len(value) + 4
            if self._header_count > max_headers:
                self._stop(431, "headers_too_large", f"the request has over {max_headers} header lines")
            if self._head_size > max_header_bytes:
                self._stop(431, "headers_too_large", f"the request head is over {max_header_bytes} bytes")
            if name == b"host":
                if self._host is not None:  # which one a part behind us would believe is anyone's guess
                    self._stop(400, "bad_request", "the request has more than one Host header")
                self._host = value
            elif name == b"expect" and value.lower() == b"100-continue":
                self.expect_100_continue = True
            self.headers.append((name, value))

        def on_headers_complete(self) -> None:
            self._in_head = False
            self._head_fed = 0
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            if check_host is not None and self._host is not None and not check_host(self._host):
                shown = self._host[:100].decode("latin-1")
                self._stop(400, "host_not_allowed", f"Host {shown!r} is not served here (see server.allowed_hosts)")
            cycle = self.cycle
            parser = self.parser
            if (
                routes is not None
                and (cycle is None or cycle.response_complete)
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
            transport.write(self._response(status, body, headers, cycle.keep_alive))
            if cycle.keep_alive:
                self.on_response_complete()  # keep-alive timer, or the next pipelined request
            else:
                transport.close()

        def _response(self, status: int, body: bytes, headers: Sequence[tuple[bytes, bytes]], keep: bool) -> bytes:
            out = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                out += (name, b": ", value, b"\r\n")
            out.append(b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body))
            for name, value in headers:
                out += (name, b": ", value, b"\r\n")
            if not keep:
                out.append(b"connection: close\r\n")
            out += (b"\r\n", body)
            return b"".join(out)

        def _stop(self, status: int, code: str, message: str) -> None:
            """Answer from inside a parser callback and stop the parser (data_received sees _refused)."""
            self._refuse(status, code, message)
            raise _Refused

        def _refuse(
            self, status: int, code: str, message: str, headers: Sequence[tuple[bytes, bytes]] = (), linger: bool = True
        ) -> None:
            """Answer ``status`` with the error shape and close; while an answer to an earlier request is still
            pending, that one is written first and the connection closes after it, without this answer."""
            self._refused = True
            transport = self.transport
            if transport.is_closing():
                return
            cycle = self.cycle
            if cycle is not None and not cycle.response_complete:
                cycle.keep_alive = False
                transport.pause_reading()
                self.pipeline.clear()
                return
            transport.write(self._response(status, error_body(code, message), headers, False))
            if linger and transport.can_write_eof():
                # Closing with unread request bytes would reset the connection and lose the answer with it:
                # end our side, drop what still arrives (data_received), close after LINGER_SECONDS at most.
                transport.write_eof()
                self._head_timer = self.loop.call_later(LINGER_SECONDS, transport.close)
            else:
                transport.close()

        def _head_timed_out(self) -> None:
            self._head_timer = None
            self._refuse(408, "request_timeout", f"the request head did not arrive within {header_timeout:g} s")

    return FastHttpProtocol


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a request a limit has answered."""


class _ConnectionCap:
    """Admits connections while fewer than ``limit`` are open; one warning per episode of refusals (an episode
    ends when the open connections are down to three quarters of the limit)."""

    def __init__(self, limit: int, warn: Callable[[str], object]) -> None:
        self.limit, self.warn = limit, warn
        self.refusing = False
        self.message = f"over {limit} open connections; retry later"

    def admit(self, open_connections: int) -> bool:
        if open_connections < self.limit:
            if self.refusing and open_connections <= self.limit * 3 // 4:
                self.refusing = False
            return True
        if not self.refusing:
            self.refusing = True
            self.warn(
                f"connection limit reached: {open_connections} client connections are open, new ones are refused "
                f"until some close; raise server.max_connections (now {self.limit}) and the open-files limit "
                "(ulimit -n) if this load is expected"
            )
        return False


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
