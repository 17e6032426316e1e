"""The gateway: a reverse proxy from ``/api/plugins/{key}{endpoint.path}`` to ``{upstream}{endpoint.path}``.

Public interface:

- ``PluginRoute(key, upstream_base_url, endpoints, available, unavailable_reason, timeout, max_body)``: what the
  gateway knows about one plugin. ``endpoints`` are ``(method, path_template)`` pairs; a template segment
  ``{name}`` matches one non-empty path segment.
- ``RouteTable``: ``set(route)``, ``remove(key)``, ``get(key)``, ``keys()``, ``clear()``. Routes are compiled once
  when set (static paths in a dict, templates as regexes), so the request path does no parsing of manifests.
- ``Gateway(table, on_result=None, connector_limit=..., connector_limit_per_host=..., keepalive_timeout=...)``:
  an ASGI callable for paths under ``/api/plugins/`` (the top-level app dispatches to it by prefix; it also
  serves alone, lifespan included). ``await gateway.close()`` closes the upstream client session.
  ``gateway.stats()`` returns a ``GatewayStats`` snapshot (requests per plugin, latency histograms by plugin,
  method and status class) for ``/metrics`` and the TUI.

Behaviour: an undeclared path is 404, a declared path with another method 405 with ``Allow``, a plugin that is
not available 503 with ``Retry-After``, a refused/reset upstream 502, an upstream that has not answered within
the plugin's timeout 504 (the timeout bounds the wait for the response headers, so long event streams are not
cut), a body over the plugin's ``max_body`` 413 (at once for Content-Length, while streaming for chunked
bodies). Hop-by-hop headers are dropped both ways, ``X-Forwarded-For/Proto/Host/Prefix`` are set and
``X-Request-ID`` is passed through or generated and returned. Bodies stream both ways with back-pressure. When
the client goes away the upstream request is cancelled. The gateway only connects to the upstream of a route
in its table: the authority of the upstream URL always comes from the route, never from the request.

Passive health: ``on_result(key, ok)`` is called for every failed upstream exchange (connection failure,
timeout or a 5xx answer) and for the first success after a failure; the callee counts consecutive failures.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from yarl import URL

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ResultCallback = Callable[[str, bool], None]

PREFIX = "/api/plugins/"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BODY = 10 * 1024 * 1024
RETRY_AFTER = b"5"
# Upper bounds (seconds) of the latency histogram buckets; the last, implicit bucket is +Inf.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# The disconnect watcher costs a task, so it only starts for exchanges still running after this delay.
WATCH_DELAY = 0.05

_HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    )
)
# Request headers the gateway sets itself (or that only make sense on the client's connection).
_REQUEST_DROP = _HOP_BY_HOP | {
    b"host",
    b"expect",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-prefix",
    b"x-request-id",
}
_RESPONSE_DROP = _HOP_BY_HOP | {b"x-request-id"}
_REQUEST_ID_OK = re.compile(rb"^[\x21-\x7e]{1,200}$")
_TEMPLATE_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_STATUS_CLASS = ("1xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_JSON_HEADERS = [(b"content-type", b"application/json")]


@dataclass(frozen=True, slots=True)
class PluginRoute:
    """What the gateway knows about one plugin; ``upstream_base_url`` may be None while the plugin is down."""

    key: str
    upstream_base_url: str | None
    endpoints: tuple[tuple[str, str], ...]
    available: bool = True
    unavailable_reason: str = ""
    timeout: float = DEFAULT_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY


class _CompiledRoute:
    """A PluginRoute prepared for the hot path: matchers, upstream authority and header values precomputed."""

    __slots__ = (
        "allow",
        "available",
        "base_path",
        "forwarded_prefix",
        "key",
        "last_ok",
        "max_body",
        "requests",
        "route",
        "static",
        "templates",
        "timeout",
        "unavailable_body",
        "upstream_host",
        "upstream_port",
        "upstream_scheme",
    )

    def __init__(self, route: PluginRoute) -> None:
        self.route = route
        self.key = route.key
        self.timeout = route.timeout if route.timeout > 0 else None
        self.max_body = route.max_body
        self.forwarded_prefix = (PREFIX + route.key).encode("latin-1")
        self.requests = 0
        self.last_ok = True
        by_path: dict[str, set[str]] = {}
        for method, template in route.endpoints:
            by_path.setdefault(template, set()).add(method.upper())
        self.static: dict[str, frozenset[str]] = {}
        self.templates: list[tuple[re.Pattern[str], frozenset[str]]] = []
        self.allow: dict[frozenset[str], bytes] = {}
        for template, methods in by_path.items():
            frozen = frozenset(methods)
            self.allow.setdefault(frozen, ", ".join(sorted(frozen)).encode("latin-1"))
            if "{" in template:
                self.templates.append((_compile_template(template), frozen))
            else:
                self.static[template] = frozen
        self.upstream_scheme = self.upstream_host = ""
        self.upstream_port: int | None = None
        self.base_path = ""
        available = route.available and route.upstream_base_url is not None
        if route.upstream_base_url is not None:
            url = URL(route.upstream_base_url)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(f"upstream for {route.key!r} must be an http(s) URL, not {route.upstream_base_url!r}")
            self.upstream_scheme, self.upstream_host, self.upstream_port = url.scheme, url.host, url.port
            self.base_path = url.raw_path.rstrip("/")
        self.available = available
        reason = route.unavailable_reason or "the plugin is not running"
        self.unavailable_body = _error_body("plugin_unavailable", f"plugin {route.key!r} is unavailable: {reason}")

    def match(self, path: str) -> frozenset[str] | None:
        methods = self.static.get(path)
        if methods is not None:
            return methods
        for pattern, methods in self.templates:
            if pattern.fullmatch(path):
                return methods
        return None


def _compile_template(template: str) -> re.Pattern[str]:
    parts: list[str] = []
    pos = 0
    for m in _TEMPLATE_PARAM.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        parts.append("[^/]+")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("".join(parts))


class RouteTable:
    """The gateway's routes by plugin key; ``set`` compiles a route, so a bad upstream URL fails there."""

    def __init__(self, routes: Iterable[PluginRoute] = ()) -> None:
        self._compiled: dict[str, _CompiledRoute] = {}
        for route in routes:
            self.set(route)

    def set(self, route: PluginRoute) -> None:
        compiled = _CompiledRoute(route)
        old = self._compiled.get(route.key)
        if old is not None:  # keep the counters across rebuilds of the same key
            compiled.requests, compiled.last_ok = old.requests, old.last_ok
        self._compiled[route.key] = compiled

    def remove(self, key: str) -> None:
        self._compiled.pop(key, None)

    def get(self, key: str) -> PluginRoute | None:
        compiled = self._compiled.get(key)
        return compiled.route if compiled is not None else None

    def keys(self) -> list[str]:
        return list(self._compiled)

    def clear(self) -> None:
        self._compiled.clear()

    def __len__(self) -> int:
        return len(self._compiled)

    def __contains__(self, key: object) -> bool:
        return key in self._compiled


@dataclass(frozen=True, slots=True)
class LatencySeries:
    """One histogram: ``bucket_counts[i]`` counts requests at or below ``LATENCY_BUCKETS[i]`` (cumulative)."""

    plugin: str
    method: str
    status_class: str
    count: int
    sum: float
    bucket_counts: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class GatewayStats:
    """A snapshot of the gateway's counters; ``requests`` counts every request per plugin key."""

    buckets: tuple[float, ...]
    series: tuple[LatencySeries, ...]
    requests: dict[str, int]
    in_flight: int


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class _Exchange:
    """Per-request state shared with the body reader and the disconnect watcher."""

    __slots__ = ("body_done", "client_gone", "finished", "receive", "task", "too_large", "watcher")

    def __init__(self, receive: Receive, task: asyncio.Task[Any] | None, body_done: bool) -> None:
        self.receive = receive
        self.task = task
        self.body_done = body_done
        self.client_gone = False
        self.finished = False
        self.too_large = False
        self.watcher: asyncio.Task[None] | None = None


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


_NOT_FOUND_PREFIX = _error_body("not_found", "no such gateway path; use /api/plugins/{key}{endpoint path}")


class Gateway:
    """ASGI reverse proxy for ``/api/plugins/{key}/...`` over a RouteTable, with one pooled aiohttp client."""

    def __init__(
        self,
        table: RouteTable,
        on_result: ResultCallback | None = None,
        *,
        connector_limit: int = 1024,
        connector_limit_per_host: int = 256,
        keepalive_timeout: float = 30.0,
    ) -> None:
        self.table = table
        self.on_result = on_result
        self._connector_limit = connector_limit
        self._connector_limit_per_host = connector_limit_per_host
        self._keepalive_timeout = keepalive_timeout
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._histograms: dict[tuple[str, str, str], list[float]] = {}
        self._in_flight = 0
        self._rid_prefix = os.urandom(6).hex().encode()
        self._rid_counter = 0

    # -- lifecycle -----------------------------------------------------------------------------------------------

    def _open_session(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self._connector_limit,
            limit_per_host=self._connector_limit_per_host,
            keepalive_timeout=self._keepalive_timeout,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            # Each client's cookies belong to that client: never store or replay them across requests.
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            trust_env=False,
            timeout=aiohttp.ClientTimeout(total=None, connect=None, sock_read=None, sock_connect=None),
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            requote_redirect_url=False,
        )
        return self._session

    async def close(self) -> None:
        """Close the upstream client session and its pooled connections."""
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- metrics -------------------------------------------------------------------------------------------------

    def stats(self) -> GatewayStats:
        """Counters for ``/metrics`` and the TUI: requests per plugin and latency histograms."""
        series = []
        for (plugin, method, status_class), h in self._histograms.items():
            cumulative, running = [], 0
            for n in h[2:]:
                running += int(n)
                cumulative.append(running)
            series.append(LatencySeries(plugin, method, status_class, int(h[0]), h[1], tuple(cumulative)))
        requests = {key: c.requests for key, c in self.table._compiled.items()}
        return GatewayStats(LATENCY_BUCKETS, tuple(series), requests, self._in_flight)

    def _observe(self, plugin: str, method: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        k = (plugin, method, _STATUS_CLASS[status // 100] if status < 600 else "5xx")
        h = self._histograms.get(k)
        if h is None:
            h = self._histograms[k] = [0, 0.0] + [0] * (len(LATENCY_BUCKETS) + 1)
        h[0] += 1
        h[1] += elapsed
        h[2 + bisect_left(LATENCY_BUCKETS, elapsed)] += 1

    def _report(self, route: _CompiledRoute, ok: bool) -> None:
        if self.on_result is None or (ok and route.last_ok):
            return
        route.last_ok = ok
        try:
            self.on_result(route.key, ok)
        except Exception:  # a broken health callback must not break proxying
            pass

    # -- ASGI ----------------------------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            await _send_error(send, 404, _NOT_FOUND_PREFIX)
            self._observe("", method, 404, started)
            return
        slash = path.find("/", len(PREFIX))
        if slash < 0:
            key, sub = path[len(PREFIX) :], ""
        else:
            key, sub = path[len(PREFIX) : slash], path[slash:]
        route = self.table._compiled.get(key)
        if route is None:
            await _send_error(send, 404, _error_body("plugin_not_found", f"no plugin {key!r} behind the gateway"))
            self._observe("", method, 404, started)
            return
        route.requests += 1
        methods = route.match(sub)
        if methods is None:
            await _send_error(
                send, 404, _error_body("endpoint_not_found", f"plugin {key!r} declares no endpoint {sub or '/'!r}")
            )
            self._observe(key, "other", 404, started)
            return
        if method not in methods:
            await _send_error(
                send,
                405,
                _error_body("method_not_allowed", f"{method} is not declared for {sub!r} of plugin {key!r}"),
                [(b"allow", route.allow[methods])],
            )
            self._observe(key, "other", 405, started)
            return
        if not route.available:
            await _send_error(send, 503, route.unavailable_body, [(b"retry-after", RETRY_AFTER)])
            self._observe(key, method, 503, started)
            return
        self._in_flight += 1
        try:
            status = await self._proxy(scope, receive, send, route, method, sub)
        finally:
            self._in_flight -= 1
        self._observe(key, method, status, started)

    async def _proxy(
        self, scope: Scope, receive: Receive, send: Send, route: _CompiledRoute, method: str, sub: str
    ) -> int:
        # Request headers: one pass over the client's byte pairs.
        headers: list[tuple[str, str]] = []
        request_id: bytes | None = None
        host: bytes | None = None
        forwarded_for: bytes | None = None
        content_length = -1
        chunked = False
        connection_tokens: list[bytes] | None = None
        for name, value in scope["headers"]:
            if name in _REQUEST_DROP or name.startswith(b"proxy-"):
                if name == b"host":
                    host = value
                elif name == b"x-request-id":
                    if _REQUEST_ID_OK.match(value):
                        request_id = value
                elif name == b"connection":
                    connection_tokens = [t.strip().lower() for t in value.split(b",")]
                elif name == b"transfer-encoding":
                    chunked = True
                continue
            if name == b"x-forwarded-for":
                forwarded_for = value
                continue
            if name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    await _send_error(send, 400, _error_body("bad_request", "invalid Content-Length"))
                    return 400
            headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if connection_tokens:
            drop = {t.decode("latin-1") for t in connection_tokens}
            headers = [(n, v) for n, v in headers if n not in drop]
        if request_id is None:
            self._rid_counter += 1
            request_id = b"%s-%x" % (self._rid_prefix, self._rid_counter)
        client = scope.get("client")
        client_ip = client[0] if client else ""
        headers.append(
            ("X-Forwarded-For", f"{forwarded_for.decode('latin-1')}, {client_ip}" if forwarded_for else client_ip)
        )
        headers.append(("X-Forwarded-Proto", scope.get("scheme", "http")))
        if host is not None:
            headers.append(("X-Forwarded-Host", host.decode("latin-1")))
        headers.append(("X-Forwarded-Prefix", route.forwarded_prefix.decode("latin-1")))
        headers.append(("X-Request-ID", request_id.decode("latin-1")))

        if content_length > route.max_body:
            await _send_error(
                send,
                413,
                _error_body("body_too_large", f"request body over the limit of {route.max_body} bytes"),
                [(b"x-request-id", request_id)],
            )
            return 413

        # Forward the path as the client encoded it, unless its key segment was encoded differently.
        raw_path: bytes | None = scope.get("raw_path")
        prefix = route.forwarded_prefix
        if raw_path and raw_path.startswith(prefix) and raw_path[len(prefix) : len(prefix) + 1] in (b"/", b""):
            upstream_path = raw_path[len(prefix) :].decode("latin-1")
        else:
            upstream_path = quote(sub, safe="/:@!$&'()*+,;=-._~")
        url = URL.build(
            scheme=route.upstream_scheme,
            host=route.upstream_host,
            port=route.upstream_port,
            path=route.base_path + upstream_path,
            query_string=scope.get("query_string", b"").decode("latin-1"),
            encoded=True,
        )
        has_body = chunked or content_length > 0
        task = asyncio.current_task()
        ex = _Exchange(receive, task, not has_body)
        data = self._body(ex, route.max_body) if has_body else None
        loop = asyncio.get_running_loop()
        watch = loop.call_later(WATCH_DELAY, self._arm_watcher, ex)
        session = self._session or self._open_session()
        response_started = False
        resp: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout(route.timeout):
                    resp = await session.request(
                        method, url, headers=headers, data=data, allow_redirects=False, compress=None
                    )
            except TimeoutError:
                self._report(route, False)
                await _send_error(
                    send,
                    504,
                    _error_body("upstream_timeout", f"plugin {route.key!r} did not answer within {route.timeout} s"),
                    [(b"x-request-id", request_id)],
                )
                return 504
            except (aiohttp.ClientError, OSError) as exc:
                if ex.too_large:
                    await _send_error(
                        send,
                        413,
                        _error_body("body_too_large", f"request body over the limit of {route.max_body} bytes"),
                        [(b"x-request-id", request_id)],
                    )
                    return 413
                if ex.client_gone:
                    return 499
                self._report(route, False)
                await _send_error(
                    send,
                    502,
                    _error_body("upstream_unreachable", f"plugin {route.key!r}: {_describe(exc)}"),
                    [(b"x-request-id", request_id)],
                )
                return 502
            status = resp.status
            self._report(route, status < 500)
            out: list[tuple[bytes, bytes]] = []
            response_connection: list[bytes] | None = None
            for name, value in resp.raw_headers:
                lname = name.lower()
                if lname in _RESPONSE_DROP or lname.startswith(b"proxy-"):
                    if lname == b"connection":
                        response_connection = [t.strip().lower() for t in value.split(b",")]
                    continue
                out.append((lname, value))
            if response_connection:
                out = [(n, v) for n, v in out if n not in response_connection]
            out.append((b"x-request-id", request_id))
            content = resp.content
            chunk = await content.readany()
            if content.at_eof():
                ex.finished = True
                await send({"type": "http.response.start", "status": status, "headers": out})
                response_started = True
                await send({"type": "http.response.body", "body": chunk})
                return status
            await send({"type": "http.response.start", "status": status, "headers": out})
            response_started = True
            if ex.body_done and ex.watcher is None:
                ex.watcher = loop.create_task(self._watch(ex))
            while chunk:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if ex.client_gone:
                    return 499
                chunk = await content.readany()
            ex.finished = True
            await send({"type": "http.response.body", "body": b""})
            return status
        except asyncio.CancelledError:
            if ex.client_gone and task is not None:
                task.uncancel()
                return 499
            raise
        except (aiohttp.ClientError, OSError):
            # The upstream broke off in the middle of the body: the client's connection cannot be reused.
            self._report(route, False)
            if not response_started:
                await _send_error(send, 502, _error_body("upstream_unreachable", "upstream connection lost"))
                return 502
            raise
        finally:
            ex.finished = True
            watch.cancel()
            if ex.watcher is not None:
                ex.watcher.cancel()
            if resp is not None:
                resp.release()

    async def _body(self, ex: _Exchange, limit: int) -> Any:
        """Stream the client's body to the upstream, counting it against the plugin's limit."""
        seen = 0
        receive = ex.receive
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                ex.client_gone = True
                raise _ClientGone()
            body = message.get("body", b"")
            seen += len(body)
            if seen > limit:
                ex.too_large = True
                raise _BodyTooLarge()
            if body:
                yield body
            if not message.get("more_body", False):
                ex.body_done = True
                return

    def _arm_watcher(self, ex: _Exchange) -> None:
        if ex.finished or ex.watcher is not None:
            return
        if not ex.body_done:  # the body reader sees a disconnect itself; look again once it is done
            asyncio.get_running_loop().call_later(WATCH_DELAY, self._arm_watcher, ex)
            return
        ex.watcher = asyncio.get_running_loop().create_task(self._watch(ex))

    async def _watch(self, ex: _Exchange) -> None:
        message = await ex.receive()
        if message["type"] == "http.disconnect" and not ex.finished:
            ex.client_gone = True
            if ex.task is not None:
                ex.task.cancel()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"connection to {exc.host}:{exc.port} failed ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the upstream closed the connection without answering"
    text = str(exc)
    return text or type(exc).__name__


async def _send_error(send: Send, status: int, body: bytes, extra: list[tuple[bytes, bytes]] | None = None) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
