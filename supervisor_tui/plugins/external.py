"""External plugins: services that register themselves over HTTP (the Redis registration protocol's message).

An external plugin announces where it listens and which endpoints it serves; the gateway then routes to it.
It must send a heartbeat at least every ``interval`` seconds: after twice that it is LOST (its routes answer
503) until the next heartbeat. The upstream it announces must be in the allowlist (default: loopback only),
so nobody can point the gateway at an arbitrary host. Its key, name, version, host, url and endpoints may not
hold control or bidi formatting characters (they are shown on operators' terminals).
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

from supervisor_tui.core.printable import printable_problem
from supervisor_tui.plugins.manifest import (
    KEY_PATTERN,
    Endpoint,
    Manifest,
    ManifestError,
    check_key_not_reserved,
    parse_endpoints,
)
from supervisor_tui.plugins.model import PluginSnapshot, PluginState
from supervisor_tui.plugins.no_process import RunsNoProcess

SOURCE = "registration"  # what ManifestError names instead of a file


class UpstreamNotAllowed(PermissionError):
    """The announced upstream is outside the allowlist."""


PASSIVE_FAILURES = 3  # gateway failures in a row that mark an external plugin unhealthy


class ExternalPlugin(RunsNoProcess):
    """One self-registered plugin (a ManagedPlugin of kind "external"): RUNNING while heartbeats come, else LOST.

    The supervisor neither starts nor stops its process; ``start``/``stop`` only exist for the common protocol.
    """

    kind = "external"
    runs_elsewhere = True  # registers and leaves on its own: the supervisor neither starts nor stops it
    manifest: Manifest | None = None  # it announced itself: no manifest
    error: ManifestError | None = None  # nor one that was rejected
    asgi_app = None  # reached over HTTP only
    autostart = False  # nothing to start here
    active = False
    stops_last = False
    tried_by_host = False
    stands_for_peers = False  # PeerPlugin: a key that only other nodes serve

    def __init__(
        self,
        key: str,
        name: str,
        version: str,
        host: str,
        port: int,
        endpoints: tuple[Endpoint, ...],
        interval: float,
        timeout: float,
        max_body: int,
        lost_after: float | None = None,
        source: str = "http",
        node: str = "",
        base_path: str = "",
    ) -> None:
        self.on_health: Callable[[ExternalPlugin, bool, str], None] = lambda plugin, healthy, detail: None
        self.key, self.name, self.version = key, name, version
        self.host, self.port, self.endpoints = host, port, endpoints
        self.interval, self.timeout, self.max_body = interval, timeout, max_body
        # HTTP registrations are LOST after two intervals; Redis ones after redis.dead_after (the protocol's timeout)
        self.lost_after = 2 * interval if lost_after is None else lost_after
        self.source = source  # "http" or "redis": how it registered
        self.node = node  # the fleet node that announced it ("" for a plugin that announced itself)
        self.base_path = base_path  # "/api/plugins/<key>" when the upstream is another node's gateway
        self.registered_at = self.last_heartbeat = time.time()
        self.state = PluginState.RUNNING
        self.detail = "registered"
        self.desired = "running"  # it runs on its own
        self.healthy: bool | None = None
        self.health_detail = ""
        self._failures = 0
        self._changed = asyncio.Event()

    @property
    def upstream(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{self.base_path}"

    @property
    def deadline(self) -> float:
        return self.last_heartbeat + self.lost_after

    def snapshot(self) -> PluginSnapshot:
        return PluginSnapshot(
            key=self.key,
            name=self.name,
            version=self.version,
            description=f"external plugin (registered over {self.source})",
            kind=self.kind,
            state=self.state,
            detail=self.detail,
            pid=None,
            host=self.host,
            port=self.port,
            upstream=self.upstream,
            started_at=self.registered_at,
            restarts=0,
            healthy=self.healthy,
            health_detail=self.health_detail,
            last_error="",
            endpoints=self.endpoints,
            autostart=self.autostart,
            desired=self.desired,
            timeout=self.timeout,
            max_body=self.max_body,
            last_metrics=None,
            manifest_path=None,
            node=self.node,
        )

    async def start(self, reason: str = "") -> None:
        return None

    async def stop(self, reason: str = "") -> None:
        return None

    def refuse_start(self, reason: str) -> None:
        """Nothing to refuse: it was never started here."""

    async def wait_for(self, states: set[PluginState] | None = None, timeout: float | None = None) -> PluginState:  # noqa: ASYNC109
        async def wait() -> None:
            while states is not None and self.state not in states:
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)
        return self.state

    def report_upstream(self, ok: bool, detail: str = "") -> None:
        self._failures = 0 if ok else self._failures + 1
        if ok and self.healthy is not True:
            self.healthy, self.health_detail = True, detail or "gateway: upstream answered"
        elif not ok and self._failures >= PASSIVE_FAILURES and self.healthy is not False:
            self.healthy = False
            self.health_detail = detail or f"gateway: {self._failures} upstream failures in a row"
        else:
            return
        self.on_health(self, self.healthy, self.health_detail)

    def follow_peers(self) -> tuple[str, str] | None:
        """It keeps the state its own heartbeats give when other nodes serving its key come or go (PeerPlugin
        follows them)."""
        return None

    def set_state(self, state: PluginState, detail: str) -> None:
        self.state, self.detail = state, detail
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _check_shown_as_is(value: Any, field: str) -> None:
    """Refuse a string the operator's terminal would not show as it is (escape sequences, bidi overrides)."""
    problem = printable_problem(value) if isinstance(value, str) else None
    if problem is not None:
        raise ManifestError(SOURCE, field, problem)


class Allowlist:
    """Hosts and networks external plugins may announce; names must be listed by name (no DNS at check time)."""

    def __init__(self, entries: Iterable[str]) -> None:
        self.names: set[str] = set()
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.names.add(entry.lower())

    def allows(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return host.lower() in self.names
        return any(ip in net for net in self.networks)


class ExternalRegistrations:
    """Validates registrations into ExternalPlugin objects; the supervisor keeps them in its registry."""

    def __init__(
        self, allowlist: Iterable[str], default_interval: float, default_timeout: float, default_max_body: int
    ) -> None:
        self.allowlist = Allowlist(allowlist)
        self.default_interval = default_interval
        self.default_timeout = default_timeout
        self.default_max_body = default_max_body

    def parse(
        self,
        payload: dict[str, Any],
        lost_after: float | None = None,
        source: str = "http",
        node: str = "",
        base_path: str = "",
    ) -> ExternalPlugin:
        """An ExternalPlugin from a registration message; raises ManifestError or UpstreamNotAllowed."""
        key = payload.get("key")
        # fullmatch: match() lets a trailing newline through the pattern's "$"
        if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
            raise ManifestError(SOURCE, "key", f"must match {KEY_PATTERN.pattern}, got {key!r}")
        check_key_not_reserved(SOURCE, key)
        for name in ("name", "version", "host", "url"):
            _check_shown_as_is(payload.get(name), name)
        host, port = self._upstream(payload)
        if not self.allowlist.allows(host):
            raise UpstreamNotAllowed(
                f"upstream host {host!r} is not in gateway.upstream_allowlist; ask the operator to allow it"
            )
        try:
            endpoints = parse_endpoints(payload.get("endpoints") or [])
        except ValueError as exc:
            raise ManifestError(SOURCE, "endpoints", str(exc)) from None
        for i, endpoint in enumerate(endpoints):
            _check_shown_as_is(endpoint.path, f"endpoints[{i}].path")
            _check_shown_as_is(endpoint.description, f"endpoints[{i}].description")
        interval = payload.get("heartbeat_interval") or self.default_interval
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ManifestError(SOURCE, "heartbeat_interval", f"must be a positive number of seconds, got {interval!r}")
        return ExternalPlugin(
            key=key,
            name=str(payload.get("name") or key),
            version=str(payload.get("version") or "0.0.0"),
            host=host,
            port=port,
            endpoints=endpoints,
            interval=float(interval),
            timeout=self.default_timeout,
            max_body=self.default_max_body,
            lost_after=lost_after,
            source=source,
            node=node,
            base_path=base_path,
        )

    @staticmethod
    def _upstream(payload: dict[str, Any]) -> tuple[str, int]:
        url = payload.get("url")
        if url:
            parts = urlsplit(str(url))
            if parts.scheme != "http" or not parts.hostname:
                raise ManifestError(SOURCE, "url", f"must be an http:// URL with a host, got {url!r}")
            if parts.path not in ("", "/") or parts.query:
                raise ManifestError(SOURCE, "url", "must be a base URL without path or query (endpoints carry paths)")
            try:
                url_port = parts.port or 80
            except ValueError:
                raise ManifestError(SOURCE, "url", f"has an invalid port: {url!r}") from None
            return parts.hostname, url_port
        host = payload.get("host") or "127.0.0.1"
        port = payload.get("port")
        if not isinstance(host, str) or not host:
            raise ManifestError(SOURCE, "host", "must be a host name or IP address")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ManifestError(SOURCE, "port", f"must be an integer 1-65535 (or give url), got {port!r}")
        return host.strip("[]"), port
