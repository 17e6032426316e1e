"""Inactivity (deadline-dated transitions, recovery, restart), retention, and what survives a restart."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from fixtures.consoles.harness import count_rows, served_consoles

from supervisor_tui.core.events import ConsoleStateChanged, Subscription
from supervisor_tui.core.logs import format_ts

HB = {"estado": "ocupada", "sistema": {"hostname": "h"}, "ultimoError": None, "videoEnProceso": "v"}


async def wait_state_event(
    sub: Subscription, console_id: str, to_state: str, within: float = 10.0
) -> ConsoleStateChanged:
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no {to_state} transition for {console_id}"
        for event in await sub.get_batch(left):
            if isinstance(event, ConsoleStateChanged) and event.console_id == console_id and event.to_state == to_state:
                return event


async def test_silent_console_goes_inactive_dated_at_its_deadline_and_comes_back(
    tmp_path: Path, console_store: str
) -> None:
    async with served_consoles(
        tmp_path, consoles__store=console_store, sweep_interval=0.2, consoles__inactive_after="0.6"
    ) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            with srv.bus.subscribe(["console.state"]) as sub:
                r = await client.post("/api/consolas/registrar", json={"id": "a", "nombre": "A"})
                token = r.json()["token"]
                auth = {"Authorization": f"Bearer {token}"}
                r = await client.post("/api/consolas/a/heartbeat", json=HB, headers=auth)
                assert r.status_code == 200
                deadline = srv.service.deadline_of("a")  # last heartbeat + inactive_after
                assert deadline is not None
                event = await wait_state_event(sub, "a", "inactive")
                assert event.reason == "timeout" and event.from_state == "busy"
                # Dated at the deadline (last heartbeat + inactive_after), not when the sweep noticed.
                assert abs(event.at - deadline) < 1e-6
                assert event.ts >= event.at
                c = (await client.get("/api/consoles/a", headers=srv.admin)).json()
                assert c["state"] == "inactive" and c["reported_state"] == "busy" and c["inactive_at"] is None
                trans = (await client.get("/api/consoles/a/transitions", headers=srv.admin)).json()["transitions"]
                assert trans[0] == {"from": "busy", "to": "inactive", "at": format_ts(deadline), "reason": "timeout"}
                assert (await client.get("/api/consoles/stats", headers=srv.admin)).json()["states"][4]["count"] == 1

                # The next heartbeat puts it back in its reported state.
                r = await client.post("/api/consolas/a/heartbeat", json={**HB, "estado": "esperando"}, headers=auth)
                assert r.status_code == 200
                event = await wait_state_event(sub, "a", "idle")
                assert (event.from_state, event.reason) == ("inactive", "heartbeat")
                assert srv.service.state_of("a") == "idle"
                # And it can go inactive again.
                event = await wait_state_event(sub, "a", "inactive")
                assert event.from_state == "idle"
    lines = [r.message for r in srv.logs.tail("supervisor", 50)]
    assert any("console a inactive" in line for line in lines)
    assert any("console a is back" in line for line in lines)


async def test_deadlines_survive_a_restart(tmp_path: Path, console_store: str) -> None:
    async with served_consoles(tmp_path, consoles__store=console_store, consoles__inactive_after="600") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            r = await client.post("/api/consoles/register", json={"id": "b", "name": "B", "state": "busy"})
            token = r.json()["token"]
            registered_at = srv.service.deadline_of("b")
            assert registered_at is not None
            seen = registered_at - 600
    # Restarted with a shorter limit: the console's deadline (seen + 1 s) is in the past or near, and the
    # transition is dated there, not at the restart.
    async with served_consoles(
        tmp_path, consoles__store=console_store, sweep_interval=0.05, consoles__inactive_after="1"
    ) as srv:
        with srv.bus.subscribe(["console.state"]) as sub:
            event = await wait_state_event(sub, "b", "inactive")
        assert abs(event.at - (seen + 1)) < 1e-6
        async with httpx.AsyncClient(base_url=srv.url) as client:
            # The token still works after the restart.
            r = await client.post(
                "/api/consoles/b/heartbeat", json={"state": "idle"}, headers={"Authorization": f"Bearer {token}"}
            )
            assert r.status_code == 200
            assert srv.service.state_of("b") == "idle"


async def test_retention_by_age_and_by_count_per_console(tmp_path: Path, console_store: str) -> None:
    async with served_consoles(tmp_path, consoles__store=console_store, consoles__heartbeats_per_console="3") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            tokens = {}
            for cid in ("p", "q"):
                r = await client.post("/api/consoles/register", json={"id": cid, "name": cid})
                tokens[cid] = {"Authorization": f"Bearer {r.json()['token']}"}
            for i in range(5):
                r = await client.post(
                    "/api/consoles/p/heartbeat", json={"state": "busy", "current_job": f"job{i}"}, headers=tokens["p"]
                )
                assert r.status_code == 200
            r = await client.post("/api/consoles/q/heartbeat", json={"state": "busy"}, headers=tokens["q"])
            done = await srv.service.prune()
            assert done == {"heartbeats_by_age": 0, "heartbeats_by_count": 2, "transitions": 0}
            hb = (await client.get("/api/consoles/p/heartbeats", headers=srv.admin)).json()["heartbeats"]
            assert [h["current_job"] for h in hb] == ["job4", "job3", "job2"]  # the newest are kept

            # Eight days later: every heartbeat is past the 7-day retention; transitions (93 days) stay.
            done = await srv.service.prune(now=time.time() + 8 * 86400, chunk=2)
            assert done["heartbeats_by_age"] == 4 and done["transitions"] == 0
            for cid in ("p", "q"):
                r = await client.get(f"/api/consoles/{cid}/heartbeats", headers=srv.admin)
                assert r.json()["heartbeats"] == []
            # The console itself and its current state are not history: they stay.
            assert (await client.get("/api/consoles/p", headers=srv.admin)).json()["heartbeats"] == 5
            done = await srv.service.prune(now=time.time() + 94 * 86400)
            assert done["transitions"] == 4
            r = await client.get("/api/consoles/p/transitions", headers=srv.admin)
            assert r.json()["transitions"] == []
            # Ingest keeps working after pruning.
            r = await client.post("/api/consoles/p/heartbeat", json={"state": "idle"}, headers=tokens["p"])
            assert r.status_code == 200


async def test_retention_runs_in_the_background(tmp_path: Path, console_store: str) -> None:
    async with served_consoles(
        tmp_path,
        consoles__store=console_store,
        retention_interval=0.1,
        consoles__heartbeat_retention="0.2",
        consoles__transition_retention="0.2",
    ) as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            r = await client.post("/api/consoles/register", json={"id": "r", "name": "r"})
            auth = {"Authorization": f"Bearer {r.json()['token']}"}
            await client.post("/api/consoles/r/heartbeat", json={"state": "busy"}, headers=auth)
            deadline = time.monotonic() + 10
            while True:
                r = await client.get("/api/consoles/r/heartbeats", headers=srv.admin)
                t = await client.get("/api/consoles/r/transitions", headers=srv.admin)
                if not r.json()["heartbeats"] and not t.json()["transitions"]:
                    break
                assert time.monotonic() < deadline, "background retention did not prune"
                await asyncio.sleep(0.05)


async def test_stop_drains_everything_queued(tmp_path: Path, console_store: str) -> None:
    from supervisor_tui.consoles.models import decode_heartbeat, decode_registration

    async with served_consoles(tmp_path, consoles__store=console_store) as srv:
        reg = await srv.service.register(decode_registration(b'{"id": "d", "name": "d"}', False))
        assert reg.created
        pending = [
            asyncio.ensure_future(srv.service.heartbeat("d", decode_heartbeat(b'{"state": "busy"}', False)))
            for _ in range(50)
        ]
        await asyncio.sleep(0)
        await srv.service.stop()  # before the harness stops it: everything queued must be written first
        acks = await asyncio.gather(*pending)
        assert len(acks) == 50
        assert await count_rows(srv, "heartbeats", "d") == 50
