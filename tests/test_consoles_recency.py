"""Lists sorted by last seen are paged from the service's in-memory order (no index on last_seen): the pages
must be exactly what ``ORDER BY last_seen DESC, id`` over the database gives, ties, filters and offsets included,
also after an upgrade from a database that still had the indices."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
from fixtures.consoles.harness import database_at_version, served_consoles

from supervisor_tui.consoles.recency import Recency
from supervisor_tui.core.store import SCHEMA_VERSION


@dataclass
class _Console:
    id: str
    state: str
    last_seen: float


def _expected(consoles: list[_Console], state: str | None, limit: int, offset: int, newest: bool) -> list[str]:
    rows = [c for c in consoles if state is None or c.state == state]
    rows.sort(key=lambda c: ((-c.last_seen if newest else c.last_seen), c.id))
    return [c.id for c in rows[offset : offset + limit]]


def test_pages_match_sql_order_with_ties_filters_offsets_and_a_clock_set_back() -> None:
    states = ("active", "busy", "idle", "error", "inactive")
    consoles = {f"c{i:03d}": _Console(f"c{i:03d}", states[i % 5], float(i // 7)) for i in range(300)}
    rec = Recency()
    for c in sorted(consoles.values(), key=lambda c: c.last_seen):
        rec.touch(c.id, c.last_seen, c.state)
    # Heartbeats move consoles to the end (one changes state); one arrives with an older clock (set back);
    # two time out (state only, last_seen kept); one console goes away.
    for cid, seen, state in (
        ("c005", 100.0, "busy"),
        ("c100", 100.0, "active"),
        ("c007", 101.0, "error"),
        ("c200", 50.5, "active"),
        ("c011", 1.0, "inactive"),
        ("c012", 1.0, "inactive"),
    ):
        consoles[cid].last_seen, consoles[cid].state = seen, state
        rec.touch(cid, seen, state)
    del consoles["c150"]
    rec.discard("c150")
    values = list(consoles.values())
    assert len(rec) == len(values)
    for state in (None, "busy", "error", "inactive", "unknown"):
        total = len([c for c in values if state is None or c.state == state])
        pages = [(1, 0), (5, 0), (7, 3), (100, 40), (1000, 0), (10, 10**9), (3, total - 2), (50, total // 2)]
        for limit, offset in pages:
            for newest in (True, False):
                assert rec.page(state, limit, offset, newest) == _expected(values, state, limit, offset, newest), (
                    state,
                    limit,
                    offset,
                    newest,
                )


async def test_upgrade_from_schema_3_keeps_every_console_and_lists_them_by_last_seen(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = database_at_version(data, 3)
    now = time.time()
    db.executemany(
        "INSERT INTO consoles (id, name, state, reported_state, first_seen, last_seen, heartbeats) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(f"u{i}", f"U{i}", "busy" if i % 2 else "idle", "busy", now - 100, now - 10 * (i % 3), i) for i in range(9)],
    )
    db.commit()
    db.close()
    async with served_consoles(data) as srv:
        assert await srv.store.schema_version() == SCHEMA_VERSION
        async with srv.store.reader.execute("SELECT name FROM sqlite_master WHERE type = 'index'") as cur:
            indices = {r[0] for r in await cur.fetchall()}
        assert "idx_consoles_last_seen" not in indices and "idx_consoles_state_seen" not in indices
        async with httpx.AsyncClient(base_url=srv.url, headers=srv.admin) as client:
            r = await client.get("/api/consoles?limit=4")
            assert r.json()["total"] == 9
            assert [c["id"] for c in r.json()["consoles"]] == ["u0", "u3", "u6", "u1"]
            r = await client.get("/api/consoles?state=busy&sort=last_seen&limit=2&offset=1")
            assert r.json()["total"] == 4
            assert [c["id"] for c in r.json()["consoles"]] == ["u1", "u7"]
            assert sum(c["heartbeats"] for c in (await client.get("/api/consoles")).json()["consoles"]) == 36


def test_pages_match_sql_order_after_random_heartbeats_and_timeouts() -> None:
    rng = random.Random(4)
    states = ("active", "busy", "idle", "error")
    consoles: dict[str, _Console] = {}
    rec = Recency()
    now = 0.0
    for _ in range(3000):
        now += rng.choice((0.0, 0.0, 1.0))  # many ties
        cid = f"k{rng.randrange(200):03d}"
        c = consoles.get(cid)
        if c is not None and c.state != "inactive" and rng.random() < 0.1:
            c.state = "inactive"  # a timeout: the state changes, last_seen stays
        elif c is not None and rng.random() < 0.02:
            del consoles[cid]
            rec.discard(cid)
            continue
        else:
            c = consoles[cid] = _Console(cid, rng.choice(states), now)
        rec.touch(cid, c.last_seen, c.state)
    values = list(consoles.values())
    for state in (None, "busy", "inactive"):
        for _ in range(40):
            limit, offset, newest = rng.randrange(1, 60), rng.randrange(0, 220), rng.random() < 0.5
            assert rec.page(state, limit, offset, newest) == _expected(values, state, limit, offset, newest)
