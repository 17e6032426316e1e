"""A route with several upstreams, against real upstream processes: round robin over those that are up, GET/HEAD/
OPTIONS fail over to the next one when an upstream cannot be reached, other methods get the 502, none up is 503."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections import Counter
from collections.abc import Iterator

import httpx
from fixtures.gateway.harness import fixture_process, served_gateway
from fixtures.ports import free_port

from supervisor_tui.server.gateway import PluginRoute, RouteTable, Upstream

ENDPOINTS = (("GET", "/whoami"), ("OPTIONS", "/whoami"), ("POST", "/whoami"))


def refused_url() -> str:
    """A URL nothing listens on: bind a port, then free it."""
    return f"http://127.0.0.1:{free_port()}"


@contextlib.contextmanager
def upstream_processes(n: int) -> Iterator[list[tuple[int, int]]]:
    """``n`` real upstream processes; yields their (pid, port)."""
    with contextlib.ExitStack() as stack:
        yield [
            (proc.pid, port) for proc, port in (stack.enter_context(fixture_process("upstream.py")) for _ in range(n))
        ]


def route(upstreams: tuple[Upstream, ...]) -> PluginRoute:
    return PluginRoute("demo", None, ENDPOINTS, upstreams=upstreams)


async def test_requests_go_round_robin_over_the_upstreams_that_are_up() -> None:
    with upstream_processes(3) as procs:
        ports = [port for _, port in procs]
        upstreams = tuple(Upstream(f"replica {i}", f"http://127.0.0.1:{p}") for i, p in enumerate(ports))
        down = Upstream("replica 3", refused_url(), up=False)
        table = RouteTable([route((*upstreams, down))])
        async with served_gateway(table) as base, httpx.AsyncClient(base_url=base) as client:
            seen = [(await client.get("/api/plugins/demo/whoami")).json()["port"] for _ in range(30)]
        assert Counter(seen) == {p: 10 for p in ports}
        assert seen[:3] == [seen[0], seen[1], seen[2]] and len(set(seen[:3])) == 3  # one after the other
        listed = table.get("demo")
        assert listed is not None
        assert [(u.label, u.up) for u in listed.all_upstreams()] == [
            ("replica 0", True),
            ("replica 1", True),
            ("replica 2", True),
            ("replica 3", False),
        ]


async def test_an_unreachable_upstream_costs_no_get_head_or_options_but_other_methods_get_502() -> None:
    with upstream_processes(1) as [(_, port)]:
        live = f"http://127.0.0.1:{port}"
        table = RouteTable([route((Upstream("a", refused_url()), Upstream("b", live)))])
        reports: list[tuple[str, bool]] = []
        async with (
            served_gateway(table, lambda key, ok: reports.append((key, ok))) as base,
            httpx.AsyncClient(base_url=base) as client,
        ):
            for _ in range(4):
                for method in ("GET", "HEAD", "OPTIONS"):
                    resp = await client.request(method, "/api/plugins/demo/whoami")
                    assert resp.status_code == 200, (method, resp.text)
            posts = [(await client.post("/api/plugins/demo/whoami", content=b"x")).status_code for _ in range(6)]
        # Round robin sends every other POST to the unreachable upstream; a POST is never sent twice.
        assert sorted(posts) == [200, 200, 200, 502, 502, 502]
        assert ("demo", False) in reports


async def test_no_upstream_up_is_503_with_retry_after_and_all_unreachable_is_502() -> None:
    table = RouteTable([route((Upstream("a", refused_url(), up=False), Upstream("b", refused_url(), up=False)))])
    async with served_gateway(table) as base, httpx.AsyncClient(base_url=base) as client:
        resp = await client.get("/api/plugins/demo/whoami")
        assert resp.status_code == 503 and resp.headers["retry-after"]
        assert resp.json()["error"]["code"] == "plugin_unavailable"
        assert "none of its upstreams is up" in resp.json()["error"]["message"]
        table.set(route((Upstream("a", refused_url()), Upstream("b", refused_url()))))
        resp = await client.get("/api/plugins/demo/whoami")
        assert resp.status_code == 502 and resp.json()["error"]["code"] == "upstream_unreachable"


async def test_killing_one_upstream_under_a_get_load_costs_no_failed_get() -> None:
    with upstream_processes(2) as procs:
        upstreams = tuple(Upstream(f"replica {i}", f"http://127.0.0.1:{p}") for i, (_, p) in enumerate(procs))
        table = RouteTable([route(upstreams)])
        async with served_gateway(table) as base:
            limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=20) as client:
                statuses: Counter[int] = Counter()
                ports: Counter[int] = Counter()
                killed = asyncio.Event()
                warmed_up = asyncio.Event()

                async def load() -> None:
                    n = 0
                    while not killed.is_set() or n < 150:  # keep going well past the kill
                        resp = await client.get("/api/plugins/demo/whoami")
                        statuses[resp.status_code] += 1
                        if resp.status_code == 200:
                            ports[resp.json()["port"]] += 1
                        if sum(ports.values()) >= 200:  # both upstreams busy, kept-alive connections to both
                            warmed_up.set()
                        n += 1 if killed.is_set() else 0

                workers = [asyncio.create_task(load()) for _ in range(8)]
                await warmed_up.wait()
                os.kill(procs[0][0], signal.SIGKILL)
                killed.set()
                await asyncio.gather(*workers)
        assert set(statuses) == {200}, statuses
        assert ports[procs[0][1]] > 0 and ports[procs[1][1]] > 8 * 150
