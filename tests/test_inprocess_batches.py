"""Loading in-process plugins: batches of 3 at a time (observed, not timed), and the LoadResult."""

from __future__ import annotations

import asyncio

from conftest import open_supervisor, wait_until
from inprocess_support import Probe, inprocess_table

from supervisor_tui.config import Settings
from supervisor_tui.core.inprocess_host import InProcessHost


async def test_plugins_load_three_at_a_time(settings: Settings) -> None:
    probe = Probe()
    names = [f"gated-{i}" for i in range(1, 8)]
    settings.tables["inprocess"] = {
        name: inprocess_table("inprocess_support:Gated", probe=probe, name=name) for name in names
    }
    settings.tables["inprocess"]["load_timeout"] = "60s"
    async with open_supervisor(settings) as sup:
        host = InProcessHost(sup)
        loading = asyncio.create_task(host.load())
        try:
            for batch in (names[0:3], names[3:6], names[6:7]):
                # Exactly this batch is inside initialize(), and nobody from a later batch has started.
                await wait_until(lambda batch=batch: probe.inside == set(batch))
                assert probe.entered == names[: names.index(batch[-1]) + 1]
                assert all(sup.plugin(n).state == "STARTING" for n in batch)
                for name in batch:
                    probe.gate(name).set()
            result = await loading
        finally:
            await host.close()
        assert probe.most == 3
        assert result.loaded == names and result.failed == []
        assert all(sup.plugin(n).state == "RUNNING" for n in names)
