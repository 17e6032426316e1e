"""Two heartbeat batches in flight at once on the PostgreSQL store (different consoles only): every console's
heartbeats are still written in order, its transitions form one chain, and memory ends as the table."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import asyncpg
from fixtures.consoles.harness import served_consoles

from supervisor_tui.consoles.models import HeartbeatInput, RegistrationInput

STATES = ("active", "busy", "idle", "error")


async def test_batches_in_flight_keep_each_consoles_heartbeats_in_order(tmp_path: Path, pg_cluster: Any) -> None:
    dsn = pg_cluster.new_database()
    rng = random.Random(3)
    async with served_consoles(tmp_path, consoles__store=dsn, consoles__auth="none") as srv:
        service = srv.service
        ids = [f"p{i}" for i in range(20)]
        for cid in ids:
            await service.register(RegistrationInput(cid, cid, "idle", None, None, None))
        last: dict[str, str] = {}
        sent = 0
        for _ in range(30):
            # A burst from many connections at once: batches start while others are committing.
            futures = []
            for _ in range(6):
                for _ in range(10):
                    cid, state = rng.choice(ids), rng.choice(STATES)
                    futures.append(service.submit_heartbeat(cid, HeartbeatInput(state, None, None, None, None, None)))
                    last[cid] = state
                    sent += 1
                for _ in range(3):
                    await asyncio.sleep(0)  # let the writer start a batch with these while the others commit
            await asyncio.gather(*futures)
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT console_id, reported_state, heartbeats FROM consolas")
            chains = await conn.fetch(
                "SELECT console_id, from_state, to_state FROM console_transitions ORDER BY console_id, id"
            )
        finally:
            await conn.close()
        assert {r[0]: r[1] for r in rows} == {cid: last.get(cid, "idle") for cid in ids}
        assert sum(r[2] for r in rows) == sent
        previous: dict[str, str | None] = {}
        for cid, old, new in chains:
            assert old == previous.get(cid), (cid, old, previous.get(cid))
            previous[cid] = new
        assert service.most_batches_in_flight == 2  # the test did write with two batches in flight
        assert {cid: service.state_of(cid) for cid in ids} == {cid: last.get(cid, "idle") for cid in ids}


async def test_a_burst_with_nothing_in_flight_is_written_in_two_batches_and_a_few_heartbeats_in_one(
    tmp_path: Path, pg_cluster: Any
) -> None:
    # Clients answered together come back together: the writer gives the second connection its share at once
    # instead of writing everything in one batch while the other connection waits.
    dsn = pg_cluster.new_database()
    async with served_consoles(tmp_path, consoles__store=dsn, consoles__auth="none") as srv:
        service = srv.service
        ids = [f"b{i}" for i in range(32)]
        for cid in ids:
            await service.register(RegistrationInput(cid, cid, "idle", None, None, None))

        async def burst(consoles: list[str]) -> int:
            before = service.metrics().write_batches
            # Queued in one turn of the loop, with no batch in flight: the writer sees all of them at once.
            await asyncio.gather(
                *[service.submit_heartbeat(c, HeartbeatInput("busy", None, None, None, None, None)) for c in consoles]
            )
            return service.metrics().write_batches - before

        assert service.writes_in_flight == 0
        assert await burst(ids) == 2
        assert service.most_batches_in_flight == 2
        assert await burst(ids[:3]) == 1
        conn = await asyncpg.connect(dsn)
        try:
            counts = dict(await conn.fetch("SELECT console_id, heartbeats FROM consolas"))
        finally:
            await conn.close()
        assert counts == {cid: 2 if cid in ids[:3] else 1 for cid in ids}
