"""Heartbeats that change no state are told to the other nodes after their COMMIT, out of the durable transaction
(pg_events.AfterCommitNotifier): they still reach every node; registrations and state changes are told in the
transaction that commits them; the batches committed within a short linger share one send; payloads a lost server
could not take are kept, in order and bounded, until it takes them."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import wait_until
from fixtures.consoles.harness import served_consoles

from supervisor_tui.consoles.models import HeartbeatInput, RegistrationInput
from supervisor_tui.consoles.pg_events import CHANNEL, NOTIFY_SQL, AfterCommitNotifier, decode, payloads
from supervisor_tui.consoles.pg_store import PgConsoleStore
from supervisor_tui.core.events import ConsoleStateChanged


async def test_a_heartbeat_that_changes_no_state_reaches_the_other_node(tmp_path: Path, pg_cluster: Any) -> None:
    dsn = pg_cluster.new_database()
    async with (
        served_consoles(tmp_path / "a", consoles__store=dsn) as a,
        served_consoles(tmp_path / "b", consoles__store=dsn) as b,
        httpx.AsyncClient() as client,
    ):
        body = {"id": "c1", "nombre": "Consola uno", "estado": "ocupada", "sistema": {"hostname": "uno"}}
        r = await client.post(f"{a.url}/api/consolas/registrar", json=body)
        assert r.status_code == 201
        token = {"Authorization": f"Bearer {r.json()['token']}"}
        await wait_until(lambda: b.service.exists("c1"), timeout=10)
        # The same state: no transition, so the batch's NOTIFY goes after its COMMIT.
        beat = {"estado": "ocupada", "sistema": {"hostname": "dos"}}
        r = await client.post(f"{a.url}/api/consolas/c1/heartbeat", json=beat, headers=token)
        assert r.status_code == 200, r.text

        async def b_finds_the_new_host() -> bool:
            r = await client.get(f"{b.url}/api/consoles", params={"q": "dos"}, headers=b.admin)
            return [c["id"] for c in r.json()["consoles"]] == ["c1"]

        # B's search is answered from its memory: only A's notification can have told it the new host.
        await wait_until(b_finds_the_new_host, timeout=10)


@contextlib.asynccontextmanager
async def listening(dsn: str) -> Any:
    got: list[str] = []
    conn = await asyncpg.connect(dsn)
    await conn.add_listener(CHANNEL, lambda _c, _pid, _ch, payload: got.append(payload))
    try:
        yield got
    finally:
        await conn.close()


async def test_payloads_wait_for_a_lost_server_in_order_and_bounded(pg_cluster: Any) -> None:
    dsn = pg_cluster.new_database()
    database = dsn.rsplit("/", 1)[1]
    store = PgConsoleStore(dsn)
    await store.open()
    notifier = AfterCommitNotifier(lambda: store.pool.acquire(), max_pending=3)
    try:
        async with listening(dsn) as got:
            notifier.send(["first"])
            await wait_until(lambda: got == ["first"], timeout=10)
            # The store's sessions go and no new one is let in (the listener's stays).
            pg_cluster.psql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
            pg_cluster.psql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{database}' AND query NOT ILIKE '%LISTEN%'"
            )
            notifier.send(["1", "2"])
            await asyncio.sleep(0.5)  # tried, failed, kept
            notifier.send(["3", "4"])
            await asyncio.sleep(0.3)
            assert got == ["first"]
            pg_cluster.psql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
            await wait_until(lambda: got == ["first", "2", "3", "4"], timeout=15, failure=lambda: repr(got))
            assert notifier.dropped == 1
    finally:
        pg_cluster.psql(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")
        await notifier.close()
        await store.close()


async def test_the_payloads_of_batches_committed_within_the_linger_go_in_one_send(pg_cluster: Any) -> None:
    dsn = pg_cluster.new_database()
    store = PgConsoleStore(dsn)
    await store.open()
    sends = 0

    def connection() -> Any:
        nonlocal sends
        sends += 1
        return store.pool.acquire()

    notifier = AfterCommitNotifier(connection, linger=0.3)
    try:
        async with listening(dsn) as got:
            # Three batches committing a few milliseconds apart, as under load: without the linger each is sent
            # at once, in a transaction of its own (3 sends).
            for payload in ("1", "2", "3"):
                notifier.send([payload])
                await asyncio.sleep(0.02)
            await wait_until(lambda: got == ["1", "2", "3"], timeout=10, failure=lambda: repr(got))
            assert sends == 1
            notifier.send(["4"])  # after the last send: a send of its own, after its own linger
            await wait_until(lambda: got == ["1", "2", "3", "4"], timeout=10, failure=lambda: repr(got))
            assert sends == 2
    finally:
        await notifier.close()
        await store.close()


async def test_a_batch_of_changes_is_split_into_payloads_postgresql_takes_and_each_node_reads_back(
    pg_cluster: Any,
) -> None:
    # Names of two-byte characters: a payload's limit is in bytes (PostgreSQL refuses 8,000), not characters.
    changes: list[Any] = [
        ["reg", f"c{i}", "Consolé ñ" * 20, "busy", "h" * 64, 1.5, 2.25 + i, None, "hôte"] for i in range(60)
    ]
    changes += [["hb", f"c{i}", "busy", 3.0 + i, None, "hôte", 2] for i in range(60)]
    sent = payloads("node-a", changes)
    assert len(sent) > 1 and all(len(p.encode()) <= 7000 for p in sent)
    dsn = pg_cluster.new_database()
    async with listening(dsn) as got:
        conn = await asyncpg.connect(dsn)
        try:
            for payload in sent:
                await conn.execute(NOTIFY_SQL, payload)
        finally:
            await conn.close()
        await wait_until(lambda: len(got) == len(sent), timeout=10)
    received = [decode(p) for p in got]
    assert {node for node, _ in received} == {"node-a"}
    assert [change for _, part in received for change in part] == changes


@pytest.mark.parametrize("path", ["one statement", "with a registration"])
async def test_the_state_changes_a_batch_makes_are_told_in_payloads_postgresql_takes(
    tmp_path: Path, pg_cluster: Any, path: str
) -> None:
    """150 consoles with the longest ids change state at once: the batch statement tells the changes it made in
    payloads of at most 7,000 bytes, each once, with the batch's heartbeats; the same when a registration makes
    the batch a transaction of several statements."""
    dsn = pg_cluster.new_database()
    ids = [f"{i:03d}-" + "x" * 124 for i in range(150)]
    async with served_consoles(tmp_path, consoles__store=dsn, consoles__auth="none") as srv:
        for cid in [*ids, "other"]:
            await srv.service.register(RegistrationInput(cid, cid, "idle", None, None, None))
        sub = srv.bus.subscribe(["console.state"])
        async with listening(dsn) as got:
            futures: list[Any] = []
            if path == "with a registration":  # queued first, so the batch that takes it takes heartbeats too
                rename = RegistrationInput("other", "renamed", "idle", None, None, None)
                futures.append(asyncio.ensure_future(srv.service.register(rename)))
                await asyncio.sleep(0)  # one turn of the loop: it is queued, and the writer has not taken it
            futures += [srv.service.submit_heartbeat(cid, HeartbeatInput("busy", None, None, None, None, None))
                        for cid in ids]  # fmt: skip
            await asyncio.gather(*futures)

            def told(kind: str) -> list[Any]:
                return [c for p in got for c in decode(p)[1] if c[0] == kind]

            await wait_until(lambda: len(told("state")) >= len(ids) and len(told("hb")) >= len(ids), timeout=10)
        assert all(len(p.encode()) <= 7000 for p in got) and len(got) > 5
        assert sorted(c[1] for c in told("state")) == ids
        assert {(c[2], c[3], c[4]) for c in told("state")} == {("idle", "busy", "heartbeat")}
        assert sorted(c[1] for c in told("hb")) == ids
        events = sub.get_nowait()
        assert sorted(e.console_id for e in events if isinstance(e, ConsoleStateChanged)) == ids
        assert all(srv.service.state_of(cid) == "busy" for cid in ids)
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch("SELECT console_id FROM console_transitions WHERE reason = 'heartbeat'")
        finally:
            await conn.close()
        assert sorted(r[0] for r in rows) == ids
