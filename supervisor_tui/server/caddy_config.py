"""The gateway's route table as one server of Caddy's JSON config (what ``caddy_export`` writes to its admin API).

``caddy_server(routes, listen, self_url)`` returns the server object for ``/config/apps/http/servers/<name>``. It
answers as the built-in gateway does (server.gateway), route for route:

- ``/api/plugins/{key}{path}`` for each declared endpoint, matched by method (HEAD wherever GET is declared) and
  path template (a ``{param}`` matches one segment, ``[^/]+``), in the gateway's order (static paths first, then
  templates as declared); the ``/api/plugins/{key}`` prefix is replaced by the upstream's base path and the request
  goes to the plugin's upstream with the gateway's Host, X-Forwarded-* and X-Request-ID;
- a declared path with another method: 405 with Allow; an undeclared path of a known key: 404
  ``endpoint_not_found``; an unknown key: 404 ``plugin_not_found``; a path outside ``/api/plugins/``: 404
  ``not_found``; a ``.``/``..`` segment, backslash, NUL or encoded ``/``: 400 ``invalid_path``;
- a plugin that is not available (not RUNNING, LOST, no usable upstream): 503 with Retry-After and the gateway's
  ``plugin_unavailable`` body; Caddy's own 413/502/504 become the gateway's JSON errors too.

An in-process plugin has no address of its own: its routes go to the supervisor's gateway (``self_url``).
The error bodies are the gateway's, with the requested path or key put in only when it is made of characters that
need no escaping in JSON (Caddy's placeholders are not JSON-escaped); otherwise the message leaves it out.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from supervisor_tui.server.errors import error_body
from supervisor_tui.server.gateway_routes import NOT_FOUND_BODY, PREFIX, RETRY_AFTER, PluginRoute

_TEMPLATE_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
# Path characters a placeholder may carry into a JSON string and a Python repr unchanged (no quote, no backslash).
_PLAIN = r"A-Za-z0-9._~!$&()*+,;=:@%/-"
# X-Request-ID values the gateway passes through; anything else gets a new id.
_REQUEST_ID_OK = r"^[!-~]{1,200}$"
_JSON = {"Content-Type": ["application/json"]}


def _static(status: int, body: bytes, headers: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {
        "handler": "static_response",
        "status_code": status,
        "headers": {**_JSON, **(headers or {})},
        "body": body.decode(),
    }


def _body_template(code: str, message: str) -> str:
    """A JSON error body whose message may hold Caddy placeholders (kept as written: ``{...}`` are not escaped)."""
    return json.dumps({"error": {"code": code, "message": message}})


def _path_regexp(prefix: str, template: str) -> str:
    """An RE2 pattern for a whole request path, ``prefix`` then the template as the gateway compiles it; group 1
    is the path after the prefix."""
    parts, pos = [], 0
    for m in _TEMPLATE_PARAM.finditer(template):
        parts.append(re.escape(template[pos : m.start()]))
        parts.append("[^/]+")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return "^" + re.escape(prefix) + "(" + "".join(parts) + ")$"


def _grouped(endpoints: Iterable[tuple[str, str]]) -> list[tuple[str, list[str]]]:
    """``(template, methods)`` in the order the gateway tries them: static paths first, then templates."""
    by_path: dict[str, set[str]] = {}
    for method, template in endpoints:
        by_path.setdefault(template, set()).add(method.upper())
    out = []
    for template, methods in by_path.items():
        if "GET" in methods:
            methods.add("HEAD")
        out.append((template, sorted(methods)))
    return [g for g in out if "{" not in g[0]] + [g for g in out if "{" in g[0]]


def _upstream(route: PluginRoute, self_url: str) -> tuple[list[str], str, str, bool] | None:
    """``(dials, host header, base path, tls)`` of where a route's requests go, or None when they go nowhere.

    A key served by several upstreams (replicas) gets all of those that are up; they share one base path and
    scheme, and each request carries the Host of the upstream it went to."""
    if route.app is not None:  # an in-process plugin: through the supervisor's own gateway, prefix kept
        urls, keep_prefix = [self_url], True
    else:
        urls, keep_prefix = [u.url for u in route.all_upstreams() if u.up], False
    dials: list[str] = []
    authority = base = ""
    tls = False
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return None
        host = parts.hostname
        named = f"[{host}]" if ":" in host else host
        port = parts.port or (443 if parts.scheme == "https" else 80)
        dials.append(f"{named}:{port}")
        authority = named + (f":{parts.port}" if parts.port is not None else "")
        base = PREFIX + route.key if keep_prefix else parts.path.rstrip("/")
        tls = parts.scheme == "https"
    if not dials:
        return None
    if len(dials) > 1:
        authority = "{http.reverse_proxy.upstream.hostport}"
    return dials, authority, base, tls


def _proxy(route: PluginRoute, self_url: str) -> list[dict[str, Any]]:
    """The handlers that forward one request of an available route as the gateway does."""
    target = _upstream(route, self_url)
    if target is None:
        return [_unavailable(route, "it has no usable upstream address")]
    dials, authority, base, tls = target
    prefix = PREFIX + route.key
    transport: dict[str, Any] = {"protocol": "http", "compression": False}
    if route.timeout > 0:
        transport["response_header_timeout"] = f"{route.timeout:g}s"
    if tls:
        transport["tls"] = {}
    rewrite: dict[str, Any] = {"handler": "rewrite"}
    if base == prefix:
        rewrite = {}
    elif base:
        rewrite["uri_substring"] = [{"find": prefix, "replace": base, "limit": 1}]
    else:
        rewrite["strip_path_prefix"] = prefix
    handlers: list[dict[str, Any]] = [{"handler": "request_body", "max_size": route.max_body}]
    if rewrite:
        handlers.append(rewrite)
    proxy: dict[str, Any] = {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": dial} for dial in dials],
        # X-Forwarded-For is appended to, as the gateway does, rather than replaced by the client's address.
        "trusted_proxies": ["0.0.0.0/0", "::/0"],
        "transport": transport,
        "headers": {
            "request": {
                "set": {
                    "Host": [authority],
                    "X-Forwarded-Host": ["{http.request.hostport}"],
                    "X-Forwarded-Prefix": [prefix],
                },
            },
        },
    }
    if len(dials) > 1:
        # Round robin over the replicas; a GET that cannot reach one tries the next (Caddy retries only GETs by
        # default, within try_duration), as the built-in gateway does.
        proxy["load_balancing"] = {
            "selection_policy": {"policy": "round_robin"},
            "try_duration": "2s",
            "try_interval": "10ms",
            "retry_match": [{"method": ["GET", "HEAD", "OPTIONS"]}],
        }
        # A replica that failed is skipped for a while instead of being tried first again on its turn.
        proxy["health_checks"] = {"passive": {"fail_duration": "2s", "max_fails": 1}}
    handlers.append(proxy)
    return handlers


def _unavailable(route: PluginRoute, reason: str = "") -> dict[str, Any]:
    why = reason or route.unavailable_reason or "the plugin is not running"
    body = error_body("plugin_unavailable", f"plugin {route.key!r} is unavailable: {why}")
    return _static(503, body, {"Retry-After": [RETRY_AFTER.decode()]})


def _plugin_routes(route: PluginRoute, self_url: str) -> list[dict[str, Any]]:
    """The subroute of one plugin key: its endpoints, then 405s per declared path, then its 404."""
    prefix = PREFIX + route.key
    inner: list[dict[str, Any]] = []
    handle = _proxy(route, self_url) if route.available else [_unavailable(route)]
    for template, methods in _grouped(route.endpoints):
        pattern = {"name": "endpoint", "pattern": _path_regexp(prefix, template)}
        inner.append({"match": [{"method": methods, "path_regexp": pattern}], "handle": handle, "terminal": True})
        allow = {"Allow": [", ".join(methods)]}
        said = f"{{http.request.method}} is not declared for '{{http.regexp.endpoint.1}}' of plugin {route.key!r}"
        plain = {"{http.request.uri.path}": {"pattern": f"^[{_PLAIN}]*$"}}
        inner.append(
            {
                "match": [{"path_regexp": pattern, "vars_regexp": plain}],
                "handle": [{**_static(405, b"", allow), "body": _body_template("method_not_allowed", said)}],
                "terminal": True,
            }
        )
        unsaid = f"{{http.request.method}} is not declared for {template!r} of plugin {route.key!r}"
        inner.append(
            {
                "match": [{"path_regexp": pattern}],
                "handle": [{**_static(405, b"", allow), "body": _body_template("method_not_allowed", unsaid)}],
                "terminal": True,
            }
        )
    # The gateway's 404 names the path; kept only when the path needs no escaping (see the module docstring).
    not_declared = f"plugin {route.key!r} declares no endpoint "
    inner.append(
        {
            "match": [{"path": [prefix]}],
            "handle": [_static(404, error_body("endpoint_not_found", not_declared + "'/'"))],
            "terminal": True,
        }
    )
    inner.append(
        {
            "match": [{"path_regexp": {"name": "sub", "pattern": f"^{re.escape(prefix)}(/[{_PLAIN}]*)$"}}],
            "handle": [
                {
                    **_static(404, b""),
                    "body": _body_template("endpoint_not_found", not_declared + "'{http.regexp.sub.1}'"),
                }
            ],
            "terminal": True,
        }
    )
    inner.append(
        {"handle": [_static(404, error_body("endpoint_not_found", not_declared + "at this path"))], "terminal": True}
    )
    return [{"match": [{"path": [prefix, prefix + "/*"]}], "handle": [{"handler": "subroute", "routes": inner}]}]


def _request_id_routes() -> list[dict[str, Any]]:
    """X-Request-ID: the client's when it is printable ASCII (1-200 characters), else a new one; always answered."""
    return [
        {
            "match": [{"not": [{"header_regexp": {"X-Request-ID": {"pattern": _REQUEST_ID_OK}}}]}],
            "handle": [{"handler": "headers", "request": {"set": {"X-Request-ID": ["{http.request.uuid}"]}}}],
        },
        {
            "handle": [
                {
                    "handler": "headers",
                    "response": {"set": {"X-Request-ID": ["{http.request.header.X-Request-ID}"]}, "deferred": True},
                }
            ]
        },
    ]


def _refusal_route() -> dict[str, Any]:
    """400 ``invalid_path`` for what the gateway refuses before routing (see gateway_routes.path_refusal)."""
    return {
        "match": [
            {"vars_regexp": {"{http.request.uri.path}": {"pattern": r"(^|/)\.\.?(/|$)|\\|\x00"}}},
            {"vars_regexp": {"{http.request.orig_uri.path}": {"pattern": r"(?i)%2f|%5c|%00|(^|/)(%2e|\.){1,2}(/|$)"}}},
        ],
        "handle": [
            _static(
                400,
                error_body("invalid_path", "the path has a '.' or '..' segment, a backslash, NUL or an encoded '/'"),
            )
        ],
        "terminal": True,
    }


def _error_routes() -> list[dict[str, Any]]:
    """Caddy's own failures (body too large, upstream refused, upstream too slow) in the gateway's shape."""
    answers = (
        ("413", "body_too_large", "request body over the plugin's limit"),
        ("502", "upstream_unreachable", "the plugin's upstream refused or reset the connection"),
        ("504", "upstream_timeout", "the plugin did not answer within its timeout"),
    )
    routes: list[dict[str, Any]] = _request_id_routes()
    for status, code, message in answers:
        routes.append(
            {
                "match": [{"vars": {"{http.error.status_code}": [status]}}],
                "handle": [_static(int(status), error_body(code, message))],
                "terminal": True,
            }
        )
    return routes


def caddy_server(routes: Iterable[PluginRoute], listen: str, self_url: str) -> dict[str, Any]:
    """The Caddy server object serving ``routes`` on ``listen`` (``host:port``) the way the gateway does."""
    out: list[dict[str, Any]] = [*_request_id_routes(), _refusal_route()]
    for route in routes:
        out += _plugin_routes(route, self_url)
    unknown = "no plugin '{http.regexp.key.1}' behind the gateway"
    out.append(
        {
            "match": [{"path_regexp": {"name": "key", "pattern": f"^{re.escape(PREFIX)}([a-z0-9_-]*)(/.*)?$"}}],
            "handle": [{**_static(404, b""), "body": _body_template("plugin_not_found", unknown)}],
            "terminal": True,
        }
    )
    out.append(
        {
            "match": [{"path": [PREFIX + "*"]}],
            "handle": [_static(404, error_body("plugin_not_found", "no such plugin behind the gateway"))],
            "terminal": True,
        }
    )
    out.append({"handle": [_static(404, NOT_FOUND_BODY)], "terminal": True})
    return {
        "listen": [listen],
        "automatic_https": {"disable": True},
        "routes": out,
        "errors": {"routes": _error_routes()},
    }
