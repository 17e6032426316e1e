"""The gateway's route table: compiled routes, path matching, and the upstream each request goes to.

- ``Upstream(label, url, up, via_node)``: one place a route's requests can go (a replica, another fleet node).
- ``PluginRoute(key, upstream_base_url, endpoints, available, unavailable_reason, timeout, max_body, app,
  upstreams)``: what the gateway knows about one plugin. ``endpoints`` are ``(method, path_template)`` pairs; a
  template segment ``{name}`` matches one non-empty path segment. ``route.all_upstreams()`` lists the upstreams, up
  or not, for views.
- ``RouteTable``: ``set(route)``, ``remove(key)``, ``get(key)``, ``keys()``, ``clear()``, ``request_counts()``, and
  ``compiled(key)`` for the gateway's hot path. Routes are compiled once when set (static paths in a dict, templates
  as regexes, upstream URLs checked and prepared), so a request does no parsing of manifests and a bad upstream URL
  fails at ``set``.
- ``CompiledRoute``: ``match(path)`` (the methods declared for a path, or None), ``pick()`` (round robin over the
  upstreams that are up), ``targets`` / ``local_targets`` (those a request another node forwarded may use), the
  ``Allow`` values and the 503 body, and the counters a rebuild of the key keeps (``requests``, ``last_ok``).
- ``path_refusal(path, raw_path)``: why a path is refused before routing (``.``/``..`` segments, encoded ``/``,
  backslash, NUL), or None.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from supervisor_tui.server.errors import error_body

PREFIX = "/api/plugins/"
DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_BODY = 10 * 1024 * 1024
# The methods the gateway names as they are (in latency labels, as precomputed bytes); others are "other".
STANDARD_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# A fleet node forwarding a request to another node's gateway says so; that node never forwards it again (no
# loops) and keeps the X-Forwarded-Host and -Proto the first node set, which are the client's.
HOP_HEADER = b"x-supervisor-hop"
HOP_LINE = HOP_HEADER + b": 1\r\n"
RETRY_AFTER = b"5"  # sent with the 503 of a route that is not available
# The 404 body for a path outside /api/plugins/ (the Caddy export answers it the same way).
NOT_FOUND_BODY = error_body("not_found", "no such gateway path; use /api/plugins/{key}{endpoint path}")
_TEMPLATE_PARAM = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


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


class CompiledUpstream:
    """An upstream's address prepared for the hot path."""

    __slots__ = ("base_path", "hop", "host", "host_header", "label", "port", "scheme")

    def __init__(self, key: str, upstream: Upstream) -> None:
        self.label = upstream.label
        self.hop = HOP_LINE if upstream.via_node else b""  # marks a request this node forwards to another node
        scheme, host, port, path, authority = _upstream_address(key, upstream.url)
        self.scheme, self.host, self.port = scheme, host, port
        self.base_path = path.rstrip("/").encode("latin-1")
        self.host_header = authority.encode("latin-1")


class CompiledRoute:
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
        compiled = [(CompiledUpstream(route.key, u), u.up) for u in upstreams]  # every URL is checked, up or not
        self.targets: tuple[CompiledUpstream, ...] = tuple(c for c, up in compiled if up)
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


def path_refusal(path: str, raw_path: bytes | None) -> str | None:
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
        self._compiled: dict[str, CompiledRoute] = {}
        for route in routes:
            self.set(route)

    def set(self, route: PluginRoute) -> None:
        compiled = CompiledRoute(route)
        old = self._compiled.get(route.key)
        if old is not None:  # keep the counters across rebuilds of the same key
            compiled.requests, compiled.last_ok = old.requests, old.last_ok
        self._compiled[route.key] = compiled

    def remove(self, key: str) -> None:
        self._compiled.pop(key, None)

    def get(self, key: str) -> PluginRoute | None:
        compiled = self._compiled.get(key)
        return compiled.route if compiled is not None else None

    def compiled(self, key: str) -> CompiledRoute | None:
        """The route of ``key`` as the gateway serves it (matchers, upstream choice, counters), or None."""
        return self._compiled.get(key)

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
