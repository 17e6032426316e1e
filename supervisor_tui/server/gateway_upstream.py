"""The gateway's upstream client: pooled keep-alive HTTP/1.1 connections parsed with httptools.

A fenced hack, kept because it was measured: replacing aiohttp with it took the gateway from 0.27 to 0.32 of nginx's
throughput and its p99 from 17 to 9 ms (``bench/proxy.py``); the gateway makes 0.54 of nginx, p99 5.5 ms, today
(README.md, "Performance"). scripts/test_pins.sh runs the gateway tests at both ends of pyproject.toml's httptools
pin, so an httptools release that changes the parser's callbacks fails the test command.

A general-purpose client (aiohttp) builds a request object, a header multidict, a response object and a stream
reader per request; on the gateway's hot path that is most of the cost. This client writes the request head as
bytes straight from the client's header pairs, parses the answer with llhttp, and hands the body over chunk by
chunk with back-pressure in both directions.

``UpstreamPool.acquire(scheme, host, port)`` returns an ``UpstreamConnection`` (reused when one is idle);
``conn.send_head(head, head_only, complete)``, ``conn.write(chunk, last)`` / ``await conn.drain()``,
``await conn.wait_headers()``, ``await conn.read()`` (b"" at the end), then ``pool.release(conn)`` puts it back when
it can be reused.

A connection goes back to the pool only when its exchange ended exactly at a message boundary: the whole request
was written before the first byte of the answer arrived (an upstream answering early may not have read the body,
and would take its rest for the next request), the answer was read to its end, and no byte followed it (extra bytes
would be taken for the answer to the next client's request).
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Any

import httptools

# Pause reading from the upstream when this much body is buffered and the client has not taken it yet.
HIGH_WATER = 256 * 1024


class UpstreamError(ConnectionError):
    """The upstream connection failed or broke off; ``received_any`` says whether any response byte arrived."""

    def __init__(self, message: str, received_any: bool = False) -> None:
        super().__init__(message)
        self.received_any = received_any


class UpstreamConnection(asyncio.Protocol):
    """One keep-alive connection to an upstream; one exchange at a time."""

    __slots__ = (
        "_drain_waiter",
        "_waiter",
        "buffered",
        "chunks",
        "closed",
        "complete",
        "eof_delimited",
        "error",
        "head_only",
        "headers",
        "headers_done",
        "informational",
        "keep_alive",
        "last_used",
        "out_of_step",
        "parser",
        "pool_key",
        "read_paused",
        "received_any",
        "request_sent",
        "reused",
        "status",
        "transport",
        "write_paused",
    )

    def __init__(self, pool_key: tuple[str, str, int]) -> None:
        self.pool_key = pool_key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.last_used = 0.0
        self.reused = False
        self.reset()

    def reset(self) -> None:
        """Forget the last exchange, so the connection can carry the next one (the pool calls it on release)."""
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.headers_done = False
        self.complete = False
        self.keep_alive = True
        self.eof_delimited = True
        self.head_only = False
        self.informational = False
        self.received_any = False
        self.request_sent = False  # the whole request (head and body) has been written
        self.out_of_step = False  # bytes came before the request was sent or after the answer ended
        self.read_paused = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    # -- asyncio.Protocol ----------------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        if self.complete or not self.request_sent:
            self.out_of_step = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if not self.complete:  # bytes after a complete answer leave that answer intact
                self._fail(UpstreamError(f"invalid HTTP response from the upstream: {exc}", True))
            self.close()

    def eof_received(self) -> bool | None:
        return None  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.headers_done and not self.complete and self.eof_delimited:
            self.complete = True  # a body delimited by the end of the connection
            self._wake()
        elif not self.complete:
            detail = f": {exc}" if exc else ""
            self._fail(UpstreamError(f"the upstream closed the connection{detail}", self.received_any))
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks -------------------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # A second answer in the same read: stop the parser before it overwrites the first one.
            self.out_of_step = True
            raise UpstreamError("bytes after the end of the upstream's answer", True)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        status = parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): not the response, wait for the final one.
            self.informational = True
            self.headers = []
            return
        self.status = status
        self.keep_alive = parser.should_keep_alive()
        for name, value in self.headers:
            lname = name.lower()
            if lname == b"content-length" or (lname == b"transfer-encoding" and b"chunked" in value.lower()):
                self.eof_delimited = False
                break
        if self.status in (204, 304) or self.status < 200:
            self.eof_delimited = False
        self.headers_done = True
        if self.head_only:
            # llhttp expects the body a Content-Length announces; after a HEAD there is none, so the
            # connection's parser state is unusable and the connection is not reused.
            self.complete = True
            self.keep_alive = False
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.head_only:
            return
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self.read_paused and self.transport is not None:
            self.read_paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        self.complete = True
        self._wake()

    # -- the exchange --------------------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.error is None:
            self.error = error
        self._wake()

    def send_head(self, head: bytes, head_only: bool, complete: bool) -> None:
        """Start an exchange by writing the request head (and whatever body bytes are appended to it);
        ``complete``: that is the whole request."""
        self.head_only = head_only
        self.request_sent = complete
        assert self.transport is not None
        self.transport.write(head)

    def write(self, data: bytes, last: bool = False) -> None:
        """Write more of the request body; ``last``: the request ends with ``data``."""
        if self.transport is not None and not self.closed:
            self.transport.write(data)
            self.request_sent = last

    async def drain(self) -> None:
        """Wait while the upstream's socket buffer is full; raise if the connection is gone."""
        if self.closed:
            raise self.error or UpstreamError("the upstream closed the connection", self.received_any)
        if self.write_paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
            if self.closed:
                raise self.error or UpstreamError("the upstream closed the connection", self.received_any)

    async def wait_headers(self) -> None:
        while not self.headers_done:
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    async def read(self) -> bytes:
        """The body bytes buffered so far (waiting if there are none); b"" once the body is complete."""
        while True:
            chunks = self.chunks
            if chunks:
                data = (
                    chunks.popleft() if len(chunks) == 1 else b"".join([chunks.popleft() for _ in range(len(chunks))])
                )
                self.buffered = 0
                if self.read_paused and self.transport is not None:
                    self.read_paused = False
                    self.transport.resume_reading()
                return data
            if self.complete:
                return b""
            if self.error is not None:
                raise self.error
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter

    @property
    def reusable(self) -> bool:
        return (
            self.complete
            and self.keep_alive
            and self.request_sent
            and not self.out_of_step
            and not self.closed
            and self.error is None
            and not self.chunks
        )

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class UpstreamPool:
    """Idle keep-alive connections per (scheme, host, port), most recently used first."""

    def __init__(self, max_idle_per_host: int = 256, keepalive_timeout: float = 30.0) -> None:
        self.max_idle_per_host = max_idle_per_host
        self.keepalive_timeout = keepalive_timeout
        self._idle: dict[tuple[str, str, int], list[UpstreamConnection]] = {}
        self._ssl: ssl.SSLContext | None = None
        self.opened = 0  # connections opened since the start (for tests and diagnostics)

    async def acquire(self, scheme: str, host: str, port: int) -> UpstreamConnection:
        key = (scheme, host, port)
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if not conn.closed and not conn.received_any:
                conn.reused = True
                return conn
            # Closed, or the upstream spoke while idle (a 408 before hanging up): not a clean connection.
            conn.close()
        return await self._open(key)

    async def _open(self, key: tuple[str, str, int]) -> UpstreamConnection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            kwargs = {"ssl": self._ssl, "server_hostname": host}
        try:
            _, conn = await loop.create_connection(lambda: UpstreamConnection(key), host, port, **kwargs)
        except OSError as exc:
            raise UpstreamError(f"connection to {host}:{port} failed ({exc.strerror or exc})") from exc
        self.opened += 1
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return a finished connection to the pool, or close it when it cannot carry another exchange."""
        if not conn.reusable:
            conn.close()
            return
        conn.reset()
        conn.last_used = time.monotonic()
        idle = self._idle.setdefault(conn.pool_key, [])
        if len(idle) >= self.max_idle_per_host:
            conn.close()
            return
        idle.append(conn)

    def discard(self, conn: UpstreamConnection) -> None:
        conn.close()

    def sweep(self, now: float) -> None:
        """Close connections idle for longer than ``keepalive_timeout`` (and forget closed ones)."""
        limit = now - self.keepalive_timeout
        for key, idle in list(self._idle.items()):
            keep = [c for c in idle if not c.closed and c.last_used >= limit]
            for c in idle:
                if c not in keep:
                    c.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    @property
    def idle_count(self) -> int:
        return sum(len(v) for v in self._idle.values())
