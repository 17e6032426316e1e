"""What the gateway counts and reports: latency histograms, the stats snapshot, and upstream outcomes.

- ``LatencyHistograms``: ``observe(plugin, method, status, started)`` adds one request (latency runs from
  ``started``, a ``perf_counter`` time, until the response head is sent); ``series()`` returns one ``LatencySeries``
  per plugin, method and status class. Methods outside the standard set count as "other", so whatever clients send
  the label set stays bounded.
- ``GatewayStats``: the snapshot ``Gateway.stats()`` returns for ``/metrics`` and the TUI.
- ``UpstreamOutcomes(on_result)``: passive health. ``report(route, ok)`` calls ``on_result(key, ok)`` for every
  failed upstream exchange (connection failure, timeout or a 5xx answer) and for the first success after a
  failure; the callee counts consecutive failures.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass

from supervisor_tui.server.gateway_routes import STANDARD_METHODS, CompiledRoute

ResultCallback = Callable[[str, bool], None]

# Upper bounds (seconds) of the latency histogram buckets; the last, implicit bucket is +Inf.
LATENCY_BUCKETS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_STATUS_CLASS = ("1xx", "1xx", "2xx", "3xx", "4xx", "5xx")
_LABELLED_METHODS = frozenset(STANDARD_METHODS)


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


class LatencyHistograms:
    """Latency histograms by (plugin, method, status class), kept as flat lists: count, total, one per bucket."""

    __slots__ = ("_histograms",)

    def __init__(self) -> None:
        self._histograms: dict[tuple[str, str, str], list[float]] = {}

    def observe(self, plugin: str, method: str, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        if method not in _LABELLED_METHODS:  # keep the label set bounded whatever clients send
            method = "other"
        k = (plugin, method, _STATUS_CLASS[status // 100] if status < 600 else "5xx")
        h = self._histograms.get(k)
        if h is None:
            h = self._histograms[k] = [0, 0.0] + [0] * (len(LATENCY_BUCKETS) + 1)
        h[0] += 1
        h[1] += elapsed
        h[2 + bisect_left(LATENCY_BUCKETS, elapsed)] += 1

    def series(self) -> tuple[LatencySeries, ...]:
        """One cumulative series per histogram, for the stats snapshot."""
        series = []
        for (plugin, method, status_class), h in self._histograms.items():
            cumulative, running = [], 0
            for n in h[2:]:
                running += int(n)
                cumulative.append(running)
            series.append(LatencySeries(plugin, method, status_class, int(h[0]), h[1], tuple(cumulative)))
        return tuple(series)


class UpstreamOutcomes:
    """Passive health: tells ``on_result`` about failures, and about the first success after one."""

    __slots__ = ("on_result",)

    def __init__(self, on_result: ResultCallback | None) -> None:
        self.on_result = on_result

    def report(self, route: CompiledRoute, ok: bool) -> None:
        if self.on_result is None or (ok and route.last_ok):
            return
        route.last_ok = ok
        try:
            self.on_result(route.key, ok)
        except Exception:  # a broken health callback must not break proxying
            pass
