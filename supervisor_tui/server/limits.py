"""What a client may cost the server before it has shown any credential.

``ConnectionLimits`` is what the HTTP protocol (server.fast_http) enforces on every connection: the size and
header count of a request head (431), the time a head may take to arrive (408), the idle time between keep-alive
requests, the number of open connections (beyond it new ones get a 503 and are closed at once, with one warning
per episode), and which ``Host`` values are answered (400 otherwise, against DNS rebinding).
``ConnectionLimits.from_settings(settings, warn)`` reads them from the ``server.*`` settings.

``AllowedHosts(patterns)`` is that Host check: loopback names and addresses always pass, then exact names,
``.example.com`` (the domain and its subdomains), IP networks, or ``*`` for any. ``allowed_hosts(bind_host,
listed)`` is the default policy: none listed and bound to loopback -> loopback names only; none listed and bound
elsewhere -> any Host (None, no check).

``RateLimit(per_client, total)`` is a pair of token buckets for a request that writes before any credential
(console registration): ``take(client)`` spends a token from the client's and from the shared bucket and returns
0, or returns the seconds until both have one again (nothing spent).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from supervisor_tui.config import Settings

log = logging.getLogger(__name__)

# Descriptors a running supervisor needs besides client connections: the database, log files, plugin pipes and
# the gateway's upstream connections. Half of the open-files limit goes to clients, the rest stays for that work.
CLIENT_SHARE_OF_OPEN_FILES = 0.5
_MAX_AUTO_CONNECTIONS = 32768


def default_max_connections() -> int:
    """Half of this process's open-files limit (RLIMIT_NOFILE, soft), at least 8: 512 under the usual 1024."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 0:
        soft = 2 * _MAX_AUTO_CONNECTIONS
    return max(8, min(_MAX_AUTO_CONNECTIONS, int(soft * CLIENT_SHARE_OF_OPEN_FILES)))


def is_loopback_name(name: str) -> bool:
    """localhost (and its subdomains), 127.0.0.0/8 and ::1, as a Host header names them (lower case, no port)."""
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_name(value: bytes) -> str:
    """The name part of a Host header value: lower case, without the port (IPv6 keeps its brackets off)."""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    name, _, port = host.rpartition(":")
    return name if name and port.isdigit() else host.rstrip(":")


class AllowedHosts:
    """Which Host header values are answered: loopback names always, then ``patterns`` (see the module docstring)."""

    _CACHE_SIZE = 1024

    def __init__(self, patterns: tuple[str, ...] = ()) -> None:
        self.any = "*" in patterns
        self.names = frozenset(p.lower() for p in patterns if not p.startswith(".") and not _network(p))
        self.domains = tuple(p.lower() for p in patterns if p.startswith("."))
        self.networks = tuple(n for n in (_network(p) for p in patterns) if n is not None)
        self._seen: dict[bytes, bool] = {}  # verdicts by raw value: one dict lookup per request once warm

    def __call__(self, value: bytes) -> bool:
        verdict = self._seen.get(value)
        if verdict is None:
            verdict = self._check(_host_name(value))
            if len(self._seen) < self._CACHE_SIZE:
                self._seen[value] = verdict
        return verdict

    def _check(self, name: str) -> bool:
        if self.any or is_loopback_name(name) or name in self.names:
            return True
        if any(name == d[1:] or name.endswith(d) for d in self.domains):
            return True
        if self.networks:
            try:
                address = ipaddress.ip_address(name)
            except ValueError:
                return False
            return any(address in n for n in self.networks)
        return False


def _network(pattern: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(pattern, strict=False)
    except ValueError:
        return None


def allowed_hosts(bind_host: str, listed: tuple[str, ...]) -> AllowedHosts | None:
    """The Host check for a server bound to ``bind_host``; None answers any Host (see the module docstring)."""
    if listed:
        return AllowedHosts(listed)
    if is_loopback_name(bind_host.lower()):
        return AllowedHosts()
    return None


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may cost before it is answered (see the module docstring); sizes in bytes, times in s."""

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    header_timeout: float = 15.0
    idle_timeout: float = 5.0
    max_connections: int = field(default_factory=default_max_connections)
    allowed_hosts: AllowedHosts | None = None
    warn: Callable[[str], object] = log.warning  # where the one line per connection-cap episode goes

    @classmethod
    def from_settings(cls, settings: Settings, warn: Callable[[str], object] = log.warning) -> ConnectionLimits:
        max_connections = settings.server.max_connections or default_max_connections()
        return cls(
            max_header_bytes=settings.server.max_header_bytes,
            max_headers=settings.server.max_headers,
            header_timeout=settings.server.header_timeout,
            idle_timeout=settings.server.idle_timeout,
            max_connections=max_connections,
            allowed_hosts=allowed_hosts(settings.server.host, settings.server.allowed_hosts),
            warn=warn,
        )


class RateLimit:
    """Token buckets of ``per_client`` and ``total`` requests a minute (a minute's worth may come at once);
    0 means no limit for that bucket."""

    MAX_CLIENTS = 4096  # buckets kept; beyond it full ones are dropped (a full bucket is the same as none)

    def __init__(self, per_client: int, total: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_client, self.total = per_client, total
        self._clock = clock
        self._clients: dict[str, list[float]] = {}
        self._shared = [float(total), clock()]

    def take(self, client: str) -> float:
        """0.0 when the request may go ahead (one token spent from each bucket), else seconds to wait."""
        now = self._clock()
        wait = 0.0
        shared = self._shared
        if self.total:
            wait = _refill(shared, self.total, now)
        mine = None
        if self.per_client:
            mine = self._clients.get(client)
            if mine is None:
                self._forget_full(now)
                mine = self._clients[client] = [float(self.per_client), now]
            wait = max(wait, _refill(mine, self.per_client, now))
        if wait:
            return wait
        if self.total:
            shared[0] -= 1
        if mine is not None:
            mine[0] -= 1
        return 0.0

    def _forget_full(self, now: float) -> None:
        if len(self._clients) < self.MAX_CLIENTS:
            return
        for key, bucket in list(self._clients.items()):
            _refill(bucket, self.per_client, now)
            if bucket[0] >= self.per_client:
                del self._clients[key]
        if len(self._clients) >= self.MAX_CLIENTS:  # all busy: the shared bucket still bounds the total
            self._clients.clear()


def _refill(bucket: list[float], per_minute: int, now: float) -> float:
    """Add what accrued since the bucket's last look; the seconds until it holds one token (0 if it does)."""
    tokens, last = bucket
    tokens = min(float(per_minute), tokens + (now - last) * per_minute / 60.0)
    bucket[0], bucket[1] = tokens, now
    return 0.0 if tokens >= 1.0 else (1.0 - tokens) * 60.0 / per_minute


def retry_after(seconds: float) -> bytes:
    """A Retry-After header value: whole seconds, at least 1."""
    return b"%d" % max(1, math.ceil(seconds))
