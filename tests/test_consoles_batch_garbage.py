"""A committed write batch is freed as soon as it is answered: no reference cycle leaves its planner, rows and
futures to the garbage collector (whose passes over every console in memory once tripled the ingest's p99)."""

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
