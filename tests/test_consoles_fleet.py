"""Several supervisors, one PostgreSQL console store: registered through one node, heartbeats through another,
every node's reads agree; one silence is one inactivity for the fleet; changes reach every node's event bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import websockets
from conftest import wait_until
from fixtures.consoles.harness import ADMIN_TOKEN, ConsoleServer, headless_process, served_consoles
from fixtures.ports import free_port
from test_webhook_alerts import Receiver

from supervisor_tui.consoles.models import ENGLISH_TO_SPANISH, HeartbeatInput
from supervisor_tui.core.events import ConsoleHeartbeats, ConsoleRegistered, ConsoleRemoved, ConsoleStateChanged


@contextlib.asynccontextmanager
async def fleet(tmp_path: Path, dsn: str, n: int = 3, **values: Any) -> AsyncIterator[list[ConsoleServer]]:
    """``n`` console services (each with its own data dir, bus and HTTP port) sharing the store at ``dsn``."""
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(served_consoles(tmp_path / f"node{i}", consoles__store=dsn, **values))
            for i in range(n)
        ]
        yield nodes


async def test_register_on_a_beat_on_b_and_every_node_reads_the_same(tmp_path: Path, pg_cluster: Any) -> None:
    dsn = pg_cluster.new_database()
    async with fleet(tmp_path, dsn) as (a, b, c):
        subs = [node.bus.subscribe(["console"]) for node in (a, b, c)]
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"{a.url}/api/consolas/registrar",
                json={"id": "c1", "nombre": "Consola uno", "sistema": {"hostname": "uno"}},
            )
            assert r.status_code == 201
            token = {"Authorization": f"Bearer {r.json()['token']}"}
            # Node B learns of the console from A's commit: its heartbeats are taken with the console's token.
            await wait_until(lambda: b.service.exists("c1"), timeout=10)
            r = await client.post(f"{b.url}/api/consolas/c1/heartbeat", json={"estado": "ocupada"}, headers=token)
            assert r.status_code == 200, r.text
            # C hears of B's change; its own busy heartbeat then changes nothing (sent before, it would not either:
            # the table decides, docs/consoles.md, "Concurrent changes").
            await wait_until(lambda: c.service.state_of("c1") == "busy", timeout=10)
            r = await client.post(f"{c.url}/api/consolas/c1/heartbeat", json={"estado": "ocupada"}, headers=token)
            assert r.status_code == 200, r.text
            bad = {"Authorization": "Bearer not-its-token"}
            r = await client.post(f"{c.url}/api/consolas/c1/heartbeat", json={"estado": "ocupada"}, headers=bad)
            assert r.status_code == 403

            async def reads(node: ConsoleServer) -> list[Any]:
                got = []
                for path in (
                    "/api/consoles",
                    "/api/consoles/c1",
                    "/api/consoles/stats",
                    "/api/consoles/c1/transitions",
                ):
                    got.append((await client.get(node.url + path, headers=node.admin)).json())
                return got

            await wait_until(lambda: all(n.service.state_of("c1") == "busy" for n in (a, b, c)), timeout=10)
            first = await reads(a)
            assert first[1]["state"] == "busy" and first[1]["heartbeats"] == 2 and first[1]["hostname"] == "uno"
            assert first[0]["total"] == 1 and [x["id"] for x in first[0]["consoles"]] == ["c1"]
            assert await reads(b) == first and await reads(c) == first
            # Removed through C: gone everywhere.
            assert (await client.delete(f"{c.url}/api/consoles/c1", headers=c.admin)).status_code == 200
            await wait_until(lambda: not a.service.exists("c1") and not b.service.exists("c1"), timeout=10)
            r = await client.post(f"{a.url}/api/consolas/c1/heartbeat", json={"estado": "ocupada"}, headers=token)
            assert r.status_code == 404
        # Every node's bus saw every change, those made elsewhere marked remote.
        for node, sub in zip((a, b, c), subs, strict=True):
            events = sub.get_nowait()
            sub.close()
            registered = [e for e in events if isinstance(e, ConsoleRegistered)]
            assert [(e.console_id, e.remote) for e in registered] == [("c1", node is not a)]
            changes = [(e.from_state, e.to_state, e.reason) for e in events if isinstance(e, ConsoleStateChanged)]
            assert changes == [(None, "idle", "register"), ("idle", "busy", "heartbeat")]
            assert sum(e.count for e in events if isinstance(e, ConsoleHeartbeats)) == 2
            assert [e.remote for e in events if isinstance(e, ConsoleRemoved)] == [node is not c]


async def test_three_nodes_sweeping_flip_a_silent_console_once(tmp_path: Path, pg_cluster: Any) -> None:
    dsn = pg_cluster.new_database()
    async with fleet(tmp_path, dsn, consoles__inactive_after="1", sweep_interval=0.02) as nodes:
        subs = [node.bus.subscribe(["console.state"]) for node in nodes]
        async with httpx.AsyncClient() as client:
            for i in range(30):
                r = await client.post(f"{nodes[i % 3].url}/api/consolas/registrar", json={"id": f"s{i}", "nombre": "s"})
                assert r.status_code == 201
        await wait_until(
            lambda: all(node.service.counts_by_state()["inactive"] == 30 for node in nodes), timeout=20, interval=0.1
        )
        conn = await asyncpg.connect(dsn)
        try:
            flips = await conn.fetch(
                "SELECT console_id, count(*) FROM console_transitions WHERE reason = 'timeout' GROUP BY console_id"
            )
            assert len(flips) == 30 and all(r[1] == 1 for r in flips)
            assert await conn.fetchval("SELECT count(*) FROM consolas WHERE estado = 'inactiva'") == 30
        finally:
            await conn.close()
        # Each inactivity reached every node once: as its own on the node that flipped it, remote elsewhere.
        seen: dict[str, list[bool]] = {}
        for sub in subs:
            for e in sub.get_nowait():
                if isinstance(e, ConsoleStateChanged) and e.reason == "timeout":
                    seen.setdefault(e.console_id, []).append(e.remote)
            sub.close()
        assert len(seen) == 30
        assert all(sorted(v) == [False, True, True] for v in seen.values()), seen
        assert len({cid for cid, v in seen.items()}) == 30


@contextlib.asynccontextmanager
async def alerting_fleet(
    tmp_path: Path, dsn: str, n: int, consoles: str, topics: str
) -> AsyncIterator[tuple[Receiver, list[int], list[Any]]]:
    """``n`` real `supervisor-tui --headless` on the store at ``dsn`` with ``consoles`` (TOML lines of [consoles]),
    each with webhook-alerts to one real local receiver: (the receiver, their ports, a /ws/events stream of
    ``topics`` from each)."""
    receiver = Receiver(free_port())
    await receiver.start()
    config = tmp_path / "supervisor.toml"
    config.write_text(
        f"[consoles]\n{consoles}"
        "[inprocess.webhook-alerts]\n"
        'module = "supervisor_tui.inprocess_plugins.webhook_alerts:WebhookAlerts"\n'
        f'config = {{ urls = ["http://127.0.0.1:{receiver.port}/hook"] }}\n'
    )
    ports = [free_port() for _ in range(n)]
    try:
        with contextlib.ExitStack() as stack:
            for i, port in enumerate(ports):
                stack.enter_context(headless_process(tmp_path / f"n{i}", port, dsn, ("--config", str(config))))
            streams = [
                await websockets.connect(
                    f"ws://127.0.0.1:{port}/ws/events?topics={topics}",
                    additional_headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                )
                for port in ports
            ]
            try:
                yield receiver, ports, streams
            finally:
                for ws in streams:
                    await ws.close()
    finally:
        await receiver.stop()


async def test_real_supervisors_stream_every_nodes_changes_and_alert_once(tmp_path: Path, pg_cluster: Any) -> None:
    """Three `supervisor-tui --headless` on one store, each with webhook-alerts to one real local receiver: a
    console registered through node 0 falls silent; every node's /ws/events shows its registration and its
    inactivity, and the receiver gets one alert for the fleet, not one per node."""
    dsn = pg_cluster.new_database()
    consoles = 'inactive_after = "2s"\nauth = "none"\n'
    async with alerting_fleet(tmp_path, dsn, 3, consoles, "console") as (receiver, ports, streams):
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"http://127.0.0.1:{ports[0]}/api/consolas/registrar", json={"id": "q1", "nombre": "quiet"}
            )
            assert r.status_code == 201
        for node, ws in enumerate(streams):
            seen: list[dict[str, Any]] = []
            while not any(e.get("to_state") == "inactive" for e in seen):
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            registered = [e for e in seen if e["topic"] == "console.registered"]
            assert [(e["console_id"], e["remote"]) for e in registered] == [("q1", node != 0)]
            flips = [e for e in seen if e.get("reason") == "timeout"]
            assert [(e["console_id"], e["to_state"]) for e in flips] == [("q1", "inactive")]
        await wait_until(lambda: len(receiver.messages) >= 1, timeout=30)
        await asyncio.sleep(3)  # time for other nodes' (wrong) alerts to arrive too
        alerts = [m for m in receiver.messages if m.get("event") == "console.inactive"]
        assert len(alerts) == 1, receiver.messages
        assert len(receiver.messages) == 1


@contextlib.asynccontextmanager
async def writes_held(node: ConsoleServer) -> AsyncIterator[None]:
    """Every connection of ``node``'s store for write batches taken: its next batch is planned, then waits for a
    connection (a batch in flight, as behind a slow COMMIT) until the block ends."""
    store = node.console_store
    async with contextlib.AsyncExitStack() as held:
        for _ in range(store.batches_in_flight):
            await held.enter_async_context(store.write_connections.connection())  # type: ignore[attr-defined]
        yield


@pytest.mark.parametrize("newer", ["heartbeat", "registration"])
async def test_a_batch_in_flight_does_not_write_its_stale_copy_over_another_nodes_newer_change(
    tmp_path: Path, pg_cluster: Any, newer: str
) -> None:
    """Node A takes a heartbeat (busy, host a) and its batch waits for a connection; meanwhile node B takes a newer
    heartbeat or re-registration of the same console, commits it, and A hears of it. When A's older batch commits
    afterwards, the newer change must stay: in the table and in both nodes' memory (state, host, last seen), and
    both heartbeats are counted."""
    dsn = pg_cluster.new_database()
    async with fleet(tmp_path, dsn, n=2) as (a, b), httpx.AsyncClient() as client:
        r = await client.post(
            f"{a.url}/api/consolas/registrar", json={"id": "r1", "nombre": "uno", "sistema": {"hostname": "h0"}}
        )
        assert r.status_code == 201
        token = {"Authorization": f"Bearer {r.json()['token']}"}
        await wait_until(lambda: b.service.exists("r1"), timeout=10)
        async with writes_held(a):
            planned = a.service.writes_in_flight
            old = asyncio.ensure_future(
                client.post(
                    f"{a.url}/api/consolas/r1/heartbeat",
                    json={"estado": "ocupada", "sistema": {"hostname": "h-a"}},
                    headers=token,
                )
            )
            await wait_until(lambda: a.service.writes_in_flight > planned, timeout=10)
            if newer == "heartbeat":
                body = {"estado": "error", "sistema": {"hostname": "h-b"}, "ultimoError": "disk full"}
                r = await client.post(f"{b.url}/api/consolas/r1/heartbeat", json=body, headers=token)
                assert r.status_code == 200, r.text
                expected = ("error", "h-b", 2)
            else:
                body = {"id": "r1", "nombre": "dos", "estado": "esperando", "sistema": {"hostname": "h-b"}}
                r = await client.post(f"{b.url}/api/consolas/registrar", json=body, headers=token)
                assert r.status_code == 200, r.text
                expected = ("idle", "h-b", 1)
            newest = b.service.view_of("r1")
            await wait_until(lambda: a.service.view_of("r1") == newest, timeout=10)
        r = await old
        assert r.status_code == 200, r.text
        conn = await asyncpg.connect(dsn)
        try:
            row = await conn.fetchrow(
                "SELECT estado, reported_state, hostname, heartbeats, extract(epoch FROM last_seen)::float8 AS seen "
                "FROM consolas WHERE console_id = 'r1'"
            )
        finally:
            await conn.close()
        state, host, beats = expected
        assert (row["reported_state"], row["hostname"], row["heartbeats"]) == (state, host, beats)
        assert abs(row["seen"] - newest[1]) < 1e-3
        for node in (a, b):
            # Every node's memory ends as the table (A's own late commit included, B once A's change reached it).
            await wait_until(lambda node=node: node.service.view_of("r1") == (state, newest[1], host), timeout=10)
            record = (await client.get(f"{node.url}/api/consoles/r1", headers=node.admin)).json()
            assert (record["state"], record["hostname"], record["heartbeats"]) == (state, host, beats)
            if newer == "registration":
                assert record["name"] == "dos"


async def test_one_state_change_through_two_nodes_at_once_is_one_transition_for_the_fleet(
    tmp_path: Path, pg_cluster: Any
) -> None:
    """Round after round, one console's state-changing heartbeat (or re-registration) goes through two of three
    nodes at the same instant, each node planning it from a memory that has not heard of the other's yet (queued
    on both in one turn of the loop, or posted to both at once). The change is one transition in the table, and
    one state change on every node's bus, a node's own on exactly one node (the webhook alerts go out once); every
    node's memory and reads end as the table."""
    dsn = pg_cluster.new_database()
    async with fleet(tmp_path, dsn, consoles__auth="none") as nodes, httpx.AsyncClient() as client:
        subs = [node.bus.subscribe(["console.state"]) for node in nodes]
        r = await client.post(f"{nodes[0].url}/api/consolas/registrar", json={"id": "r1", "nombre": "race"})
        assert r.status_code == 201
        await wait_until(lambda: all(node.service.exists("r1") for node in nodes), timeout=10)
        expected: list[tuple[str | None, str, str]] = [(None, "idle", "register")]
        state = "idle"
        rounds = [(new, "heartbeat") for new in ["busy", "error", "active", "idle"] * 6]
        rounds += [(new, "register") for new in ["busy", "error", "active", "idle"]]
        for i, (new, reason) in enumerate(rounds):
            pair = (nodes[i % 3], nodes[(i + 1) % 3])
            if reason == "register":
                body = {"id": "r1", "nombre": f"race {i}", "estado": ENGLISH_TO_SPANISH[new]}
                answers = await asyncio.gather(
                    *(client.post(f"{n.url}/api/consolas/registrar", json=body) for n in pair)
                )
                assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            elif i % 2 == 0:  # both queued before either node's writer runs
                futures = [n.service.submit_heartbeat("r1", HeartbeatInput(new, None, None, None, None, None))
                           for n in pair]  # fmt: skip
                acks = await asyncio.gather(*futures)
                assert [ack.state for ack in acks] == [new, new]
            else:
                beat = {"estado": ENGLISH_TO_SPANISH[new]}
                answers = await asyncio.gather(
                    *(client.post(f"{n.url}/api/consolas/r1/heartbeat", json=beat) for n in pair)
                )
                assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
            expected.append((state, new, reason))
            state = new
            await wait_until(lambda state=state: all(n.service.state_of("r1") == state for n in nodes), timeout=10)
        beats = sum(1 for _, reason in rounds if reason == "heartbeat") * 2
        conn = await asyncpg.connect(dsn)
        try:
            recorded = await conn.fetch(
                "SELECT from_state, to_state, reason FROM console_transitions WHERE console_id = 'r1' ORDER BY id"
            )
            row = await conn.fetchrow(
                "SELECT estado, hostname, heartbeats, extract(epoch FROM last_seen)::float8 AS seen "
                "FROM consolas WHERE console_id = 'r1'"
            )
        finally:
            await conn.close()
        assert [tuple(t) for t in recorded] == expected
        assert row["estado"] == ENGLISH_TO_SPANISH[state] and row["heartbeats"] == beats
        for node in nodes:

            def as_table(node: ConsoleServer = node) -> bool:  # last seen: the table's, to its microsecond
                view = node.service.view_of("r1")
                return view is not None and (view[0], view[2]) == (state, None) and abs(view[1] - row["seen"]) < 2e-6

            await wait_until(as_table, timeout=10, failure=lambda node=node: f"{node.service.view_of('r1')} {row}")
            record = (await client.get(f"{node.url}/api/consoles/r1", headers=node.admin)).json()
            assert (record["state"], record["heartbeats"]) == (state, beats)
            got = (await client.get(f"{node.url}/api/consoles/r1/transitions", headers=node.admin)).json()
            assert [(t["from"], t["to"], t["reason"]) for t in got["transitions"]] == expected[::-1]
        # Every node's bus: each change once; published as its own by one node, the one whose batch recorded it.
        await asyncio.sleep(0.2)  # time for a (wrong) second copy of the last change to arrive
        own: list[tuple[str | None, str, str]] = []
        for sub in subs:
            events = [e for e in sub.get_nowait() if isinstance(e, ConsoleStateChanged)]
            sub.close()
            assert [(e.from_state, e.to_state, e.reason) for e in events] == expected
            own += [(e.from_state, e.to_state, e.reason) for e in events if not e.remote]
        assert sorted(own, key=repr) == sorted(expected, key=repr)


async def test_real_supervisors_alert_once_for_a_change_sent_through_both_at_once(
    tmp_path: Path, pg_cluster: Any
) -> None:
    """Two `supervisor-tui --headless` on one store, each with webhook-alerts to one real local receiver: a
    console's error (then its recovery) is posted through both nodes at the same instant, round after round.
    The receiver gets one alert per error for the fleet, and each node's /ws/events one state change per change."""
    dsn = pg_cluster.new_database()
    async with alerting_fleet(tmp_path, dsn, 2, 'auth = "none"\n', "console.state") as (receiver, ports, streams):
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        async with httpx.AsyncClient() as client:
            r = await client.post(f"{urls[0]}/api/consolas/registrar", json={"id": "w1", "nombre": "w"})
            assert r.status_code == 201

            async def both_know_it() -> bool:  # a heartbeat of the state it has: no change
                answers = [await client.post(f"{u}/api/consolas/w1/heartbeat", json={"estado": "esperando"})
                           for u in urls]  # fmt: skip
                return all(a.status_code == 200 for a in answers)

            await wait_until(both_know_it, timeout=10)
            expected: list[tuple[str, str]] = []
            state = "idle"
            for new in ["error", "active"] * 4:
                beat = {"estado": ENGLISH_TO_SPANISH[new]}
                answers = await asyncio.gather(
                    *(client.post(f"{u}/api/consolas/w1/heartbeat", json=beat) for u in urls)
                )
                assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
                expected.append((state, new))
                state = new
        for ws in streams:
            seen: list[dict[str, Any]] = []
            while len(seen) < len(expected) + 1:  # the registration's, then the heartbeats'
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 30)))
            with contextlib.suppress(asyncio.TimeoutError):  # a (wrong) second copy of a change
                seen.append(json.loads(await asyncio.wait_for(ws.recv(), 1.0)))
            assert [(e["from_state"], e["to_state"]) for e in seen[1:]] == expected

        # One alert per error and one recovery per recovery, whichever node recorded each (the node that
        # records a recovery sends it, even when the other node sent the alert).
        def sent(event: str) -> list[dict[str, Any]]:
            return [m for m in receiver.messages if m["event"] == event]

        await wait_until(lambda: len(sent("console.error")) >= 4 and len(sent("console.recovered")) >= 4, timeout=30)
        await asyncio.sleep(1)  # time for other (wrong) alerts to arrive too
        assert len(sent("console.error")) == 4, receiver.messages
        assert len(sent("console.recovered")) == 4, receiver.messages
