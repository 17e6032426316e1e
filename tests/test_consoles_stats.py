"""Seed 004's statistics (count and latest activity by state) answered from the service's memory: the same answer as
the store's own query, on both stores, whatever the consoles did (consoles/latest_activity.py)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from conftest import wait_until
from fixtures.consoles.harness import ConsoleServer, served_consoles

from supervisor_tui.consoles.console_entry import ConsoleEntry
from supervisor_tui.consoles.latest_activity import LatestActivity, as_stored_in_microseconds
from supervisor_tui.consoles.models import HeartbeatInput, RegistrationInput

# Activities as consoles send them: whole seconds, milliseconds, and numbers finer than the microseconds
# PostgreSQL keeps (one rounds up into the next millisecond there: .0009996 s is stored as .001000).
T0 = 1_764_757_800.0


def _hb(state: str, activity: float | None, host: str | None = None) -> HeartbeatInput:
    return HeartbeatInput(state, None, host, activity, None, None)


async def _same_as_the_store(srv: ConsoleServer) -> dict[str, Any]:
    from_memory = await srv.service.stats()
    assert from_memory == await srv.console_store.stats()
    return from_memory


def _latest(stats: dict[str, Any]) -> dict[str, tuple[int, str | None]]:
    return {s["state"]: (s["count"], s["last_activity"]) for s in stats["states"] if s["count"]}


async def test_stats_from_memory_are_the_stores_answer_through_heartbeats_flips_and_removals(
    tmp_path: Path, console_store: str
) -> None:
    async with served_consoles(
        tmp_path, consoles__store=console_store, consoles__auth="none", consoles__inactive_after="600"
    ) as srv:
        service = srv.service
        assert await _same_as_the_store(srv) == {
            "total": 0,
            "states": [{"state": s, "count": 0, "last_activity": None} for s in srv.service.counts_by_state()],
        }
        for i, (state, activity) in enumerate(
            [("busy", T0 + 5), ("busy", T0 + 0.0009996), ("idle", None), ("error", T0 + 1.25), ("active", T0)]
        ):
            await service.register(RegistrationInput(f"c{i}", f"Consola {i}", state, None, f"host-{i}", activity))
        stats = await _same_as_the_store(srv)
        assert stats["total"] == 5
        assert _latest(stats) == {
            "active": (1, "2025-12-03T10:30:00.000Z"),
            "busy": (2, "2025-12-03T10:30:05.000Z"),
            "idle": (1, None),
            "error": (1, "2025-12-03T10:30:01.250Z"),
        }

        # The latest busy console reports an older activity: busy's latest is the other one's, as stored.
        await service.heartbeat("c0", _hb("busy", T0 - 30))
        stats = await _same_as_the_store(srv)
        on_pg = console_store != "sqlite"
        assert _latest(stats)["busy"] == (2, "2025-12-03T10:30:00.001Z" if on_pg else "2025-12-03T10:30:00.000Z")
        # One leaves busy for idle with a later activity; a heartbeat without one keeps the console's.
        await service.heartbeat("c1", _hb("idle", T0 + 60))
        await service.heartbeat("c0", _hb("busy", None))
        stats = await _same_as_the_store(srv)
        assert _latest(stats)["busy"] == (1, "2025-12-03T10:29:30.000Z")
        assert _latest(stats)["idle"] == (2, "2025-12-03T10:31:00.000Z")

        # Silent consoles go inactive (a sweep past every deadline), with the activity they last reported.
        assert service.sweep(now=time.time() + 10_000) == 5
        await wait_until(lambda: service.counts_by_state()["inactive"] == 5, timeout=10)
        stats = await _same_as_the_store(srv)
        assert _latest(stats) == {"inactive": (5, "2025-12-03T10:31:00.000Z")}
        # One speaks again; the latest inactive one is removed: inactive's latest is found among the others.
        await service.heartbeat("c3", _hb("error", None))
        assert await service.remove("c1")
        stats = await _same_as_the_store(srv)
        assert stats["total"] == 4
        assert _latest(stats) == {"inactive": (3, "2025-12-03T10:30:00.000Z"), "error": (1, "2025-12-03T10:30:01.250Z")}
        assert (await _same_as_the_store(srv)) == stats  # asked again: the same (nothing stale left)


def test_latest_activity_is_found_again_only_when_its_console_left() -> None:
    def entry(cid: str, state: str, activity: float | None) -> ConsoleEntry:
        return ConsoleEntry(cid, cid, state, state, None, 0.0, 0.0, last_activity=activity)

    latest = LatestActivity()
    a, b = entry("a", "busy", 10.0), entry("b", "busy", 20.0)
    consoles = {"a": a, "b": b}
    latest.changed(None, a)
    latest.changed(None, b)
    assert latest.by_state(consoles.values()) == {"busy": 20.0}
    b2 = entry("b", "busy", 25.0)  # the latest moves up: no walk needed, and none is made
    latest.changed(b, b2)
    consoles["b"] = b2
    assert latest.by_state([]) == {"busy": 25.0}
    b3 = entry("b", "idle", 25.0)  # the latest leaves: busy's is found again among the consoles
    latest.changed(b2, b3)
    consoles["b"] = b3
    assert latest.by_state(consoles.values()) == {"busy": 10.0, "idle": 25.0}
    latest.changed(a, None)
    del consoles["a"]
    assert latest.by_state(consoles.values()) == {"idle": 25.0}


def test_microseconds_as_postgresql_stores_them() -> None:
    assert as_stored_in_microseconds(T0 + 0.0009996) == T0 + 0.001
    assert as_stored_in_microseconds(T0 + 0.25) == T0 + 0.25
    assert as_stored_in_microseconds(T0 + 0.0000004) == T0
