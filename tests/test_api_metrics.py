"""`/metrics` as Prometheus scrapes it: parsed with prometheus_client's own parser, figures a user would notice."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from conftest import wait_until
from fixtures.api.harness import REPORTER, REPORTER_ENDPOINTS, REPORTER_HEALTH, Api, bearer, running_api
from prometheus_client.parser import text_string_to_metric_families

from supervisor_tui.config import Settings

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(api: Api) -> Samples:
    r = await api.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


async def test_plugin_figures(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    make_plugin("web", str(REPORTER), endpoints=REPORTER_ENDPOINTS, health={"path": "/hello", "interval_s": 0.2})
    make_plugin("idle", "sleeper.py", autostart=False)
    make_plugin("flaky", "crash_after.py", env={"CRASH_AFTER": "0.5"}, startretries=100)
    async with running_api(settings) as api:
        m = await scrape(api)
        assert value(m, "supervisor_plugin_state", plugin="web", state="RUNNING") == 1
        assert value(m, "supervisor_plugin_state", plugin="web", state="STOPPED") == 0
        assert value(m, "supervisor_plugin_state", plugin="idle", state="STOPPED") == 1
        assert value(m, "supervisor_plugin_healthy", plugin="web") == 1
        assert value(m, "supervisor_plugin_restarts_total", plugin="web") == 0

        async def sampled() -> Samples | None:
            m = await scrape(api)
            rss = value(m, "supervisor_plugin_rss_bytes", plugin="web")
            return m if rss else None

        m = await wait_until(sampled, timeout=30)
        assert value(m, "supervisor_plugin_rss_bytes", plugin="web") > 1024 * 1024  # a Python process
        assert value(m, "supervisor_plugin_cpu_percent", plugin="web") >= 0
        assert value(m, "supervisor_plugin_rss_bytes", plugin="idle") is None  # not running, nothing sampled
        # The admin API's history has the same samples.
        samples = (await api.client.get("/api/v1/plugins/web/metrics")).json()["samples"]
        assert samples and samples[-1]["rss"] > 1024 * 1024 and samples[-1]["processes"] >= 1
        assert (await api.client.get("/api/v1/plugins/idle/metrics")).json() == {"samples": []}
        assert (await api.client.get("/api/v1/plugins/nope/metrics")).status_code == 404

        async def restarted() -> bool:
            return (value(await scrape(api), "supervisor_plugin_restarts_total", plugin="flaky") or 0) >= 1

        await wait_until(restarted, timeout=30)
        r = await api.client.post("/api/v1/plugins/web/stop")
        assert r.status_code == 200
        m = await scrape(api)
        assert value(m, "supervisor_plugin_state", plugin="web", state="STOPPED") == 1
        assert value(m, "supervisor_plugin_state", plugin="web", state="RUNNING") == 0


async def test_gateway_requests_are_counted_by_plugin_method_and_status_class(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("web", str(REPORTER), endpoints=REPORTER_ENDPOINTS, health=REPORTER_HEALTH)
    async with running_api(settings) as api:
        name = "supervisor_gateway_requests_total"
        before = await scrape(api)
        assert value(before, name, plugin="web", method="GET", status_class="2xx") is None
        assert (await api.client.get("/api/plugins/web/hello")).status_code == 200
        assert (await api.client.get("/api/plugins/web/hello")).status_code == 200
        assert (await api.client.get("/api/plugins/web/missing")).status_code == 404
        m = await scrape(api)
        assert value(m, name, plugin="web", method="GET", status_class="2xx") == 2
        assert value(m, name, plugin="web", method="GET", status_class="4xx") == 1
        hist = "supervisor_gateway_request_duration_seconds"
        labels = {"plugin": "web", "method": "GET", "status_class": "2xx"}
        assert value(m, hist + "_count", **labels) == 2
        assert (value(m, hist + "_sum", **labels) or 0) > 0
        buckets = sorted(
            (float(dict(key)["le"]), v)
            for (n, key), v in m.items()
            if n == hist + "_bucket" and dict(key)["method"] == "GET" and dict(key)["status_class"] == "2xx"
        )
        assert buckets[-1] == (float("inf"), 2)
        assert all(a[1] <= b[1] for a, b in itertools.pairwise(buckets))  # cumulative
        # A stopped plugin's route answers 503, and that is counted too.
        assert (await api.client.post("/api/v1/plugins/web/stop")).status_code == 200
        assert (await api.client.get("/api/plugins/web/hello")).status_code == 503
        m = await scrape(api)
        assert value(m, name, plugin="web", method="GET", status_class="5xx") == 1
        assert value(m, name, plugin="web", method="GET", status_class="2xx") == 2
        # The plugin's own figure in the admin API agrees.
        assert (await api.plugin("web"))["requests"] == 4


async def test_console_counts_and_heartbeat_counters(settings: Settings) -> None:
    async with running_api(settings) as api:
        m = await scrape(api)
        assert value(m, "supervisor_consoles", state="busy") == 0
        assert value(m, "supervisor_heartbeats_total") == 0
        async with httpx.AsyncClient(base_url=api.url) as console:
            r = await console.post("/api/consoles/register", json={"id": "w1", "name": "W1", "state": "idle"})
            assert r.status_code == 201, r.text
            token = r.json()["token"]
            hb = {"state": "busy", "last_activity": "2025-12-03T10:30:00Z", "current_job": "render"}
            r = await console.post("/api/consoles/w1/heartbeat", json=hb, headers=bearer(token))
            assert r.status_code == 200, r.text
            r = await console.post("/api/consoles/w1/heartbeat", json=hb, headers=bearer("not-its-token"))
            assert r.status_code in (401, 403)

        async def counted() -> Samples | None:
            m = await scrape(api)
            return m if value(m, "supervisor_heartbeats_total") == 1 else None

        m = await wait_until(counted, timeout=30)
        assert value(m, "supervisor_consoles", state="busy") == 1
        rejected = sum(v for (n, _), v in m.items() if n == "supervisor_heartbeats_rejected_total")
        assert rejected == 1
