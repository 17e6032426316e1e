"""Bodies stream through the gateway: big downloads and uploads in bounded memory, events one by one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import psutil
import pytest
from fixtures.gateway.harness import fixture_process, served_gateway

from supervisor_tui.server.gateway import PluginRoute, RouteTable

SIZE = 200 * 1024**2


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with fixture_process("upstream.py") as (_, port):
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def gateway_process(upstream: str) -> Iterator[tuple[psutil.Process, str]]:
    with fixture_process("gateway_server.py", upstream) as (proc, port):
        yield psutil.Process(proc.pid), f"http://127.0.0.1:{port}"


class RssWatch:
    """Samples a process's RSS in the background while a transfer runs."""

    def __init__(self, process: psutil.Process) -> None:
        self.process = process
        self.baseline = process.memory_info().rss
        self.peak = self.baseline
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            self.peak = max(self.peak, self.process.memory_info().rss)
            await asyncio.sleep(0.02)

    def __enter__(self) -> RssWatch:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self.peak = max(self.peak, self.process.memory_info().rss)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


async def test_200_mb_download_streams_in_bounded_memory(gateway_process: tuple[psutil.Process, str]) -> None:
    process, base = gateway_process
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await client.get("/api/plugins/demo/hello")  # warm the gateway's pools before the baseline
        received = 0
        with RssWatch(process) as rss:
            async with client.stream("GET", "/api/plugins/demo/download", params={"size": str(SIZE)}) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-length"] == str(SIZE)
                async for chunk in resp.aiter_raw():
                    received += len(chunk)
    assert received == SIZE
    assert rss.growth < SIZE // 8, f"gateway RSS grew by {rss.growth} bytes for a {SIZE} byte body"


async def test_200_mb_upload_streams_in_bounded_memory(gateway_process: tuple[psutil.Process, str]) -> None:
    process, base = gateway_process
    chunk = b"u" * (1024**2)

    async def body() -> AsyncIterator[bytes]:
        for _ in range(SIZE // len(chunk)):
            yield chunk

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        await client.get("/api/plugins/demo/hello")
        with RssWatch(process) as rss:
            resp = await client.post("/api/plugins/demo/upload", content=body())
    assert resp.status_code == 200 and resp.json() == {"received": SIZE}
    assert rss.growth < SIZE // 8, f"gateway RSS grew by {rss.growth} bytes for a {SIZE} byte body"


async def test_event_stream_arrives_event_by_event(upstream: str) -> None:
    table = RouteTable([PluginRoute("demo", upstream, (("GET", "/sse"),))])
    async with served_gateway(table) as base, httpx.AsyncClient(base_url=base, timeout=20) as client:
        async with client.stream("GET", "/api/plugins/demo/sse") as resp:
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = resp.aiter_lines()
            # The upstream holds the second event until released, so the first must arrive on its own.
            first = await asyncio.wait_for(anext(lines), 10)
            assert first == "data: first"
            async with httpx.AsyncClient() as direct:
                assert (await direct.post(f"{upstream}/sse/release")).status_code == 200
            rest = []
            deadline = time.monotonic() + 10
            async for line in lines:
                rest.append(line)
                assert time.monotonic() < deadline
            assert "data: second" in rest
