"""The console API end to end: seed 004's Spanish dialect and the English one, every error, token rules, reads."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from fixtures.consoles.harness import ConsoleServer, count_rows, fail_writes, served_consoles

from supervisor_tui.consoles.models import decode_heartbeat
from supervisor_tui.core.events import ConsoleHeartbeats, ConsoleRegistered, ConsoleRemoved, ConsoleStateChanged

CID = "550e8400-e29b-41d4-a716-446655440000"
SISTEMA = {
    "hostname": "mi-servidor",
    "platform": "win32",
    "arch": "x64",
    "cpus": 8,
    "totalMemory": 16,
    "freeMemory": 8,
    "uptime": 1440,
    "nodeVersion": "v18.x.x",
}
SEED_REGISTER = {
    "id": CID,
    "nombre": "Consola mi-servidor",
    "estado": "esperando",
    "sistema": SISTEMA,
    "ultimaActividad": "2025-12-03T10:00:00.000Z",
}
SEED_HEARTBEAT = {
    "estado": "ocupada",
    "sistema": SISTEMA,
    "ultimaActividad": "2025-12-03T10:30:00.000Z",
    "ultimoError": None,
    "videoEnProceso": "Video Historia 1 (2/5)",
}


@pytest.fixture(params=["fast", "asgi"])
async def srv(tmp_path: Path, request: pytest.FixtureRequest, console_store: str) -> AsyncIterator[ConsoleServer]:
    """Every test here runs on each console store (SQLite, PostgreSQL), each with heartbeats answered without
    ASGI (as the runtime serves them) and through it."""
    async with served_consoles(tmp_path, path=request.param, consoles__store=console_store) as s:
        yield s


@pytest.fixture
async def client(srv: ConsoleServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=srv.url) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def register_es(client: httpx.AsyncClient, body: dict[str, Any] | None = None, **headers: str) -> str:
    r = await client.post("/api/consolas/registrar", json=body or SEED_REGISTER, headers=headers)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


async def console(client: httpx.AsyncClient, srv: ConsoleServer, cid: str = CID) -> dict[str, Any]:
    r = await client.get(f"/api/consoles/{cid}", headers=srv.admin)
    assert r.status_code == 200, r.text
    return dict(r.json())


# -- both dialects -----------------------------------------------------------------------------------------------
async def test_seed_004_register_and_heartbeat_exactly_as_written(
    client: httpx.AsyncClient, srv: ConsoleServer
) -> None:
    r = await client.post("/api/consolas/registrar", json=SEED_REGISTER)
    assert r.status_code == 201
    body = r.json()
    assert body["created"] is True and body["token"]
    assert body["console"]["state"] == "idle"  # English answers
    token = body["token"]

    r = await client.post(f"/api/consolas/{CID}/heartbeat", json=SEED_HEARTBEAT, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True and r.json()["state"] == "busy"

    c = await console(client, srv)
    assert c["name"] == "Consola mi-servidor"
    assert c["state"] == "busy"
    assert c["system"] == SISTEMA
    assert c["hostname"] == "mi-servidor"
    assert c["current_job"] == "Video Historia 1 (2/5)"
    assert c["last_activity"] == "2025-12-03T10:30:00.000Z"
    assert c["last_error"] is None
    assert c["heartbeats"] == 1

    for estado, english in (("activa", "active"), ("esperando", "idle"), ("error", "error"), ("ocupada", "busy")):
        body = {**SEED_HEARTBEAT, "estado": estado, "ultimoError": {"mensaje": "x"} if estado == "error" else None}
        r = await client.post(f"/api/consolas/{CID}/heartbeat", json=body, headers=bearer(token))
        assert r.status_code == 200 and r.json()["state"] == english
    r = await client.get(f"/api/consoles/{CID}/transitions", headers=srv.admin)
    seq = [(t["from"], t["to"], t["reason"]) for t in reversed(r.json()["transitions"])]
    assert seq == [
        (None, "idle", "register"),
        ("idle", "busy", "heartbeat"),
        ("busy", "active", "heartbeat"),
        ("active", "idle", "heartbeat"),
        ("idle", "error", "heartbeat"),
        ("error", "busy", "heartbeat"),
    ]


async def test_english_dialect_writes_the_same_records(client: httpx.AsyncClient, srv: ConsoleServer) -> None:
    r = await client.post(
        "/api/consoles/register",
        json={"id": "worker-1", "name": "Worker 1", "state": "idle", "system": {"hostname": "w1"}},
    )
    assert r.status_code == 201
    token = r.json()["token"]
    hb = {
        "state": "busy",
        "system": {"hostname": "w1", "cpus": 2},
        "last_activity": "2025-12-03T10:30:00Z",
        "last_error": None,
        "current_job": "render 3",
    }
    r = await client.post("/api/consoles/worker-1/heartbeat", json=hb, headers=bearer(token))
    assert r.status_code == 200 and r.json()["state"] == "busy"
    # The same console through seed 004's endpoint: one record, one history.
    r = await client.post("/api/consolas/worker-1/heartbeat", json=SEED_HEARTBEAT, headers=bearer(token))
    assert r.status_code == 200
    c = await console(client, srv, "worker-1")
    assert c["heartbeats"] == 2 and c["current_job"] == "Video Historia 1 (2/5)" and c["hostname"] == "mi-servidor"
    r = await client.get("/api/consoles/worker-1/heartbeats?limit=10", headers=srv.admin)
    jobs = [h["current_job"] for h in r.json()["heartbeats"]]
    assert jobs == ["Video Historia 1 (2/5)", "render 3"]


async def test_gzip_bodies_are_accepted(client: httpx.AsyncClient, srv: ConsoleServer) -> None:
    token = await register_es(client)
    r = await client.post(
        f"/api/consolas/{CID}/heartbeat",
        content=gzip.compress(json.dumps(SEED_HEARTBEAT).encode()),
        headers={**bearer(token), "Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    assert (await console(client, srv))["state"] == "busy"


# -- bad input changes nothing and says why ------------------------------------------------------------------------
async def test_every_bad_heartbeat_is_refused_with_a_reason_and_changes_nothing(
    client: httpx.AsyncClient, srv: ConsoleServer
) -> None:
    token = await register_es(client)
    url = f"/api/consolas/{CID}/heartbeat"
    auth = bearer(token)

    async def refused(status: int, code: str, **kw: Any) -> dict[str, Any]:
        r = await client.post(url, headers={**auth, "Content-Type": "application/json", **kw.pop("headers", {})}, **kw)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert err["code"] == code and err["message"]
        return dict(err)

    err = await refused(400, "invalid_json", content=b'{"estado": "ocupada",')
    assert "JSON" in err["message"]
    err = await refused(422, "invalid_field", json={**SEED_HEARTBEAT, "estado": "dormida"})
    assert err["field"] == "estado"
    for word in ("activa", "ocupada", "esperando", "error"):
        assert word in err["message"]
    err = await refused(422, "invalid_field", json={**SEED_HEARTBEAT, "videoEnProceso": 42})
    assert err["field"] == "videoEnProceso" and "string" in err["message"]
    err = await refused(422, "invalid_field", json={**SEED_HEARTBEAT, "sistema": "linux"})
    assert err["field"] == "sistema"
    err = await refused(422, "invalid_field", json={**SEED_HEARTBEAT, "ultimaActividad": "yesterday"})
    assert err["field"] == "ultimaActividad"
    err = await refused(422, "invalid_field", json={"sistema": SISTEMA})
    assert err["field"] == "estado" and "missing" in err["message"]
    err = await refused(422, "invalid_field", json=[1, 2])
    big = {**SEED_HEARTBEAT, "sistema": {"blob": "x" * 70_000}}
    err = await refused(413, "too_large", content=json.dumps(big).encode())
    assert "64 KiB" in err["message"]
    # Small on the wire, over the limit once decompressed.
    err = await refused(
        413,
        "too_large",
        content=gzip.compress(json.dumps(big).encode()),
        headers={"Content-Encoding": "gzip"},
    )
    assert "decompressed" in err["message"]
    await refused(400, "invalid_json", content=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    await refused(415, "unsupported_encoding", content=b"{}", headers={"Content-Encoding": "br"})

    # English: the same rules, English names and words.
    r = await client.post(f"/api/consoles/{CID}/heartbeat", json={"state": "ocupada"}, headers=auth)
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["field"] == "state"
    for word in ("active", "busy", "idle", "error"):
        assert word in err["message"]

    c = await console(client, srv)
    assert c["heartbeats"] == 0 and c["state"] == "idle"
    m = srv.service.metrics()
    assert m.heartbeats_accepted == 0
    assert m.heartbeats_rejected["invalid_json"] == 2
    assert m.heartbeats_rejected["invalid_field"] == 7
    assert m.heartbeats_rejected["too_large"] == 2
    assert m.heartbeats_rejected["unsupported_encoding"] == 1


async def test_heartbeat_from_an_unknown_console_says_register_first(client: httpx.AsyncClient) -> None:
    r = await client.post("/api/consolas/nobody/heartbeat", json=SEED_HEARTBEAT)
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "console_not_found"
    assert "/api/consolas/registrar" in err["message"]
    r = await client.post("/api/consoles/nobody/heartbeat", json={"state": "idle"})
    assert r.status_code == 404 and "/api/consoles/register" in r.json()["error"]["message"]


async def test_bad_registrations_are_refused(client: httpx.AsyncClient, srv: ConsoleServer) -> None:
    for body, field in (
        ({**SEED_REGISTER, "estado": "dormida"}, "estado"),
        ({**SEED_REGISTER, "id": "../etc"}, "id"),
        ({**SEED_REGISTER, "nombre": ""}, "nombre"),
        ({**SEED_REGISTER, "nombre": 7}, "nombre"),
        ({"nombre": "x"}, "id"),
        ({**SEED_REGISTER, "id": "stats"}, "id"),
    ):
        r = await client.post("/api/consolas/registrar", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["field"] == field
    r = await client.get("/api/consoles", headers=srv.admin)
    assert r.json()["total"] == 0


# What a terminal would obey (OSC 0 sets the title, OSC 52 writes the clipboard) or reorder (bidi overrides).
HOSTILE = "w1\x1b]0;TITLE\x07\x1b]52;c;cHduZWQ=\x07"
BIDI = "job\u202etxt.exe"


async def test_control_characters_in_names_hosts_and_ids_are_refused_and_nothing_stored(
    client: httpx.AsyncClient, srv: ConsoleServer
) -> None:
    for url, body, field in (
        ("/api/consolas/registrar", {**SEED_REGISTER, "nombre": HOSTILE}, "nombre"),
        ("/api/consolas/registrar", {**SEED_REGISTER, "nombre": BIDI}, "nombre"),
        ("/api/consolas/registrar", {**SEED_REGISTER, "id": CID + "\n"}, "id"),
        ("/api/consolas/registrar", {**SEED_REGISTER, "sistema": {"hostname": "h\x9b31m"}}, "sistema.hostname"),
        ("/api/consoles/register", {"id": "worker-1", "name": "tab\there"}, "name"),
        ("/api/consoles/register", {"id": "worker-1", "name": "w", "system": {"hostname": HOSTILE}}, "system.hostname"),
    ):
        r = await client.post(url, json=body)
        assert r.status_code == 422, (body, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_field" and err["field"] == field, err
        assert "control" in err["message"] or field == "id", err
        assert "\x1b" not in r.text and "\u202e" not in r.text  # the answer quotes it escaped
    r = await client.get("/api/consoles", headers=srv.admin)
    assert r.json()["total"] == 0


async def test_control_characters_in_a_heartbeats_job_or_host_are_refused_and_nothing_stored(
    client: httpx.AsyncClient, srv: ConsoleServer
) -> None:
    token = await register_es(client)
    for url, body, field in (
        (f"/api/consolas/{CID}/heartbeat", {**SEED_HEARTBEAT, "videoEnProceso": HOSTILE}, "videoEnProceso"),
        (f"/api/consolas/{CID}/heartbeat", {**SEED_HEARTBEAT, "sistema": {"hostname": BIDI}}, "sistema.hostname"),
        (f"/api/consoles/{CID}/heartbeat", {"state": "busy", "current_job": BIDI}, "current_job"),
        (f"/api/consoles/{CID}/heartbeat", {"state": "busy", "system": {"hostname": HOSTILE}}, "system.hostname"),
    ):
        r = await client.post(url, json=body, headers=bearer(token))
        assert r.status_code == 422, (body, r.text)
        err = r.json()["error"]
        assert err["code"] == "invalid_field" and err["field"] == field and "control" in err["message"], err
    c = await console(client, srv)
    assert c["heartbeats"] == 0 and c["current_job"] is None and c["hostname"] == "mi-servidor"
    assert srv.service.metrics().heartbeats_rejected["invalid_field"] == 4


async def test_unknown_routes_and_methods(client: httpx.AsyncClient, srv: ConsoleServer) -> None:
    r = await client.get("/api/consolas/registrar")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    r = await client.get("/api/consoles/x/y/z", headers=srv.admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


# -- who may report --------------------------------------------------------------------------------------------------
async def test_heartbeats_need_the_consoles_own_token(client: httpx.AsyncClient, srv: ConsoleServer) -> None:
    token = await register_es(client)
    other = await register_es(client, {**SEED_REGISTER, "id": "other"})
    url = f"/api/consolas/{CID}/heartbeat"
    r = await client.post(url, json=SEED_HEARTBEAT)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    r = await client.post(url, json=SEED_HEARTBEAT, headers=bearer(other))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = await client.post(url, json=SEED_HEARTBEAT, headers=bearer(token))
    assert r.status_code == 200
    assert (await console(client, srv))["heartbeats"] == 1


async def test_reregistering_needs_the_token_so_no_console_takes_over_another(
    client: httpx.AsyncClient, srv: ConsoleServer
) -> None:
    token = await register_es(client)
    impostor = {**SEED_REGISTER, "nombre": "Impostor"}
    r = await client.post("/api/consolas/registrar", json=impostor)
    assert r.status_code == 401
    r = await client.post("/api/consolas/registrar", json=impostor, headers=bearer("guess"))
    assert r.status_code == 403
    assert (await console(client, srv))["name"] == "Consola mi-servidor"
    r = await client.post("/api/consolas/registrar", json={**SEED_REGISTER, "estado": "ocupada"}, headers=bearer(token))
    assert r.status_code == 200 and r.json()["created"] is False and r.json()["token"] == token
    assert (await console(client, srv))["state"] == "busy"


async def test_enrollment_token_is_required_for_new_consoles(tmp_path: Path, console_store: str) -> None:
    async with served_consoles(tmp_path, consoles__store=console_store, consoles__enrollment_token="let-me-in") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            r = await client.post("/api/consolas/registrar", json=SEED_REGISTER)
            assert r.status_code == 401 and "enrollment" in r.json()["error"]["message"]
            r = await client.post("/api/consolas/registrar", json=SEED_REGISTER, headers={"X-Enrollment-Token": "no"})
            assert r.status_code == 403
            r = await client.post(
                "/api/consolas/registrar", json=SEED_REGISTER, headers={"X-Enrollment-Token": "let-me-in"}
            )
            assert r.status_code == 201
            token = r.json()["token"]
            # Bearer works too for a new console; re-registering needs only the console's own token.
            r = await client.post("/api/consoles/register", json={"id": "b", "name": "b"}, headers=bearer("let-me-in"))
            assert r.status_code == 201
            r = await client.post("/api/consolas/registrar", json=SEED_REGISTER, headers=bearer(token))
            assert r.status_code == 200


async def test_auth_none_accepts_seed_004_clients_without_tokens(tmp_path: Path, console_store: str) -> None:
    async with served_consoles(tmp_path, consoles__store=console_store, consoles__auth="none") as srv:
        async with httpx.AsyncClient(base_url=srv.url) as client:
            assert (await client.post("/api/consolas/registrar", json=SEED_REGISTER)).status_code == 201
            r = await client.post(f"/api/consolas/{CID}/heartbeat", json=SEED_HEARTBEAT)
            assert r.status_code == 200
            # Seed 004's clients register again at every start, still without a token.
            r = await client.post("/api/consolas/registrar", json=SEED_REGISTER)
            assert r.status_code == 200 and r.json()["created"] is False
            assert (await console(client, srv))["heartbeats"] == 1


# -- reads -------------------------------------------------------------------------------------------------------------
async def test_reads_need_the_admin_token(client: httpx.AsyncClient) -> None:
    await register_es(client)
    for path in ("/api/consoles", "/api/consoles/stats", f"/api/consoles/{CID}", f"/api/consoles/{CID}/heartbeats"):
        r = await client.get(path)
        assert r.status_code == 401, path
        r = await client.get(path, headers=bearer("wrong"))
        assert r.status_code == 401, path
    assert (await client.delete(f"/api/consoles/{CID}")).status_code == 401


async def test_list_filter_search_paging_sort_and_stats(client: httpx.AsyncClient, srv: ConsoleServer) -> None:
    states = ["activa", "ocupada", "esperando", "error", "ocupada", "ocupada"]
    for i, estado in enumerate(states):
        body = {
            "id": f"c{i}",
            "nombre": f"Consola {i}",
            "estado": estado,
            "sistema": {"hostname": f"rack{i % 2}-node{i}"},
            "ultimaActividad": f"2025-12-03T10:0{i}:00.000Z",
        }
        await register_es(client, body)
    admin = srv.admin
    r = await client.get("/api/consoles", headers=admin)
    page = r.json()
    assert page["total"] == 6
    assert [c["id"] for c in page["consoles"]] == ["c5", "c4", "c3", "c2", "c1", "c0"]  # newest seen first
    r = await client.get("/api/consoles?sort=last_seen&limit=2&offset=1", headers=admin)
    assert [c["id"] for c in r.json()["consoles"]] == ["c1", "c2"] and r.json()["total"] == 6
    r = await client.get("/api/consoles?state=busy", headers=admin)
    assert {c["id"] for c in r.json()["consoles"]} == {"c1", "c4", "c5"}
    r = await client.get("/api/consoles?state=ocupada", headers=admin)  # seed 004's word works too
    assert r.json()["total"] == 3
    r = await client.get("/api/consoles?q=RACK1", headers=admin)  # host, case-insensitive
    assert {c["id"] for c in r.json()["consoles"]} == {"c1", "c3", "c5"}
    r = await client.get("/api/consoles?q=consola 2", headers=admin)  # name
    assert [c["id"] for c in r.json()["consoles"]] == ["c2"]
    r = await client.get("/api/consoles?q=c4&state=busy", headers=admin)  # id
    assert [c["id"] for c in r.json()["consoles"]] == ["c4"]
    r = await client.get("/api/consoles?q=100%25", headers=admin)
    assert r.json()["total"] == 0
    r = await client.get("/api/consoles?sort=name&limit=1", headers=admin)
    assert r.json()["consoles"][0]["id"] == "c0"
    for bad in ("state=sleeping", "limit=0", "limit=x", "offset=-1", "sort=cpu"):
        r = await client.get(f"/api/consoles?{bad}", headers=admin)
        assert r.status_code == 422, bad
        assert r.json()["error"]["code"] == "invalid_parameter"
    r = await client.get("/api/consoles/stats", headers=admin)
    stats = {s["state"]: s for s in r.json()["states"]}
    assert r.json()["total"] == 6
    assert stats["busy"]["count"] == 3 and stats["busy"]["last_activity"] == "2025-12-03T10:05:00.000Z"
    assert stats["inactive"]["count"] == 0 and stats["inactive"]["last_activity"] is None
    assert srv.service.counts_by_state() == {"active": 1, "busy": 3, "idle": 1, "error": 1, "inactive": 0}
    r = await client.get("/api/consoles/c1/heartbeats?limit=0", headers=admin)
    assert r.status_code == 422
    r = await client.get("/api/consoles/nope/transitions", headers=admin)
    assert r.status_code == 404


async def test_remove_deletes_the_console_with_its_history(client: httpx.AsyncClient, srv: ConsoleServer) -> None:
    token = await register_es(client)
    await client.post(f"/api/consolas/{CID}/heartbeat", json=SEED_HEARTBEAT, headers=bearer(token))
    assert (await count_rows(srv, "heartbeats"), await count_rows(srv, "transitions")) == (1, 2)
    r = await client.delete(f"/api/consoles/{CID}", headers=srv.admin)
    assert r.status_code == 200 and r.json() == {"removed": CID}
    assert (await client.get(f"/api/consoles/{CID}", headers=srv.admin)).status_code == 404
    assert (await client.delete(f"/api/consoles/{CID}", headers=srv.admin)).status_code == 404
    r = await client.post(f"/api/consolas/{CID}/heartbeat", json=SEED_HEARTBEAT, headers=bearer(token))
    assert r.status_code == 404
    assert await count_rows(srv, "heartbeats") == 0
    assert await count_rows(srv, "transitions") == 0
    assert await count_rows(srv, "consoles") == 0


# -- live: events, metrics, failures ---------------------------------------------------------------------------------
async def test_registrations_state_changes_and_coalesced_heartbeats_reach_the_bus(
    client: httpx.AsyncClient, srv: ConsoleServer
) -> None:
    with srv.bus.subscribe(["console"]) as sub:
        token = await register_es(client)
        await asyncio.gather(
            *(
                client.post(f"/api/consolas/{CID}/heartbeat", json=SEED_HEARTBEAT, headers=bearer(token))
                for _ in range(20)
            )
        )
        await client.delete(f"/api/consoles/{CID}", headers=srv.admin)
        events = sub.get_nowait()
    registered = [e for e in events if isinstance(e, ConsoleRegistered)]
    changes = [e for e in events if isinstance(e, ConsoleStateChanged)]
    beats = [e for e in events if isinstance(e, ConsoleHeartbeats)]
    assert [(e.console_id, e.state) for e in registered] == [(CID, "idle")]
    assert [(e.from_state, e.to_state, e.reason) for e in changes] == [
        (None, "idle", "register"),
        ("idle", "busy", "heartbeat"),
    ]
    assert sum(e.count for e in beats) == 20 and len(beats) < 20  # coalesced per write batch
    assert all(e.console_ids == (CID,) for e in beats)
    assert isinstance(events[-1], ConsoleRemoved)
    metrics = srv.service.metrics()
    assert metrics.heartbeats_accepted == 20
    assert metrics.consoles_by_state["busy"] == 0  # removed


async def test_a_failed_write_answers_503_and_records_nothing(client: httpx.AsyncClient, srv: ConsoleServer) -> None:
    token = await register_es(client)
    await fail_writes(srv, True)
    r = await client.post(f"/api/consolas/{CID}/heartbeat", json=SEED_HEARTBEAT, headers=bearer(token))
    assert r.status_code == 503
    assert r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "unavailable"
    assert srv.service.state_of(CID) == "idle"
    await fail_writes(srv, False)
    r = await client.post(f"/api/consolas/{CID}/heartbeat", json=SEED_HEARTBEAT, headers=bearer(token))
    assert r.status_code == 200
    c = await console(client, srv)
    assert c["heartbeats"] == 1 and c["state"] == "busy"
    assert srv.service.metrics().heartbeats_rejected["unavailable"] == 1


async def test_heartbeats_take_the_path_under_test_and_odd_requests_take_asgi(
    client: httpx.AsyncClient, srv: ConsoleServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = await register_es(client)
    taken: list[Any] = []
    handle = srv.api.handle

    def spy(route: Any, *rest: Any) -> None:
        taken.append(route)
        handle(route, *rest)

    monkeypatch.setattr(srv.api, "handle", spy)
    r = await client.post(f"/api/consolas/{CID}/heartbeat", json=SEED_HEARTBEAT, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json" and "date" in r.headers
    assert r.json()["console_id"] == CID and r.json()["state"] == "busy"
    assert taken == ([(CID, True)] if srv.path == "fast" else [])

    # A chunked body and a query string go through the ASGI app: same checks, same answer.
    async def chunks() -> AsyncIterator[bytes]:
        yield json.dumps(SEED_HEARTBEAT).encode()

    r = await client.post(
        f"/api/consolas/{CID}/heartbeat",
        content=chunks(),
        headers={**bearer(token), "Content-Type": "application/json"},
    )
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/consolas/{CID}/heartbeat?x=1", json=SEED_HEARTBEAT, headers=bearer(token))
    assert r.status_code == 200, r.text
    r = await client.post(f"/api/consoles/{CID}/heartbeat", json={"state": "nope"}, headers=bearer(token))
    assert r.status_code == 422 and r.json()["error"]["field"] == "state"
    assert taken == ([(CID, True), (CID, False)] if srv.path == "fast" else [])
    assert (await console(client, srv))["heartbeats"] == 3


async def test_a_later_heartbeat_in_the_same_batch_keeps_the_host_name_it_does_not_carry(
    client: httpx.AsyncClient, srv: ConsoleServer
) -> None:
    await register_es(client, {"id": "c1", "nombre": "uno"})
    with_host = decode_heartbeat(json.dumps(SEED_HEARTBEAT).encode(), spanish=True)
    without_host = decode_heartbeat(
        json.dumps({"estado": "activa", "sistema": {"platform": "linux"}}).encode(), spanish=True
    )
    # Queued without waiting in between: both land in one write batch.
    first = srv.service.submit_heartbeat("c1", with_host)
    second = srv.service.submit_heartbeat("c1", without_host)
    await asyncio.gather(first, second)
    assert srv.service.metrics().write_batches == 2  # the registration's, then the two heartbeats'
    c = await console(client, srv, "c1")
    assert c["hostname"] == "mi-servidor"
    assert c["system"] == {"platform": "linux"} and c["state"] == "active" and c["heartbeats"] == 2
    r = await client.get("/api/consoles", params={"search": "mi-serv"}, headers=srv.admin)
    assert [x["id"] for x in r.json()["consoles"]] == ["c1"]


# -- /openapi.json -----------------------------------------------------------------------------------------------------
async def test_openapi_console_schemas_are_the_structs_schemas(tmp_path: Path) -> None:
    """The documented console shapes are generated from the Structs the API encodes: every component is the
    Struct's msgspec schema (a field added to a Struct appears), and a real answer has exactly those fields."""
    from supervisor_tui.consoles import models, wire

    structs = (
        wire.ConsolePage,
        wire.ConsoleSnapshot,
        wire.ConsoleHeartbeats,
        wire.ConsoleTransitions,
        wire.ConsoleStats,
        wire.RemovedConsole,
        wire.Registered,
        wire.HeartbeatAnswer,
        models.HeartbeatES,
        models.RegistrationES,
        models.HeartbeatEN,
        models.RegistrationEN,
    )
    _, expected = msgspec.json.schema_components(structs, ref_template="#/components/schemas/{name}")
    async with served_consoles(tmp_path, path="asgi") as srv, httpx.AsyncClient(base_url=srv.url) as client:
        spec = (await client.get("/openapi.json")).json()
        components = spec["components"]["schemas"]
        for name, schema in expected.items():
            assert components[name] == schema, name
        snapshot = components["ConsoleSnapshot"]
        assert set(snapshot["properties"]) == set(wire.ConsoleSnapshot.__struct_fields__)

        def answer(path: str, method: str, status: str = "200") -> Any:
            return spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]

        ref = "#/components/schemas/{}".format
        assert answer("/api/consoles", "get") == {"$ref": ref("ConsolePage")}
        assert answer("/api/consoles/{consoleId}", "get") == {"$ref": ref("ConsoleSnapshot")}
        assert answer("/api/consoles/{consoleId}/transitions", "get") == {"$ref": ref("ConsoleTransitions")}
        assert answer("/api/consolas/registrar", "post", "201") == {"$ref": ref("Registered")}
        assert answer("/api/consolas/{consoleId}/heartbeat", "post") == {"$ref": ref("HeartbeatAnswer")}
        body = spec["paths"]["/api/consolas/{consoleId}/heartbeat"]["post"]["requestBody"]
        assert body["content"]["application/json"]["schema"] == {"$ref": ref("HeartbeatES")}
        assert [p["name"] for p in spec["paths"]["/api/consoles"]["get"]["parameters"]] == [
            "state",
            "q",
            "limit",
            "offset",
            "sort",
        ]

        await register_es(client)
        one = await console(client, srv)
        assert set(one) == set(snapshot["properties"]) and set(snapshot["required"]) <= set(one)


async def test_the_tui_remote_client_decodes_every_console_answer(tmp_path: Path) -> None:
    """The attached TUI reads the real API into typed records: the console, its page, heartbeats, transitions."""
    from fixtures.consoles.harness import ADMIN_TOKEN

    from supervisor_tui.consoles import wire
    from supervisor_tui.tui.client import ClientError, console_answer
    from supervisor_tui.tui.client_remote import RemoteClient

    async with served_consoles(tmp_path, path="asgi") as srv, httpx.AsyncClient(base_url=srv.url) as client:
        token = await register_es(client)
        r = await client.post(f"/api/consolas/{CID}/heartbeat", json=SEED_HEARTBEAT, headers=bearer(token))
        assert r.status_code == 200, r.text
        remote = RemoteClient(srv.url, ADMIN_TOKEN)
        try:
            page = await remote.consoles()
            assert page.total == 1 and [c.id for c in page.consoles] == [CID]
            one = await remote.console(CID)
            assert (one.name, one.state, one.host, one.current_job) == (
                "Consola mi-servidor",
                "busy",
                "mi-servidor",
                "Video Historia 1 (2/5)",
            )
            assert one.last_seen is not None and one.registered_at is not None and one.system["cpus"] == 8
            assert remote.info.inactive_after == pytest.approx(600, abs=1)  # from the page's inactive_at
            [beat] = await remote.console_heartbeats(CID)
            assert beat.state == "busy" and beat.job == "Video Historia 1 (2/5)" and beat.ts > 0
            steps = await remote.console_transitions(CID)
            assert [(t.from_state, t.to_state, t.reason) for t in steps] == [
                ("", "idle", "register"),
                ("idle", "busy", "heartbeat"),
            ]
            with pytest.raises(ClientError) as refused:
                await remote.console("nope")
            assert refused.value.code == "http_404"
        finally:
            await remote.close()
    # No key guessing: an answer missing a field of the Struct is refused, not read as defaults.
    partial = {"consoles": [{"id": CID, "name": "x"}], "total": 1, "limit": 1, "offset": 0}
    with pytest.raises(ClientError) as bad:
        console_answer(partial, wire.ConsolePage)
    assert bad.value.code == "bad_response" and "state" in bad.value.message


async def test_a_blank_read_parameter_means_not_given(tmp_path: Path) -> None:
    async with served_consoles(tmp_path, path="asgi") as srv, httpx.AsyncClient(base_url=srv.url) as client:
        await register_es(client)
        r = await client.get("/api/consoles?limit=&offset=&q=&state=&sort=", headers=srv.admin)
        assert r.status_code == 200, r.text
        assert (r.json()["limit"], r.json()["offset"], r.json()["total"]) == (100, 0, 1)
        r = await client.get(f"/api/consoles/{CID}/transitions?limit", headers=srv.admin)
        assert r.status_code == 200 and len(r.json()["transitions"]) == 1
        r = await client.get("/api/consoles?limit=&offset=x", headers=srv.admin)
        assert r.status_code == 422 and r.json()["error"]["field"] == "offset"
