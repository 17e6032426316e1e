"""`/metrics`: Prometheus text built at scrape time from the supervisor, the gateway and the consoles.

``MetricsEndpoint(sup, gateway_stats, consoles=service).render()``: the text (console figures only with a service).

Nothing here is updated on a hot path: a collector reads the live figures when Prometheus asks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor_tui.consoles.service import ConsoleService
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.plugins.model import PluginState

if TYPE_CHECKING:
    from supervisor_tui.fleet.node import FleetNode  # the Redis client loads only with redis.url set

PLUGIN_STATES = tuple(s.value for s in PluginState)


class SupervisorCollector(Collector):
    """Reads plugin, gateway and console figures at scrape time."""

    def __init__(
        self,
        sup: Supervisor,
        gateway_stats: Callable[[], Any] | None = None,
        consoles: ConsoleService | None = None,
        fleet: FleetNode | None = None,
    ) -> None:
        self.sup = sup
        self.gateway_stats = gateway_stats
        self.consoles = consoles
        self.fleet = fleet

    def collect(self) -> Iterator[Metric]:
        yield from self._plugins()
        if self.gateway_stats is not None:
            yield from self._gateway(self.gateway_stats())
        if self.consoles is not None:
            yield from self._consoles(self.consoles)
        if self.fleet is not None:
            yield from self._fleet(self.fleet)

    def _fleet(self, fleet: FleetNode) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "supervisor_redis_up", "1 while the fleet's Redis is connected", value=float(fleet.link.up)
        )
        yield CounterMetricFamily(
            "supervisor_redis_outages", "Times the Redis connection was lost", value=float(fleet.link.outages)
        )
        received = CounterMetricFamily("supervisor_redis_messages", "Messages received on Redis", labels=["channel"])
        for channel, n in sorted(fleet.listener.received.items()):
            received.add_metric([channel], float(n))
        yield received
        refused = CounterMetricFamily(
            "supervisor_redis_messages_refused", "Messages received on Redis and not applied", labels=["reason"]
        )
        for reason, n in sorted(fleet.listener.refused.items()):
            refused.add_metric([reason], float(n))
        yield refused
        yield CounterMetricFamily(
            "supervisor_redis_published", "Messages this node published", value=float(fleet.announcer.published)
        )

    def _plugins(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "supervisor_plugin_state", "1 for the plugin's current state", labels=["plugin", "state"]
        )
        restarts = CounterMetricFamily(
            "supervisor_plugin_restarts", "Restarts since the supervisor started", labels=["plugin"]
        )
        cpu = GaugeMetricFamily(
            "supervisor_plugin_cpu_percent", "CPU % of the plugin's process tree", labels=["plugin"]
        )
        rss = GaugeMetricFamily(
            "supervisor_plugin_rss_bytes", "Resident memory of the plugin's process tree", labels=["plugin"]
        )
        healthy = GaugeMetricFamily(
            "supervisor_plugin_healthy", "1 healthy, 0 unhealthy (absent: not probed)", labels=["plugin"]
        )
        for p in self.sup.plugins():
            for s in PLUGIN_STATES:
                state.add_metric([p.key, s], 1.0 if p.state == s else 0.0)
            restarts.add_metric([p.key], float(p.restarts))
            if p.last_metrics is not None:
                cpu.add_metric([p.key], float(p.last_metrics.cpu_percent))
                rss.add_metric([p.key], float(p.last_metrics.rss))
            if p.healthy is not None:
                healthy.add_metric([p.key], 1.0 if p.healthy else 0.0)
        yield from (state, restarts, cpu, rss, healthy)

    def _gateway(self, stats: Any) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "supervisor_gateway_requests",
            "Requests proxied by the gateway",
            labels=["plugin", "method", "status_class"],
        )
        latency = HistogramMetricFamily(
            "supervisor_gateway_request_duration_seconds",
            "Gateway request latency (until the response starts)",
            labels=["plugin", "method", "status_class"],
        )
        for series in stats.series():
            labels = [series.plugin, series.method, series.status_class]
            requests.add_metric(labels, float(series.count))
            latency.add_metric(labels, series.buckets(), series.total_seconds)
        yield from (requests, latency)

    def _consoles(self, consoles: ConsoleService) -> Iterator[Metric]:
        m = consoles.metrics()
        by_state = GaugeMetricFamily("supervisor_consoles", "Registered consoles by state", labels=["state"])
        for s, n in sorted(m.consoles_by_state.items()):
            by_state.add_metric([s], float(n))
        yield by_state
        accepted = CounterMetricFamily("supervisor_heartbeats", "Heartbeats committed")
        accepted.add_metric([], float(m.heartbeats_accepted))
        yield accepted
        rejected = CounterMetricFamily("supervisor_heartbeats_rejected", "Heartbeats refused", labels=["reason"])
        for reason, n in sorted(m.heartbeats_rejected.items()):
            rejected.add_metric([reason], float(n))
        yield rejected
        registrations = CounterMetricFamily("supervisor_console_registrations", "Console registrations committed")
        registrations.add_metric([], float(m.registrations))
        yield registrations
        batches = CounterMetricFamily(
            "supervisor_console_write_batches", "Transactions of the console writer", labels=["outcome"]
        )
        batches.add_metric(["committed"], float(m.write_batches))
        batches.add_metric(["failed"], float(m.write_failures))
        yield batches
        yield CounterMetricFamily(
            "supervisor_console_history_rows_skipped",
            "Heartbeat and transition rows not written because their history table is damaged",
            value=float(m.history_skipped),
        )


class MetricsEndpoint:
    """Renders the registry on demand."""

    def __init__(
        self,
        sup: Supervisor,
        gateway_stats: Callable[[], Any] | None = None,
        consoles: ConsoleService | None = None,
        fleet: FleetNode | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SupervisorCollector(sup, gateway_stats, consoles, fleet))

    def render(self) -> bytes:
        return generate_latest(self.registry)
