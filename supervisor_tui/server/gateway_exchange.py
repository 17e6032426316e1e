"""The gateway's exchanges: one request forwarded to an upstream of its route and the answer relayed back.

``Proxy(pool, latency, outcomes, request_ids)``: ``await proxy.forward(scope, receive, send, route, method, sub,
started)`` runs one exchange in named steps (read the client's head, refuse what cannot go, build the upstream
head, send the request with failover, relay the answer) and returns the status to record, or 0 when it was
recorded already (a streamed answer, observed when its head went out). ``proxy.early_answers()`` counts exchanges
whose upstream answered early; ``await proxy.close()`` stops the ticker.

Balancing: round robin over the route's upstreams that are up. When an upstream cannot be reached (connection
refused, or reset before any byte of an answer), a GET, HEAD or OPTIONS request whose body (if any) is whole in
hand goes to the next upstream, each upstream tried once; any other request gets the 502. A kept-alive connection
the upstream dropped is retried once for bodiless requests.

Time: the route's timeout bounds the wait for the response head (connecting included; a long upload is the
client's pace, and long event streams are not cut), checked every ``TICK`` seconds by one ticker task for every
exchange in flight; exchanges still running after ``WATCH_DELAY`` get a watcher that cancels them when the
client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from supervisor_tui.server.asgi import Receive, Scope, Send
from supervisor_tui.server.errors import error_body, send_json
from supervisor_tui.server.gateway_headers import (
    LAST_CHUNK,
    METHOD_BYTES,
    RequestIds,
    add_forwarded_headers,
    encode_chunk,
    read_client_head,
    request_head,
    request_start,
    request_target,
    response_headers,
)
from supervisor_tui.server.gateway_routes import CompiledRoute, CompiledUpstream
from supervisor_tui.server.gateway_stats import LatencyHistograms, UpstreamOutcomes
from supervisor_tui.server.gateway_upstream import UpstreamConnection, UpstreamError, UpstreamPool

# The disconnect watcher costs a task, so it only starts for exchanges still running after this delay.
WATCH_DELAY = 0.05
# How often deadlines and watchers are looked at: upstream timeouts are this precise.
TICK = 0.05
# Methods a request of which goes to the next upstream when one cannot be reached (nothing was answered yet).
_FAILOVER_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class Exchange:
    """One request on its way: what is sent upstream, and the state shared with the body reader, the ticker and
    the disconnect watcher."""

    __slots__ = (
        "body_done",
        "chunked",
        "client_gone",
        "conn",
        "content_length",
        "deadline",
        "finished",
        "has_body",
        "headers",
        "method",
        "method_bytes",
        "receive",
        "request_id",
        "response_started",
        "route",
        "seen",
        "started",
        "target",
        "task",
        "timed_out",
        "watcher",
    )

    def __init__(self, receive: Receive, route: CompiledRoute, method: str, request_id: bytes) -> None:
        self.receive = receive
        self.route = route
        self.method = method
        self.method_bytes = METHOD_BYTES.get(method) or method.encode("latin-1")
        self.request_id = request_id
        self.task: asyncio.Task[Any] | None = asyncio.current_task()
        self.headers: list[bytes] = []  # the request's header lines but Host, as flat bytes
        self.target = b""  # path and query
        self.content_length = -1
        self.chunked = False
        self.has_body = False
        self.body_done = True  # the client's whole body is in hand (or sent)
        self.client_gone = False
        self.finished = False
        self.timed_out = False
        self.response_started = False
        self.deadline = 0.0  # perf_counter time by which the response head must have arrived; 0 = none
        self.started = time.perf_counter()
        self.seen = 0  # body bytes received from the client
        self.conn: UpstreamConnection | None = None
        self.watcher: asyncio.Task[None] | None = None

    def id_header(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-request-id", self.request_id)]


class Proxy:
    """Forwards exchanges over pooled upstream connections; one ticker watches the deadlines of all of them."""

    def __init__(
        self, pool: UpstreamPool, latency: LatencyHistograms, outcomes: UpstreamOutcomes, request_ids: RequestIds
    ) -> None:
        self.pool = pool
        self.latency = latency
        self.outcomes = outcomes
        self.request_ids = request_ids
        self._inflight: set[Exchange] = set()
        self._ticker: asyncio.Task[None] | None = None

    async def close(self) -> None:
        """Stop the deadline ticker."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker

    def early_answers(self) -> int:
        """Exchanges in flight whose upstream answered before the client's whole body came (their upstream
        connections, out of step, are not reused)."""
        return sum(1 for ex in self._inflight if not ex.body_done and ex.conn is not None and ex.conn.headers_done)

    # -- one exchange, step by step ------------------------------------------------------------------------------

    async def forward(
        self, scope: Scope, receive: Receive, send: Send, route: CompiledRoute, method: str, sub: str, started: float
    ) -> int:
        """Forward one exchange; returns the status to record, or 0 when it was recorded already."""
        head = read_client_head(scope["headers"])
        if head is None:
            await send_json(send, 400, error_body("bad_request", "invalid Content-Length"))
            return 400
        ex = Exchange(receive, route, method, head.request_id or self.request_ids.new())
        if head.content_length > route.max_body:
            return await _answer_too_large(send, ex)
        targets = route.local_targets if head.hopped else route.targets
        if not targets:  # only a hopped request can find none: the route is available
            await send_json(
                send,
                508,
                error_body(
                    "forwarding_loop",
                    f"plugin {route.key!r} is not served on this node, and a request "
                    "another node forwarded is never forwarded again",
                ),
                ex.id_header(),
            )
            return 508
        add_forwarded_headers(head, scope, route.forwarded_prefix, ex.request_id)
        ex.content_length, ex.chunked = head.content_length, head.chunked
        ex.has_body = head.chunked or head.content_length > 0
        ex.body_done = not ex.has_body
        if not ex.has_body:  # the framing of a body is known once its first piece is in (see request_start)
            head.parts.append(b"content-length: 0\r\n\r\n" if head.content_length == 0 else b"\r\n")
        ex.headers = head.parts
        ex.target = request_target(scope, route.forwarded_prefix, sub)

        self._track(ex)
        try:
            try:
                await self._send_request(ex, targets)
            except UpstreamError as exc:
                self.outcomes.report(route, False)
                await send_json(
                    send, 502, error_body("upstream_unreachable", f"plugin {route.key!r}: {exc}"), ex.id_header()
                )
                return 502
            except _BodyTooLarge:
                self._drop_connection(ex)  # out of step: the upstream waits for the rest of the body
                return await _answer_too_large(send, ex)
            except _ClientGone:
                return 499
            return await self._relay_response(ex, send, started)
        except asyncio.CancelledError:
            if ex.task is not None and (ex.client_gone or ex.timed_out):
                ex.task.uncancel()
                return await self._answer_cancelled(ex, send)
            raise
        except UpstreamError:
            # The upstream broke off in the middle of the body: the client's connection cannot be reused.
            self.outcomes.report(route, False)
            raise
        finally:
            self._untrack(ex)

    async def _send_request(self, ex: Exchange, targets: tuple[CompiledUpstream, ...]) -> None:
        """Send the request to the next upstream (failing over when allowed) until its response head is in;
        ``ex.conn`` is then the connection. Raises UpstreamError when no upstream could take it."""
        route = ex.route
        pool = self.pool
        index = route.pick() % len(targets)
        head = request_head(ex.method_bytes, targets[index], ex.target, ex.headers)
        first = b""
        start = head
        chunked = False
        if ex.has_body:
            first = await self._first_body(ex)
            start, chunked = request_start(head, first, ex.content_length, ex.body_done)
        # Another upstream may take the request when this one could not be reached and the request is safe to
        # send twice and still whole in hand (its body not streamed away).
        failovers = len(targets) - 1 if ex.method in _FAILOVER_METHODS and ex.body_done else 0
        stale_retry = True
        while True:
            if route.timeout:  # the timeout covers connecting too
                ex.deadline = time.perf_counter() + route.timeout
            upstream = targets[index]
            try:
                conn = ex.conn = await pool.acquire(upstream.scheme, upstream.host, upstream.port)
                conn.send_head(start, ex.method == "HEAD", ex.body_done)
                if not ex.body_done:
                    await self._stream_body(ex, conn, chunked)
                await conn.wait_headers()
                ex.deadline = 0.0
                return
            except UpstreamError as exc:
                failed, ex.conn = ex.conn, None
                if failed is not None:
                    pool.discard(failed)
                if exc.received_any:
                    raise
                if stale_retry and failed is not None and failed.reused and not ex.has_body:
                    # A kept-alive connection the upstream closed just as it was reused: try a fresh one (not
                    # with a body: it has been consumed and cannot be replayed).
                    stale_retry = False
                    continue
                if not failovers:
                    raise
                failovers -= 1
                stale_retry = True
                index = (index + 1) % len(targets)  # the next one, not the next pick
                head = request_head(ex.method_bytes, targets[index], ex.target, ex.headers)
                start = request_start(head, first, ex.content_length, True)[0] if ex.has_body else head

    async def _stream_body(self, ex: Exchange, conn: UpstreamConnection, chunked: bool) -> None:
        """The rest of the client's body, at the client's pace (no deadline meanwhile). It stops early when the
        upstream answers (a 401, a 413) before taking the whole body: its answer is relayed, and the connection,
        out of step, is not reused."""
        ex.deadline = 0.0
        try:
            await self._send_body(ex, conn, chunked)
        except UpstreamError:
            if not conn.headers_done:
                raise
        if ex.route.timeout:
            ex.deadline = time.perf_counter() + ex.route.timeout

    async def _relay_response(self, ex: Exchange, send: Send, started: float) -> int:
        """Send the upstream's answer to the client: at once when it is whole, else streamed chunk by chunk."""
        conn = ex.conn
        assert conn is not None
        route = ex.route
        status = conn.status
        if status >= 500 or not route.last_ok:
            self.outcomes.report(route, status < 500)
        out = response_headers(conn.headers, ex.request_id)
        pool = self.pool
        if conn.complete:
            # The whole answer is here: hand the connection back before talking to the client.
            chunks = conn.chunks
            body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            chunks.clear()
            ex.conn = None
            pool.release(conn)
            ex.finished = True
            await send({"type": "http.response.start", "status": status, "headers": out})
            ex.response_started = True
            await send({"type": "http.response.body", "body": body})
            return status
        # A streamed answer (a download, an event stream): its latency is the time to the head.
        self.latency.observe(route.key, ex.method, status, started)
        await send({"type": "http.response.start", "status": status, "headers": out})
        ex.response_started = True
        while True:
            chunk = await conn.read()
            if not chunk:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if ex.client_gone:
                return 0
        ex.conn = None
        pool.release(conn)
        ex.finished = True
        await send({"type": "http.response.body", "body": b""})
        return 0

    async def _answer_cancelled(self, ex: Exchange, send: Send) -> int:
        """The exchange was cancelled because the client went away (499, or 0 once the answer had started) or
        the upstream did not answer in time (504)."""
        if ex.client_gone:
            return 0 if ex.response_started else 499
        route = ex.route
        self.outcomes.report(route, False)
        if not ex.response_started:
            await send_json(
                send,
                504,
                error_body("upstream_timeout", f"plugin {route.key!r} did not answer within {route.timeout:g} s"),
                ex.id_header(),
            )
        return 504

    # -- the client's body ---------------------------------------------------------------------------------------

    async def _first_body(self, ex: Exchange) -> bytes:
        """The first piece of the client's body, sent together with the head."""
        message = await ex.receive()
        if message["type"] == "http.disconnect":
            ex.client_gone = True
            raise _ClientGone()
        body: bytes = message.get("body", b"")
        ex.seen = len(body)
        if ex.seen > ex.route.max_body:
            raise _BodyTooLarge()
        if not message.get("more_body", False):
            ex.body_done = True
        return body

    async def _send_body(self, ex: Exchange, conn: UpstreamConnection, chunked: bool) -> None:
        """Stream the rest of the client's body to the upstream, counting it against the plugin's limit."""
        receive = ex.receive
        limit = ex.route.max_body
        while not conn.headers_done:
            message = await receive()
            if message["type"] == "http.disconnect":
                ex.client_gone = True
                raise _ClientGone()
            body: bytes = message.get("body", b"")
            ex.seen += len(body)
            if ex.seen > limit:
                raise _BodyTooLarge()
            more = message.get("more_body", False)
            if chunked:
                conn.write(encode_chunk(body) + (b"" if more else LAST_CHUNK), not more)
            elif body or not more:
                conn.write(body, not more)
            if not more:
                ex.body_done = True
                return
            await conn.drain()

    # -- deadlines and disconnects -------------------------------------------------------------------------------

    def _track(self, ex: Exchange) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="gateway-ticker")
        self._inflight.add(ex)

    def _untrack(self, ex: Exchange) -> None:
        ex.finished = True
        self._inflight.discard(ex)
        if ex.watcher is not None:
            ex.watcher.cancel()
        if ex.conn is not None:  # not handed back to the pool: it cannot carry another exchange
            self._drop_connection(ex)

    def _drop_connection(self, ex: Exchange) -> None:
        """Close the exchange's upstream connection unless it went back to the pool."""
        conn, ex.conn = ex.conn, None
        if conn is not None:
            self.pool.discard(conn)

    async def _tick(self) -> None:
        """Deadlines and disconnect watchers for every exchange in flight, without a timer per request."""
        last_sweep = time.perf_counter()
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            for ex in tuple(self._inflight):
                if ex.finished:
                    continue
                if ex.deadline and now >= ex.deadline and not ex.timed_out:
                    ex.timed_out = True
                    if ex.task is not None:
                        ex.task.cancel()
                elif ex.watcher is None and ex.body_done and now - ex.started >= WATCH_DELAY:
                    ex.watcher = loop.create_task(self._watch(ex))
                if ex.watcher is not None and not ex.deadline and not ex.timed_out:
                    self._inflight.discard(ex)  # nothing left to look at: long streams cost the ticker nothing
            if now - last_sweep >= 1.0:
                last_sweep = now
                self.pool.sweep(time.monotonic())

    async def _watch(self, ex: Exchange) -> None:
        message = await ex.receive()
        if message["type"] == "http.disconnect" and not ex.finished:
            ex.client_gone = True
            if ex.task is not None:
                ex.task.cancel()


async def _answer_too_large(send: Send, ex: Exchange) -> int:
    limit = ex.route.max_body
    await send_json(
        send, 413, error_body("body_too_large", f"request body over the limit of {limit} bytes"), ex.id_header()
    )
    return 413
