"""Durability: SIGKILL the supervisor (or restart PostgreSQL) in the middle of a heartbeat load; every heartbeat
answered 2xx is on disk. Run against both console stores.

The server is the real `supervisor-tui --headless` (no plugins), killed with SIGKILL and started again.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from conftest import wait_until
from fixtures.consoles.harness import ADMIN_TOKEN, headless_process
from fixtures.ports import free_port

CONSOLES = 20
WORKERS = 48


async def stored_heartbeats(store: str, data: Path) -> tuple[set[str], dict[str, int], dict[str, int]]:
    """From one snapshot of the store: every stored heartbeat's job, heartbeat rows per console, and each
    console's own heartbeat count."""
    if store == "sqlite":
        db = sqlite3.connect(data / "supervisor.db", isolation_level=None)
        db.execute("BEGIN")  # one read transaction: every figure from the same snapshot
        stored = {row[0] for row in db.execute("SELECT current_job FROM heartbeats")}
        rows = dict(db.execute("SELECT console_id, COUNT(*) FROM heartbeats GROUP BY console_id").fetchall())
        counted = dict(db.execute("SELECT id, heartbeats FROM consoles").fetchall())
        db.execute("COMMIT")
        db.close()
        return stored, rows, counted
    conn = await asyncpg.connect(store)
    try:
        # A statement the killed supervisor had sent runs on in its server session and may still commit (it was
        # never acknowledged, so either outcome is right): the snapshot is taken once those sessions have ended.
        async def sessions_ended() -> bool:
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
            return bool(others == 0)

        await wait_until(sessions_ended, timeout=30, failure="the killed supervisor's sessions never ended")
        async with conn.transaction(isolation="repeatable_read"):
            stored = {r[0] for r in await conn.fetch("SELECT current_job FROM console_heartbeats")}
            found = await conn.fetch("SELECT console_id, COUNT(*) FROM console_heartbeats GROUP BY console_id")
            consoles = await conn.fetch("SELECT console_id, heartbeats FROM consolas")
    finally:
        await conn.close()
    return stored, {r[0]: r[1] for r in found}, {r[0]: r[1] for r in consoles}


async def test_every_acknowledged_heartbeat_survives_sigkill(tmp_path: Path, console_store: str) -> None:
    await _load_and_break(tmp_path, console_store, None)


async def test_every_acknowledged_heartbeat_survives_a_postgresql_restart(tmp_path: Path, pg_cluster: Any) -> None:
    await _load_and_break(tmp_path, pg_cluster.new_database(), pg_cluster)


async def _load_and_break(tmp_path: Path, store: str, cluster: Any) -> None:
    """Heartbeats from WORKERS clients at once, then a break mid-load: the supervisor SIGKILLed, or (with
    ``cluster``) PostgreSQL restarted with ``pg_ctl restart -m fast`` under a supervisor that keeps running."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    acked: set[str] = set()
    data = tmp_path / "data"
    with headless_process(data, port, store) as proc:
        limits = httpx.Limits(max_connections=WORKERS, max_keepalive_connections=WORKERS)
        async with httpx.AsyncClient(base_url=url, limits=limits, timeout=10) as client:
            tokens = []
            for i in range(CONSOLES):
                r = await client.post("/api/consolas/registrar", json={"id": f"k{i}", "nombre": f"K{i}"})
                assert r.status_code == 201
                tokens.append(r.json()["token"])
            killed = asyncio.Event()
            enough = asyncio.Event()

            async def worker(w: int) -> None:
                n = 0
                while not killed.is_set():
                    i = (w + n) % CONSOLES
                    job = f"w{w}-{n}"
                    n += 1
                    try:
                        r = await client.post(
                            f"/api/consolas/k{i}/heartbeat",
                            json={"estado": "ocupada", "videoEnProceso": job, "sistema": {"hostname": "h"}},
                            headers={"Authorization": f"Bearer {tokens[i]}"},
                        )
                    except httpx.HTTPError:
                        return  # the server is gone
                    if 200 <= r.status_code < 300:
                        acked.add(job)
                        if len(acked) >= 3000:
                            enough.set()

            tasks = [asyncio.create_task(worker(w)) for w in range(WORKERS)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(enough.wait(), 30)
            if cluster is None:
                proc.send_signal(signal.SIGKILL)  # mid-load: requests are in flight and batches are being written
                proc.wait(10)
            else:
                before = len(acked)
                await asyncio.to_thread(cluster.restart)  # mid-load: batches are in flight
                # The supervisor reconnects by itself: heartbeats are acknowledged again.
                await wait_until(lambda: len(acked) > before + 500, timeout=30)
            killed.set()
            await asyncio.gather(*tasks)
            if cluster is not None:
                # Heartbeats come back through the pool first; the change listener's own connection follows within
                # its reconnect backoff (up to 5 s), and only then is the store available again.
                async def available() -> bool:
                    r = await client.get("/api/v1/status", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                    return r.json()["console_store"]["available"] is True

                assert await wait_until(available, timeout=30)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
    assert len(acked) >= 500

    stored, rows, counted = await stored_heartbeats(store, data)
    missing = acked - stored
    assert not missing, f"{len(missing)} acknowledged heartbeats lost, e.g. {sorted(missing)[:5]}"
    # The console rows were committed in the same transactions as their heartbeats, console by console.
    assert counted == {cid: rows.get(cid, 0) for cid in counted}
    assert sum(counted.values()) == len(stored)

    # The restarted server serves what was committed and takes heartbeats again with the same tokens.
    with headless_process(data, port, store):
        async with httpx.AsyncClient(base_url=url) as client:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            r = await client.get("/api/consoles?limit=1000", headers=admin)
            assert r.json()["total"] == CONSOLES
            assert {c["id"]: c["heartbeats"] for c in r.json()["consoles"]} == counted
            assert sum(c["heartbeats"] for c in r.json()["consoles"]) == len(stored)
            r = await client.post(
                "/api/consolas/k0/heartbeat",
                json={"estado": "esperando"},
                headers={"Authorization": f"Bearer {tokens[0]}"},
            )
            assert r.status_code == 200
