"""The ingest leaves the garbage collector little to do: a committed write batch is freed as soon as it is
answered (no reference cycle leaves its planner, rows and futures to the collector, whose passes over every console
in memory once tripled the ingest's p99), and the console entries heartbeats replace are not tracked by it."""

from __future__ import annotations

import gc
from pathlib import Path

from fixtures.consoles.harness import started_service

from supervisor_tui.consoles.models import HeartbeatInput, RegistrationInput


async def test_committed_heartbeat_batches_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    async with started_service(tmp_path, consoles__auth="none") as service:
        await service.register(RegistrationInput("c1", "one", "active", None, "host", None))
        beat = HeartbeatInput("busy", None, "host", None, None, "job")
        await service.heartbeat("c1", beat)  # anything made once (caches, statements) is made now
        gc.collect()
        gc.disable()
        try:
            for _ in range(200):
                await service.heartbeat("c1", beat)
            leaked = gc.collect()
        finally:
            gc.enable()
        assert leaked < 50, f"{leaked} objects of 200 committed batches were only freed by the garbage collector"


async def test_heartbeats_leave_no_console_entries_in_the_young_generation(tmp_path: Path) -> None:
    # Each heartbeat replaces its console's entry in memory. Tracked entries would stay in the collector's young
    # generation without raising its count (one made, one freed), and the pass that finally came would walk
    # one per console sending (15-26 ms with 10,000 of them).
    async with started_service(tmp_path, consoles__auth="none") as service:
        ids = [f"c{i}" for i in range(500)]
        for cid in ids:
            await service.register(RegistrationInput(cid, cid, "active", None, "host", None))
        beat = HeartbeatInput("busy", None, "host", None, None, "job")
        for cid in ids:  # the first heartbeat changes the state: its transition and log line are made now
            await service.heartbeat(cid, beat)
        gc.collect()
        gc.disable()
        try:
            for _ in range(2):
                for cid in ids:
                    await service.heartbeat(cid, beat)
            young = gc.get_objects(generation=0)
        finally:
            gc.enable()
        assert len(young) < len(ids) // 2, f"{len(young)} objects are left in the young generation by 1,000 heartbeats"
