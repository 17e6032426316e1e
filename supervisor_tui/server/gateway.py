"""The gateway: a reverse proxy from ``/api/plugins/{key}{endpoint.path}`` to ``{upstream}{endpoint.path}``.

Public interface:

- ``PluginRoute(key, upstream_base_url, endpoints, available, unavailable_reason, timeout, max_body, app,
  upstreams)``: what the gateway knows about one plugin. ``endpoints`` are ``(method, path_template)`` pairs; a
  template segment ``{name}`` matches one non-empty path segment (never ``.`` or ``..``: such paths are refused
  before matching). ``upstreams`` is a tuple of ``Upstream(label, url, up)`` (a replica, later a plugin served by
  another node); ``upstream_base_url`` is the shorthand for one unlabelled upstream. ``route.all_upstreams()``
  lists them, up or not, for views.
- ``RouteTable``: ``set(route)``, ``remove(key)``, ``get(key)``, ``keys()``, ``clear()``. Routes are compiled once
  when set (static paths in a dict, templates as regexes), so the request path does no parsing of manifests.
- ``Gateway(table, on_result=None, max_idle_per_upstream=256, keepalive_timeout=30.0)``:
  an ASGI callable for paths under ``/api/plugins/`` (the top-level app dispatches to it by prefix; it also
  serves alone, lifespan included). ``await gateway.close()`` closes the pooled upstream connections.
  ``gateway.stats()`` returns a ``GatewayStats`` snapshot for ``/metrics`` and the TUI: ``requests_by_plugin()``
  (every request per plugin key since the start, for requests/s), ``series()`` (one ``LatencySeries`` per
  plugin, method and status class: ``count``, ``total_seconds``, cumulative ``bucket_counts`` and
  ``buckets()`` in Prometheus form; latency runs until the response head is sent) and ``in_flight``.

Balancing: requests go round robin over the upstreams that are up. When an upstream cannot be reached (connection
refused, or reset before any byte of an answer), a GET, HEAD or OPTIONS request whose body (if any) is whole in hand
is sent to the next upstream, each upstream tried once; any other request gets the 502. No upstream up is the 503.

Behaviour: a path with a ``.`` or ``..`` segment (``%2e`` counts as a dot), an encoded ``/`` (``%2F``), a backslash (or
``%5C``) or NUL (``%00``) is 400 ``invalid_path``, an undeclared path is 404, a declared path with another method 405
with ``Allow``, a plugin that is not available 503 with ``Retry-After``, a refused/reset upstream 502, an upstream that
has not answered within the plugin's timeout 504 (the timeout bounds the wait for the response headers, so long event
streams are not cut; it is checked every ``TICK`` seconds and covers connecting), a body over the plugin's ``max_body``
413 (at once for Content-Length, while streaming for chunked bodies). HEAD is allowed wherever GET is declared; an
upstream's early answer to a half-sent body is relayed. Hop-by-hop headers are dropped both ways, with those a
Connection header names, except ``Content-Length``, ``Transfer-Encoding`` and ``Host``, which it can never remove;
``X-Forwarded-For/Proto/Host/Prefix`` are set and ``X-Request-ID`` is passed through or generated and returned. The
upstream request is framed by the gateway, never with the client's header: ``Content-Length`` with the client's
(validated) length, a chunked body that arrived whole with its ``Content-Length``, else chunked. Bodies stream both ways
with back-pressure. When the client goes away the upstream request is cancelled. The gateway only connects to the
upstream of a route in its table: the authority of the upstream URL always comes from the route, never from the request.

Upstream connections come from ``gateway_upstream.UpstreamPool`` (keep-alive HTTP/1.1 over httptools, no
per-request client objects); a kept-alive connection the upstream dropped is retried once for bodiless requests.
A connection is reused only after an exchange that ended exactly at a message boundary (see gateway_upstream).

Passive health: ``on_result(key, ok)`` is called for every failed upstream exchange (connection failure,
timeout or a 5xx answer) and for the first success after a failure; the callee counts consecutive failures.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import time
from bisect import bisect_left
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from supervisor_tui.server.errors import error_body, send_json
from supervisor_tui.server.gateway_inprocess import call_plugin_app
from supervisor_tui.server.gateway_upstream import UpstreamConnection, UpstreamError, UpstreamPool

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
# How often deadlines and watchers are looked at: upstream timeouts are this precise.
TICK = 0.05
_METHOD_BYTES = {m: m.encode() for m in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")}
# Methods a request of which goes to the next upstream when one cannot be reached (nothing was answered yet).
_FAILOVER_METHODS = frozenset(("GET", "HEAD", "OPTIONS"))

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
# A fleet node forwarding a request to another node's gateway says so; that node never forwards it again (no
# loops) and keeps the X-Forwarded-Host and -Proto the first node set, which are the client's.
HOP_HEADER = b"x-supervisor-hop"
HOP_LINE = HOP_HEADER + b": 1\r\n"
# Request headers the gateway sets itself (or that only make sense on the client's connection). The framing
# (Content-Length or chunked) is written by the gateway from what it forwards, never copied from the client.
_REQUEST_DROP = _HOP_BY_HOP | {
    HOP_HEADER,
    b"host",
    b"expect",
    b"content-length",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"x-forwarded-prefix",
    b"x-request-id",
}
# The server in front adds its own Date; a second one from the upstream would make the header invalid.
_RESPONSE_DROP = _HOP_BY_HOP | {b"x-request-id", b"date"}
# What a Connection header can never name away: the message's framing (the next hop would read the body as another
# request) and Host.
_ALWAYS_END_TO_END = frozenset((b"content-length", b"transfer-encoding", b"host"))
_REQUEST_ID_OK = re.compile(rb"^[\x21-\x7e]{1,200}$")
_TEMPLATE_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
_LAST_CHUNK = b"0\r\n\r\n"
_STATUS_CLASS = ("1xx", "1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One place a route's requests can go: a label an operator reads (``replica 1``, ``node-b``), a base URL,
    and whether it is up (only upstreams that are up get requests)."""

    label: str
    url: str
    up: bool = True
    via_node: bool = False  # another fleet node's gateway: a request that already crossed one never goes there


@dataclass(frozen=True, slots=True)
class PluginRoute:
    """What the gateway knows about one plugin. ``upstreams``: where its requests go, round robin over those that
    are up; ``upstream_base_url`` is the shorthand for a single unlabelled upstream (used when ``upstreams`` is
    empty; None while the plugin is down)."""

    key: str
    upstream_base_url: str | None
    endpoints: tuple[tuple[str, str], ...]
    available: bool = True
    unavailable_reason: str = ""
    timeout: float = DEFAULT_TIMEOUT
    max_body: int = DEFAULT_MAX_BODY
    app: Any = None  # an in-process plugin's ASGI app: called directly instead of proxying
    upstreams: tuple[Upstream, ...] = ()

    def all_upstreams(self) -> tuple[Upstream, ...]:
        """Every upstream of the route, up or not (the shorthand URL as one upstream labelled "")."""
        if self.upstreams:
            return self.upstreams
        return (Upstream("", self.upstream_base_url),) if self.upstream_base_url is not None else ()


class _CompiledUpstream:
    """An upstream's address prepared for the hot path."""

    __slots__ = ("base_path", "hop", "host", "host_header", "label", "port", "scheme")

    def __init__(self, key: str, upstream: Upstream) -> None:
        self.label = upstream.label
        self.hop = HOP_LINE if upstream.via_node else b""  # marks a request this node forwards to another node
        scheme, host, port, path, authority = _upstream_address(key, upstream.url)
        self.scheme, self.host, self.port = scheme, host, port
        self.base_path = path.rstrip("/").encode("latin-1")
        self.host_header = authority.encode("latin-1")


class _CompiledRoute:
    """A PluginRoute prepared for the hot path: matchers, upstream addresses and header values precomputed."""

    __slots__ = (
        "allow",
        "available",
        "forwarded_prefix",
        "key",
        "last_ok",
        "local_targets",
        "max_body",
        "next_upstream",
        "requests",
        "route",
        "static",
        "targets",
        "templates",
        "timeout",
        "unavailable_body",
    )

    def __init__(self, route: PluginRoute) -> None:
        self.route = route
        self.key = route.key
        self.timeout = route.timeout if route.timeout > 0 else 0.0
        self.max_body = route.max_body
        self.forwarded_prefix = (PREFIX + route.key).encode("latin-1")
        self.requests = 0
        self.last_ok = True
        self.next_upstream = 0  # round robin position over ``targets``
        by_path: dict[str, set[str]] = {}
        for method, template in route.endpoints:
            by_path.setdefault(template, set()).add(method.upper())
        self.static: dict[str, frozenset[str]] = {}
        self.templates: list[tuple[re.Pattern[str], frozenset[str]]] = []
        self.allow: dict[frozenset[str], bytes] = {}
        for template, methods in by_path.items():
            if "GET" in methods:  # HEAD is GET without the body, as every HTTP server treats it
                methods.add("HEAD")
            frozen = frozenset(methods)
            self.allow.setdefault(frozen, ", ".join(sorted(frozen)).encode("latin-1"))
            if "{" in template:
                self.templates.append((_compile_template(template), frozen))
            else:
                self.static[template] = frozen
        upstreams = route.all_upstreams()
        compiled = [(_CompiledUpstream(route.key, u), u.up) for u in upstreams]  # every URL is checked, up or not
        self.targets: tuple[_CompiledUpstream, ...] = tuple(c for c, up in compiled if up)
        self.local_targets = tuple(c for c in self.targets if not c.hop)  # for requests another node forwarded
        self.available = route.available and (bool(self.targets) or route.app is not None)
        reason = route.unavailable_reason or (
            "none of its upstreams is up" if upstreams and route.app is None else "the plugin is not running"
        )
        self.unavailable_body = error_body("plugin_unavailable", f"plugin {route.key!r} is unavailable: {reason}")

    def pick(self) -> int:
        """The index in ``targets`` of the next upstream that is up, round robin."""
        if len(self.targets) == 1:
            return 0
        i = self.next_upstream
        self.next_upstream = i + 1
        return i % len(self.targets)

    def match(self, path: str) -> frozenset[str] | None:
        methods = self.static.get(path)
        if methods is not None:
            return methods
        for pattern, methods in self.templates:
            if pattern.fullmatch(path):
                return methods
        return None


def _upstream_address(key: str, url: str) -> tuple[str, str, int, str, str]:
    """``(scheme, host, port, path, authority)`` of an upstream base URL: the host lowercased (IPv6 compressed,
    IDNA encoded), the scheme's default port unless one is given, the path percent-encoded without dot segments,
    the authority as the Host header sends it. Raises ValueError for anything but an http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as exc:
        raise ValueError(f"upstream for {key!r} is not a valid URL: {url!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"upstream for {key!r} must be an http(s) URL, not {url!r}")
    if ":" in host:  # IPv6; a zone is written "%25zone" in a URL
        with contextlib.suppress(ValueError):
            host = ipaddress.IPv6Address(unquote(host)).compressed
        named = "[" + host.replace("%", "%25") + "]"
    else:
        host = named = host if host.isascii() else host.encode("idna").decode("ascii")
    userinfo, at, _ = parts.netloc.rpartition("@")
    authority = f"{userinfo}{at}{named}" + (f":{port}" if port is not None else "")
    default = 443 if parts.scheme == "https" else 80
    return parts.scheme, host, port or default, _normalised_path(parts.path), authority


# Characters a path keeps as they are; of these, an escape is decoded too, except for "+" and "/".
_PATH_SAFE = "!$&'()*+,;=:@/"
_PATH_DECODED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*,;=:@")
_ESCAPE = re.compile(r"(%[0-9A-Fa-f]{2})")


def _normalised_path(path: str) -> str:
    """A URL path in its canonical form: escapes of plain characters decoded, other escapes upper case, what
    needs escaping escaped (UTF-8), then ``.`` and ``..`` segments resolved (RFC 3986, 5.2.4)."""
    pieces = _ESCAPE.split(path)
    for i, piece in enumerate(pieces):
        if i % 2:
            char = chr(int(piece[1:], 16))
            pieces[i] = char if char in _PATH_DECODED else piece.upper()
        else:
            pieces[i] = quote(piece, safe=_PATH_SAFE)
    quoted = "".join(pieces)
    if "." not in quoted:
        return quoted
    prefix, rest = ("/", quoted[1:]) if quoted.startswith("/") else ("", quoted)
    segments = rest.split("/")
    resolved: list[str] = []
    for segment in segments:
        if segment == "..":
            if resolved:
                resolved.pop()
        elif segment != ".":
            resolved.append(segment)
    if segments[-1] in (".", ".."):
        resolved.append("")
    return prefix + "/".join(resolved)


def _path_refusal(path: str, raw_path: bytes | None) -> str | None:
    """Why a request path is refused before routing, or None. A ``.`` or ``..`` segment (``%2e`` decodes to
    one) matches a ``{param}`` and steps out of the declared endpoint on a plugin that normalises paths; an
    encoded ``/`` or a backslash cuts segments differently there; NUL ends strings."""
    if "." in path:
        for segment in path.split("/"):
            if segment == "." or segment == "..":
                return f"a path segment may not be {segment!r} (also encoded as %2E)"
    if "\\" in path:
        return "a path may not contain a backslash (also encoded as %5C)"
    if "\x00" in path:
        return "a path may not contain NUL (%00)"
    if raw_path is not None and b"%2f" in raw_path.lower():
        return "a path segment may not contain an encoded '/' (%2F)"
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

    def request_counts(self) -> dict[str, int]:
        """Requests routed to each key since its route was first set (rebuilds of a key keep its count)."""
        return {key: c.requests for key, c in self._compiled.items()}

    def clear(self) -> None:
        self._compiled.clear()

    def __len__(self) -> int:
        return len(self._compiled)

    def __contains__(self, key: object) -> bool:
        return key in self._compiled


@dataclass(frozen=True, slots=True)
class LatencySeries:
    """One latency histogram; ``bucket_counts[i]`` counts requests at or below ``LATENCY_BUCKETS[i]``
    (cumulative), the last entry is every request (+Inf)."""

    plugin: str  # "" for requests that named no known plugin
    method: str  # the request method, "other" for methods outside the usual set or routing refusals
    status_class: str  # "2xx" ... "5xx"
    count: int
    total_seconds: float
    bucket_counts: tuple[int, ...]

    def buckets(self) -> list[tuple[str, float]]:
        """Prometheus-style cumulative buckets: ``[("0.001", n), ..., ("+Inf", count)]``."""
        out = [(f"{bound:g}", float(n)) for bound, n in zip(LATENCY_BUCKETS, self.bucket_counts, strict=False)]
        out.append(("+Inf", float(self.count)))
        return out


@dataclass(frozen=True, slots=True)
class GatewayStats:
    """A snapshot of the gateway's counters (latency is measured until the response head is sent)."""

    bucket_bounds: tuple[float, ...]
    latency: tuple[LatencySeries, ...]
    requests: dict[str, int]  # every request per plugin key since the start: the TUI's requests/s
    in_flight: int
    upstream_opened: int = 0  # upstream connections opened since the start (kept-alive ones are reused)
    upstream_idle: int = 0  # upstream connections kept alive for reuse now

    def series(self) -> tuple[LatencySeries, ...]:
        return self.latency

    def requests_by_plugin(self) -> dict[str, int]:
        return dict(self.requests)


class _BodyTooLarge(Exception):
    pass


class _ClientGone(Exception):
    pass


class _Exchange:
    """Per-request state shared with the body reader and the disconnect watcher."""

    __slots__ = (
        "body_done",
        "client_gone",
        "conn",
        "deadline",
        "finished",
        "receive",
        "seen",
        "started",
        "task",
        "timed_out",
        "watcher",
    )

    def __init__(self, receive: Receive, task: asyncio.Task[Any] | None, body_done: bool) -> None:
        self.receive = receive
        self.task = task
        self.body_done = body_done
        self.client_gone = False
        self.finished = False
        self.timed_out = False
        self.deadline = 0.0  # perf_counter time by which the response head must have arrived; 0 = none
        self.started = time.perf_counter()
        self.seen = 0
        self.conn: UpstreamConnection | None = None
        self.watcher: asyncio.Task[None] | None = None


_NOT_FOUND_PREFIX = error_body("not_found", "no such gateway path; use /api/plugins/{key}{endpoint path}")


class Gateway:
    """ASGI reverse proxy for ``/api/plugins/{key}/...`` over a RouteTable, with pooled upstream connections."""

    def __init__(
        self,
        table: RouteTable,
        on_result: ResultCallback | None = None,
        *,
        max_idle_per_upstream: int = 256,
        keepalive_timeout: float = 30.0,
    ) -> None:
        self.table = table
        self.on_result = on_result
        self._pool = UpstreamPool(max_idle_per_host=max_idle_per_upstream, keepalive_timeout=keepalive_timeout)
        self._inflight: set[_Exchange] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._histograms: dict[tuple[str, str, str], list[float]] = {}
        self._in_flight = 0
        self._rid_prefix = os.urandom(6).hex().encode()
        self._rid_counter = 0

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the pooled upstream connections and stop the deadline ticker."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        self._pool.close()

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
        pool = self._pool
        return GatewayStats(
            LATENCY_BUCKETS,
            tuple(series),
            self.table.request_counts(),
            self._in_flight,
            pool.opened,
            pool.idle_count,
        )

    def early_answers(self) -> int:
        """Exchanges in flight whose upstream answered before the client's whole body came (their upstream
        connections, out of step, are not reused)."""
        return sum(1 for ex in self._inflight if not ex.body_done and ex.conn is not None and ex.conn.headers_done)

    def _observe(self, plugin: str, method: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        if method not in _METHOD_BYTES:  # keep the label set bounded whatever clients send
            method = "other"
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
            await send_json(send, 404, _NOT_FOUND_PREFIX, [self._request_id(scope)])
            self._observe("", method, 404, started)
            return
        raw_path: bytes | None = scope.get("raw_path")
        if raw_path is None or b"%" in raw_path or "." in path or "\\" in path:  # most paths skip the check
            refusal = _path_refusal(path, raw_path)
            if refusal is not None:
                await send_json(send, 400, error_body("invalid_path", refusal), [self._request_id(scope)])
                self._observe("", method, 400, started)
                return
        slash = path.find("/", len(PREFIX))
        if slash < 0:
            key, sub = path[len(PREFIX) :], ""
        else:
            key, sub = path[len(PREFIX) : slash], path[slash:]
        route = self.table._compiled.get(key)
        if route is None:
            await send_json(
                send,
                404,
                error_body("plugin_not_found", f"no plugin {key!r} behind the gateway"),
                [self._request_id(scope)],
            )
            self._observe("", method, 404, started)
            return
        route.requests += 1
        methods = route.match(sub)
        if methods is None:
            await send_json(
                send,
                404,
                error_body("endpoint_not_found", f"plugin {key!r} declares no endpoint {sub or '/'!r}"),
                [self._request_id(scope)],
            )
            self._observe(key, "other", 404, started)
            return
        if method not in methods:
            await send_json(
                send,
                405,
                error_body("method_not_allowed", f"{method} is not declared for {sub!r} of plugin {key!r}"),
                [(b"allow", route.allow[methods]), self._request_id(scope)],
            )
            self._observe(key, "other", 405, started)
            return
        if not route.available:
            await send_json(send, 503, route.unavailable_body, [(b"retry-after", RETRY_AFTER), self._request_id(scope)])
            self._observe(key, method, 503, started)
            return
        self._in_flight += 1
        try:
            if route.route.app is not None:
                status = await call_plugin_app(route.route.app, scope, receive, send, route.key, sub, route.max_body)
                self._report(route, status < 500)
            else:
                status = await self._proxy(scope, receive, send, route, method, sub, started)
        finally:
            self._in_flight -= 1
        if status:  # 0: a streamed answer, observed when its head went out
            self._observe(key, method, status, started)

    def _request_id(self, scope: Scope) -> tuple[bytes, bytes]:
        """The X-Request-ID header for an answer the gateway gives itself: the client's, or a new one."""
        for name, value in scope["headers"]:
            if name == b"x-request-id" and _REQUEST_ID_OK.match(value):
                return (b"x-request-id", value)
        self._rid_counter += 1
        return (b"x-request-id", b"%s-%x" % (self._rid_prefix, self._rid_counter))

    async def _proxy(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        route: _CompiledRoute,
        method: str,
        sub: str,
        started: float,
    ) -> int:
        """Forward one exchange; returns the status to record, or 0 when it was recorded already."""
        # The request head, built as bytes straight from the client's header pairs in one pass.
        parts: list[bytes] = []
        request_id: bytes | None = None
        host: bytes | None = None
        forwarded_for: bytes | None = None
        content_length = -1
        chunked = False
        connection_tokens: list[bytes] | None = None
        hopped = False
        first_forwarded: list[bytes] = []  # X-Forwarded-Host/-Proto of the node that forwarded the request
        for name, value in scope["headers"]:
            if name in _REQUEST_DROP or name.startswith(b"proxy-"):
                if name == b"host":
                    host = value
                elif name == HOP_HEADER:
                    hopped = True
                elif name == b"x-forwarded-host" or name == b"x-forwarded-proto":
                    first_forwarded += (name, b": ", value, b"\r\n")
                elif name == b"x-request-id":
                    if _REQUEST_ID_OK.match(value):
                        request_id = value
                elif name == b"content-length":
                    # Digits only (int() would take "+1", " 1", "1_0"), and one value however often it is sent.
                    if not value.isdigit() or (content_length >= 0 and int(value) != content_length):
                        await send_json(send, 400, error_body("bad_request", "invalid Content-Length"))
                        return 400
                    content_length = int(value)
                elif name == b"connection":
                    connection_tokens = _connection_tokens(value)
                elif name == b"transfer-encoding":
                    chunked = True
                continue
            if name == b"x-forwarded-for":
                forwarded_for = value
                continue
            parts += (name, b": ", value, b"\r\n")
        if chunked:
            # The server in front has decoded the chunks: the body's length is what arrives, not any header.
            content_length = -1
        if connection_tokens:
            parts = _without_headers(parts, connection_tokens)
        if request_id is None:
            self._rid_counter += 1
            request_id = b"%s-%x" % (self._rid_prefix, self._rid_counter)
        if content_length > route.max_body:
            await send_json(
                send,
                413,
                error_body("body_too_large", f"request body over the limit of {route.max_body} bytes"),
                [(b"x-request-id", request_id)],
            )
            return 413
        targets = route.targets
        if hopped:
            targets = route.local_targets
            if not targets:
                await send_json(
                    send,
                    508,
                    error_body(
                        "forwarding_loop",
                        f"plugin {route.key!r} is not served on this node, and a request "
                        "another node forwarded is never forwarded again",
                    ),
                    [(b"x-request-id", request_id)],
                )
                return 508
        client = scope.get("client")
        client_ip = client[0].encode("latin-1") if client else b""
        parts += (
            b"x-forwarded-for: ",
            forwarded_for + b", " + client_ip if forwarded_for else client_ip,
            b"\r\nx-forwarded-prefix: ",
            route.forwarded_prefix,
            b"\r\nx-request-id: ",
            request_id,
            b"\r\n",
        )
        if hopped and first_forwarded:
            parts += first_forwarded
        else:
            parts += (b"x-forwarded-proto: ", b"https" if scope.get("scheme") == "https" else b"http", b"\r\n")
            if host is not None:
                parts += (b"x-forwarded-host: ", host, b"\r\n")
        has_body = chunked or content_length > 0
        if not has_body:  # the framing of a body is known once its first piece is in (see _request_start)
            parts.append(b"content-length: 0\r\n\r\n" if content_length == 0 else b"\r\n")

        # Forward the path as the client encoded it, unless its key segment was encoded differently.
        raw_path: bytes | None = scope.get("raw_path")
        prefix = route.forwarded_prefix
        if raw_path and raw_path.startswith(prefix) and raw_path[len(prefix) : len(prefix) + 1] in (b"/", b""):
            target = raw_path[len(prefix) :]
        else:
            target = quote(sub, safe="/:@!$&'()*+,;=-._~").encode("latin-1")
        query: bytes = scope.get("query_string", b"")
        if query:
            target += b"?" + query
        method_bytes = _METHOD_BYTES.get(method) or method.encode("latin-1")
        upstream_index = route.pick() % len(targets)
        upstream = targets[upstream_index]
        head = _request_head(method_bytes, upstream, target, parts)

        task = asyncio.current_task()
        ex = _Exchange(receive, task, not has_body)
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick(), name="gateway-ticker")
        inflight = self._inflight
        inflight.add(ex)
        conn: UpstreamConnection | None = None
        response_started = False
        pool = self._pool
        try:
            try:
                first = b""
                start = head
                if has_body:
                    first = await self._first_body(ex, route.max_body)
                    start, chunked = _request_start(head, first, content_length, ex.body_done)
                # Another upstream may take the request when this one could not be reached and the request is
                # safe to send twice and still whole in hand (its body not streamed away).
                failovers = len(targets) - 1 if method in _FAILOVER_METHODS and ex.body_done else 0
                stale_retry = True
                while True:
                    if route.timeout:  # the timeout covers connecting too
                        ex.deadline = time.perf_counter() + route.timeout
                    conn = None
                    try:
                        conn = await pool.acquire(upstream.scheme, upstream.host, upstream.port)
                        ex.conn = conn
                        conn.send_head(start, method == "HEAD", ex.body_done)
                        if not ex.body_done:
                            ex.deadline = 0.0  # a long upload is the client's pace, not the upstream's
                            try:
                                # It stops early when the upstream answers (a 401, a 413) before taking the whole
                                # body: its answer is relayed, and the connection, out of step, is not reused.
                                await self._send_body(ex, conn, route.max_body, chunked)
                            except UpstreamError:
                                if not conn.headers_done:
                                    raise
                            if route.timeout:
                                ex.deadline = time.perf_counter() + route.timeout
                        await conn.wait_headers()
                        break
                    except UpstreamError as exc:
                        if exc.received_any:
                            raise
                        if conn is not None:
                            pool.discard(conn)
                        if stale_retry and conn is not None and conn.reused and not has_body:
                            # A kept-alive connection the upstream closed just as it was reused: try a fresh one
                            # (not with a body: it has been consumed and cannot be replayed).
                            stale_retry = False
                            continue
                        if not failovers:
                            raise
                        failovers -= 1
                        stale_retry = True
                        upstream_index = (upstream_index + 1) % len(targets)  # the next one, not the next pick
                        upstream = targets[upstream_index]
                        head = _request_head(method_bytes, upstream, target, parts)
                        start = _request_start(head, first, content_length, True)[0] if has_body else head
                ex.deadline = 0.0
            except UpstreamError as exc:
                if conn is not None:
                    pool.discard(conn)
                self._report(route, False)
                await send_json(
                    send,
                    502,
                    error_body("upstream_unreachable", f"plugin {route.key!r}: {exc}"),
                    [(b"x-request-id", request_id)],
                )
                return 502
            except _BodyTooLarge:
                if conn is not None:
                    pool.discard(conn)
                await send_json(
                    send,
                    413,
                    error_body("body_too_large", f"request body over the limit of {route.max_body} bytes"),
                    [(b"x-request-id", request_id)],
                )
                return 413
            except _ClientGone:
                return 499
            assert conn is not None
            status = conn.status
            if status >= 500 or not route.last_ok:
                self._report(route, status < 500)
            out: list[tuple[bytes, bytes]] = []
            response_connection: list[bytes] | None = None
            for name, value in conn.headers:
                lname = name.lower()
                if lname in _RESPONSE_DROP or lname.startswith(b"proxy-"):
                    if lname == b"connection":
                        response_connection = _connection_tokens(value)
                    continue
                out.append((lname, value))
            if response_connection:
                out = [(n, v) for n, v in out if n not in response_connection]
            out.append((b"x-request-id", request_id))
            if conn.complete:
                # The whole answer is here: hand the connection back before talking to the client.
                chunks = conn.chunks
                body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                chunks.clear()
                pool.release(conn)
                conn = None
                ex.finished = True
                await send({"type": "http.response.start", "status": status, "headers": out})
                response_started = True
                await send({"type": "http.response.body", "body": body})
                return status
            # A streamed answer (a download, an event stream): its latency is the time to the head.
            self._observe(route.key, method, status, started)
            await send({"type": "http.response.start", "status": status, "headers": out})
            response_started = True
            while True:
                chunk = await conn.read()
                if not chunk:
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                if ex.client_gone:
                    return 0
            pool.release(conn)
            conn = None
            ex.finished = True
            await send({"type": "http.response.body", "body": b""})
            return 0
        except asyncio.CancelledError:
            if task is not None and (ex.client_gone or ex.timed_out):
                task.uncancel()
                if ex.client_gone:
                    return 0 if response_started else 499
                self._report(route, False)
                if not response_started:
                    await send_json(
                        send,
                        504,
                        error_body(
                            "upstream_timeout", f"plugin {route.key!r} did not answer within {route.timeout:g} s"
                        ),
                        [(b"x-request-id", request_id)],
                    )
                return 504
            raise
        except UpstreamError:
            # The upstream broke off in the middle of the body: the client's connection cannot be reused.
            self._report(route, False)
            raise
        finally:
            ex.finished = True
            inflight.discard(ex)
            if ex.watcher is not None:
                ex.watcher.cancel()
            if conn is not None:
                pool.discard(conn)

    async def _first_body(self, ex: _Exchange, limit: int) -> bytes:
        """The first piece of the client's body, sent together with the head."""
        message = await ex.receive()
        if message["type"] == "http.disconnect":
            ex.client_gone = True
            raise _ClientGone()
        body: bytes = message.get("body", b"")
        ex.seen = len(body)
        if ex.seen > limit:
            raise _BodyTooLarge()
        if not message.get("more_body", False):
            ex.body_done = True
        return body

    async def _send_body(self, ex: _Exchange, conn: UpstreamConnection, limit: int, chunked: bool) -> None:
        """Stream the rest of the client's body to the upstream, counting it against the plugin's limit."""
        receive = ex.receive
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
                conn.write(_encode_chunk(body) + (b"" if more else _LAST_CHUNK), not more)
            elif body or not more:
                conn.write(body, not more)
            if not more:
                ex.body_done = True
                return
            await conn.drain()

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
                self._pool.sweep(time.monotonic())

    async def _watch(self, ex: _Exchange) -> None:
        message = await ex.receive()
        if message["type"] == "http.disconnect" and not ex.finished:
            ex.client_gone = True
            if ex.task is not None:
                ex.task.cancel()


def _request_head(method: bytes, upstream: _CompiledUpstream, target: bytes, headers: list[bytes]) -> bytes:
    """The request line and headers for one upstream: its base path before the target, its authority as Host."""
    return b"".join(
        (
            method,
            b" ",
            upstream.base_path,
            target,
            b" HTTP/1.1\r\nhost: ",
            upstream.host_header,
            b"\r\n",
            upstream.hop,
            *headers,
        )
    )


def _encode_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data) if data else b""


def _request_start(head: bytes, first: bytes, content_length: int, body_done: bool) -> tuple[bytes, bool]:
    """The request head with the gateway's own framing and the first piece of the body; and whether the rest
    goes chunked. A chunked body that arrived whole goes with a Content-Length, which every upstream reads."""
    if content_length >= 0:
        return b"%scontent-length: %d\r\n\r\n%s" % (head, content_length, first), False
    if body_done:
        return b"%scontent-length: %d\r\n\r\n%s" % (head, len(first), first), False
    return b"%stransfer-encoding: chunked\r\n\r\n%s" % (head, _encode_chunk(first)), True


def _connection_tokens(value: bytes) -> list[bytes]:
    """The header names a Connection header drops, framing headers excepted."""
    return [t for t in (t.strip().lower() for t in value.split(b",")) if t not in _ALWAYS_END_TO_END]


def _without_headers(parts: list[bytes], names: list[bytes]) -> list[bytes]:
    """Drop the headers a Connection header named from a flat [name, ": ", value, CRLF, ...] list."""
    out: list[bytes] = []
    for i in range(0, len(parts), 4):
        if parts[i] not in names:
            out += parts[i : i + 4]
    return out
