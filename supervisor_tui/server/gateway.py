"""The gateway: a reverse proxy from ``/api/plugins/{key}{endpoint.path}`` to ``{upstream}{endpoint.path}``.

Public interface (the names below are importable from here; each lives in the module that does its job):

- ``PluginRoute``, ``Upstream``, ``RouteTable`` (gateway_routes: compiled routes, matching, the upstream choice).
  ``PluginRoute(key, upstream_base_url, endpoints, available, unavailable_reason, timeout, max_body, app,
  upstreams)``: what the gateway knows about one plugin. ``endpoints`` are ``(method, path_template)`` pairs; a
  template segment ``{name}`` matches one non-empty path segment (never ``.`` or ``..``: such paths are refused
  before matching). ``upstreams`` is a tuple of ``Upstream(label, url, up)`` (a replica, or a plugin served by
  another node); ``upstream_base_url`` is the shorthand for one unlabelled upstream. ``route.all_upstreams()``
  lists them, up or not, for views. ``RouteTable``: ``set(route)``, ``remove(key)``, ``get(key)``, ``keys()``,
  ``clear()``; routes are compiled once when set, so the request path does no parsing of manifests.
- ``Gateway(table, on_result=None, max_idle_per_upstream=256, keepalive_timeout=30.0)`` (here): an ASGI callable
  for paths under ``/api/plugins/`` (the top-level app dispatches to it by prefix; it also serves alone, lifespan
  included); it routes each request and hands it to the in-process app (gateway_inprocess) or to the exchange
  (gateway_exchange, with gateway_headers writing the messages). ``await gateway.close()`` closes the pooled
  upstream connections.
- ``gateway.stats()`` returns a ``GatewayStats`` snapshot (gateway_stats) for ``/metrics`` and the TUI:
  ``requests_by_plugin()`` (every request per plugin key since the start, for requests/s), ``series()`` (one
  ``LatencySeries`` per plugin, method and status class: ``count``, ``total_seconds``, cumulative
  ``bucket_counts`` and ``buckets()`` in Prometheus form; latency runs until the response head is sent) and
  ``in_flight``.

Balancing: requests go round robin over the upstreams that are up. When an upstream cannot be reached (connection
refused, or reset before any byte of an answer), a GET, HEAD or OPTIONS request whose body (if any) is whole in hand
is sent to the next upstream, each upstream tried once; any other request gets the 502. No upstream up is the 503.

Behaviour: a path with a ``.`` or ``..`` segment (``%2e`` counts as a dot), an encoded ``/`` (``%2F``), a backslash (or
``%5C``) or NUL (``%00``) is 400 ``invalid_path``, an undeclared path is 404, a declared path with another method 405
with ``Allow``, a plugin that is not available 503 with ``Retry-After``, a refused/reset upstream 502, an upstream that
has not answered within the plugin's timeout 504 (the timeout bounds the wait for the response headers, so long event
streams are not cut; it is checked every ``gateway_exchange.TICK`` seconds and covers connecting), a body over the
plugin's ``max_body`` 413 (at once for Content-Length, while streaming for chunked bodies). HEAD is allowed wherever GET
is declared; an upstream's early answer to a half-sent body is relayed. Hop-by-hop headers are dropped both ways, with
those a Connection header names, except ``Content-Length``, ``Transfer-Encoding`` and ``Host``, which it can never
remove; ``X-Forwarded-For/Proto/Host/Prefix`` are set and ``X-Request-ID`` is passed through or generated and returned.
The upstream request is framed by the gateway, never with the client's header: ``Content-Length`` with the client's
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

import time

from supervisor_tui.server.asgi import Receive, Scope, Send
from supervisor_tui.server.errors import error_body, send_json
from supervisor_tui.server.gateway_exchange import Proxy
from supervisor_tui.server.gateway_headers import RequestIds
from supervisor_tui.server.gateway_inprocess import call_plugin_app
from supervisor_tui.server.gateway_routes import (
    DEFAULT_MAX_BODY,
    DEFAULT_TIMEOUT,
    NOT_FOUND_BODY,
    PREFIX,
    RETRY_AFTER,
    PluginRoute,
    RouteTable,
    Upstream,
    path_refusal,
)
from supervisor_tui.server.gateway_stats import (
    LATENCY_BUCKETS,
    GatewayStats,
    LatencyHistograms,
    LatencySeries,
    ResultCallback,
    UpstreamOutcomes,
)
from supervisor_tui.server.gateway_upstream import UpstreamPool

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_TIMEOUT",
    "LATENCY_BUCKETS",
    "PREFIX",
    "RETRY_AFTER",
    "Gateway",
    "GatewayStats",
    "LatencySeries",
    "PluginRoute",
    "ResultCallback",
    "RouteTable",
    "Upstream",
]


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
        self._pool = UpstreamPool(max_idle_per_host=max_idle_per_upstream, keepalive_timeout=keepalive_timeout)
        self._latency = LatencyHistograms()
        self._outcomes = UpstreamOutcomes(on_result)
        self._request_ids = RequestIds()
        self._proxy = Proxy(self._pool, self._latency, self._outcomes, self._request_ids)
        self._in_flight = 0

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the pooled upstream connections and stop the deadline ticker."""
        await self._proxy.close()
        self._pool.close()

    # -- metrics -------------------------------------------------------------------------------------------------

    def stats(self) -> GatewayStats:
        """Counters for ``/metrics`` and the TUI: requests per plugin and latency histograms."""
        pool = self._pool
        return GatewayStats(
            LATENCY_BUCKETS,
            self._latency.series(),
            self.table.request_counts(),
            self._in_flight,
            pool.opened,
            pool.idle_count,
        )

    def early_answers(self) -> int:
        """Exchanges in flight whose upstream answered before the client's whole body came (their upstream
        connections, out of step, are not reused)."""
        return self._proxy.early_answers()

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
        """Route one request: refuse what no route serves, else call the in-process app or proxy it."""
        started = time.perf_counter()
        method: str = scope["method"]
        path: str = scope["path"]
        observe = self._latency.observe
        if not path.startswith(PREFIX):
            await self._refuse(send, scope, 404, NOT_FOUND_BODY)
            observe("", method, 404, started)
            return
        raw_path: bytes | None = scope.get("raw_path")
        if raw_path is None or b"%" in raw_path or "." in path or "\\" in path:  # most paths skip the check
            refusal = path_refusal(path, raw_path)
            if refusal is not None:
                await self._refuse(send, scope, 400, error_body("invalid_path", refusal))
                observe("", method, 400, started)
                return
        slash = path.find("/", len(PREFIX))
        if slash < 0:
            key, sub = path[len(PREFIX) :], ""
        else:
            key, sub = path[len(PREFIX) : slash], path[slash:]
        route = self.table.compiled(key)
        if route is None:
            await self._refuse(
                send, scope, 404, error_body("plugin_not_found", f"no plugin {key!r} behind the gateway")
            )
            observe("", method, 404, started)
            return
        route.requests += 1
        methods = route.match(sub)
        if methods is None:
            body = error_body("endpoint_not_found", f"plugin {key!r} declares no endpoint {sub or '/'!r}")
            await self._refuse(send, scope, 404, body)
            observe(key, "other", 404, started)
            return
        if method not in methods:
            body = error_body("method_not_allowed", f"{method} is not declared for {sub!r} of plugin {key!r}")
            await self._refuse(send, scope, 405, body, (b"allow", route.allow[methods]))
            observe(key, "other", 405, started)
            return
        if not route.available:
            await self._refuse(send, scope, 503, route.unavailable_body, (b"retry-after", RETRY_AFTER))
            observe(key, method, 503, started)
            return
        self._in_flight += 1
        try:
            if route.route.app is not None:
                status = await call_plugin_app(route.route.app, scope, receive, send, route.key, sub, route.max_body)
                self._outcomes.report(route, status < 500)
            else:
                status = await self._proxy.forward(scope, receive, send, route, method, sub, started)
        finally:
            self._in_flight -= 1
        if status:  # 0: a streamed answer, observed when its head went out
            observe(key, method, status, started)

    async def _refuse(self, send: Send, scope: Scope, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
        """An answer the gateway gives itself, with the client's X-Request-ID or a new one."""
        await send_json(send, status, body, [*headers, self._request_ids.for_answer(scope["headers"])])
