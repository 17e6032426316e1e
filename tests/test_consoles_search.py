"""Search by name, host or id (GET /api/consoles?q=), answered from memory: it agrees with a plain substring filter,
follows every change (host from a heartbeat, name from a re-registration, removal), survives VACUUM and the upgrades
from schema 4 and from the trigram table's schema 7 (which end as a fresh database), and takes any text as a search."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx
from fixtures.consoles.harness import database_at_version, served_consoles

from supervisor_tui.core.store import SCHEMA_VERSION


async def register(client: httpx.AsyncClient, cid: str, name: str, host: str) -> str:
    body = {"id": cid, "name": name, "state": "idle", "system": {"hostname": host}}
    r = await client.post("/api/consoles/register", json=body)
    assert r.status_code in (200, 201), r.text
    return str(r.json()["token"])


async def found(client: httpx.AsyncClient, q: str, **params: Any) -> set[str]:
    r = await client.get("/api/consoles", params={"q": q, "limit": 1000, **params})
    assert r.status_code == 200, r.text
    ids = {c["id"] for c in r.json()["consoles"]}
    assert r.json()["total"] == len(ids)
    return ids


async def test_search_agrees_with_a_substring_filter(tmp_path: Path, console_store: str) -> None:
    rng = random.Random(7)
    letters = "abcAB-1 "
    consoles = {
        f"id{i}": ("".join(rng.choice(letters) for _ in range(rng.randint(3, 9))), f"h{rng.choice(letters)}{i % 7}")
        for i in range(150)
    }
    # 150 registrations from one address at once: over the default rate limit.
    async with (
        served_consoles(tmp_path, consoles__store=console_store, consoles__register_rate=0) as srv,
        httpx.AsyncClient(base_url=srv.url, headers=srv.admin) as client,
    ):
        for cid, (name, host) in consoles.items():
            await register(client, cid, name, host)
        searches = ["id7", "id149", *("".join(rng.choice(letters) for _ in range(n)) for n in (1, 2, 3, 3, 4, 5, 6))]
        for q in searches:
            expected = {
                cid
                for cid, (name, host) in consoles.items()
                if q.lower() in name.lower() or q.lower() in host.lower() or cid == q
            }
            assert await found(client, q) == expected, q
        # With a state filter and paging the total still counts every match.
        r = await client.get("/api/consoles", params={"q": "h", "state": "idle", "limit": 5, "offset": 3})
        assert r.json()["total"] == len(consoles) and len(r.json()["consoles"]) == 5


async def test_search_follows_host_name_and_removal(tmp_path: Path, console_store: str) -> None:
    async with (
        served_consoles(tmp_path, consoles__store=console_store) as srv,
        httpx.AsyncClient(base_url=srv.url) as client,
    ):
        token = await register(client, "w1", "Render box", "rack0-node0")
        await register(client, "w2", "Ñandú encoder", "rack1-node1")
        async with httpx.AsyncClient(base_url=srv.url, headers=srv.admin) as reads:
            assert await found(reads, "rack0") == {"w1"}
            hb = {"state": "busy", "system": {"hostname": "edge-7"}}
            r = await client.post("/api/consoles/w1/heartbeat", json=hb, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
            assert await found(reads, "EDGE-7") == {"w1"}
            assert await found(reads, "rack0") == set()
            body = {"id": "w1", "name": "Transcoder", "state": "idle"}
            r = await client.post("/api/consoles/register", json=body, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 200
            assert await found(reads, "transcoder") == {"w1"}
            assert await found(reads, "render") == set()
            assert await found(reads, "ÑANDÚ") == {"w2"}  # case folded beyond ASCII
            assert await found(reads, "w2") == {"w2"}  # an id
            await register(client, "node-9", "Node nine", "node-9")
            assert await found(reads, "node-9") == {"node-9"}  # by id and by host: counted once
            for odd in ('"', '"nand"', "rack AND node", "NEAR(a b)", "node*", "x' OR 1=1 --", "%", "_", "ab\x00cd"):
                await found(reads, odd)  # any text is a search, never a syntax error
            assert await found(reads, "node*") == set() and await found(reads, "rack1-") == {"w2"}
            assert (await reads.delete("/api/consoles/w2")).status_code == 200
            assert await found(reads, "encoder") == set()


async def test_search_survives_vacuum(tmp_path: Path) -> None:
    async with served_consoles(tmp_path) as srv, httpx.AsyncClient(base_url=srv.url, headers=srv.admin) as client:
        for i in range(40):
            await register(client, f"v{i}", f"Vacuum {i}", f"host-{i}")
        for i in range(0, 40, 3):  # holes, so that VACUUM has rowids to renumber
            assert (await client.delete(f"/api/consoles/v{i}")).status_code == 200
        db_path = srv.settings.db_path
    db = sqlite3.connect(db_path)
    db.execute("VACUUM")
    db.close()
    async with served_consoles(tmp_path) as srv, httpx.AsyncClient(base_url=srv.url, headers=srv.admin) as client:
        await register(client, "v100", "Vacuum 100", "host-100")
        assert (await client.delete("/api/consoles/v1")).status_code == 200
        assert await found(client, "vacuum 1") == {f"v{i}" for i in (10, 11, 13, 14, 16, 17, 19, 100)}
        assert await found(client, "host-2") == {f"v{i}" for i in (2, 20, 22, 23, 25, 26, 28, 29)}
        db_path = srv.settings.db_path
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT COUNT(*) FROM consoles").fetchone()[0] == 40 - 14 + 1 - 1
    db.close()


async def test_upgrade_from_schema_4_indexes_the_consoles_already_there(tmp_path: Path) -> None:
    data = tmp_path / "data"
    db = database_at_version(data, 4)
    now = time.time()
    db.executemany(
        "INSERT INTO consoles (id, name, state, reported_state, hostname, first_seen, last_seen) "
        "VALUES (?, ?, 'idle', 'idle', ?, ?, ?)",
        [(f"old{i}", f"Old {i}", f"legacy-{i}", now - 100, now - i) for i in range(12)],
    )
    db.commit()
    db.close()
    async with served_consoles(data) as srv, httpx.AsyncClient(base_url=srv.url, headers=srv.admin) as client:
        assert await srv.store.schema_version() == SCHEMA_VERSION
        assert await found(client, "legacy-1") == {"old1", "old10", "old11"}
        await register(client, "new1", "New 1", "legacy-99")  # keys continue after the existing ones
        assert await found(client, "legacy-9") == {"old9", "new1"}


async def test_a_search_pages_in_the_order_the_store_sorts(tmp_path: Path, console_store: str) -> None:
    """A search matching most consoles is ordered and paged in memory: every sort and page agrees with the
    store's own order of the same consoles (listed without a search), equal names ordered by id."""
    async with (
        served_consoles(tmp_path, consoles__store=console_store, consoles__register_rate=0) as srv,
        httpx.AsyncClient(base_url=srv.url, headers=srv.admin) as client,
    ):
        names = ["b", "a", "Ä", "a", "c", "b", "é", "a"]
        hosts = {}
        for i in range(40):
            hosts[f"k{i % 13}-{i}"] = f"h{i}"
            await register(client, f"k{i % 13}-{i}", f"{names[i % len(names)]} rack", f"h{i}")
        for i in range(60):  # enough others that a search for "h1" matches few: sorted among its matches
            await register(client, f"other{i}", "unrelated", "elsewhere")
        for sort in ("name", "-name", "-last_seen", "last_seen"):
            r = await client.get("/api/consoles", params={"sort": sort, "limit": 1000})
            in_order = [c["id"] for c in r.json()["consoles"]]
            for q, expected in (("RACK", list(hosts)), ("h1", [cid for cid, h in hosts.items() if "h1" in h])):
                everyone = [cid for cid in in_order if cid in expected]
                for limit, offset in ((1000, 0), (7, 0), (7, 9), (5, 38)):
                    params = {"q": q, "sort": sort, "limit": limit, "offset": offset}
                    r = await client.get("/api/consoles", params=params)
                    assert r.json()["total"] == len(expected)
                    assert [c["id"] for c in r.json()["consoles"]] == everyone[offset : offset + limit], (q, sort)


def schema_of(path: Path) -> list[tuple[Any, ...]]:
    """Every table, index and trigger with its SQL, and every table's columns: what a migration leaves."""
    db = sqlite3.connect(path)
    try:
        objects = db.execute("SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name").fetchall()
        columns = [
            (table, *column)
            for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            for column in db.execute(f"PRAGMA table_info('{table}')")
        ]
        return [*objects, *columns]
    finally:
        db.close()


async def test_upgrade_from_schema_7_drops_the_trigram_table_and_ends_as_a_fresh_database(tmp_path: Path) -> None:
    db = database_at_version(tmp_path / "old", 7)
    now = time.time()
    db.executemany(
        "INSERT INTO consoles (id, name, state, reported_state, hostname, first_seen, last_seen) "
        "VALUES (?, ?, 'idle', 'idle', ?, ?, ?)",
        [(f"old{i}", f"Old {i}", f"legacy-{i}", now - 100, now - i) for i in range(12)],
    )
    assert db.execute("SELECT COUNT(*) FROM consoles_search").fetchone()[0] == 12  # the triggers kept it
    db.commit()
    db.close()
    async with served_consoles(tmp_path / "old") as srv, httpx.AsyncClient(base_url=srv.url, headers=srv.admin) as c:
        assert await srv.store.schema_version() == SCHEMA_VERSION
        assert await found(c, "legacy-1") == {"old1", "old10", "old11"}
        await register(c, "new1", "New 1", "legacy-99")
        assert await found(c, "legacy-9") == {"old9", "new1"}
        assert (await c.delete("/api/consoles/old9")).status_code == 200
        assert await found(c, "legacy-9") == {"new1"}
    async with served_consoles(tmp_path / "fresh"):
        pass
    upgraded, fresh = schema_of(tmp_path / "old" / "supervisor.db"), schema_of(tmp_path / "fresh" / "supervisor.db")
    assert upgraded == fresh
    names = {o[1] for o in fresh}
    assert not names & {"consoles_search", "search_key", "idx_consoles_search_key", "consoles_search_insert"}
