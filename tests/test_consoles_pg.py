"""The PostgreSQL console store's own promises: seed 004's table and monitoring queries as written, the DSN's
password never shown, one clear line and exit 2 when the server cannot be reached at startup, 503 with
Retry-After while it is lost later, and back by itself when it returns."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import pytest
from conftest import wait_until
from fixtures.consoles.harness import ADMIN_TOKEN, headless_process, served_consoles
from fixtures.ports import free_port
from fixtures.postgres import PASSWORD

from supervisor_tui.consoles.pg_schema import MIGRATIONS, SCHEMA_VERSION
from supervisor_tui.consoles.pg_store import PgConsoleStore
from supervisor_tui.consoles.service import RETRIES_WHILE_LOST

# Seed 004's two monitoring queries, character for character.
SEED_INACTIVE = """SELECT * 
FROM consolas 
WHERE ultima_actividad < NOW() - INTERVAL '10 minutes'
  AND estado != 'inactiva';"""  # noqa: W291 (seed 004's trailing spaces)
SEED_STATS = """SELECT 
  estado,
  COUNT(*) as total,
  MAX(ultima_actividad) as ultima_actividad_max
FROM consolas
GROUP BY estado;"""  # noqa: W291

SEED_COLUMNS = [
    ("id", "uuid"),
    ("nombre", "character varying"),
    ("estado", "character varying"),
    ("sistema", "jsonb"),
    ("ultima_actividad", "timestamp with time zone"),
    ("ultimo_error", "jsonb"),
    ("video_en_proceso", "character varying"),
    ("created_at", "timestamp with time zone"),
    ("updated_at", "timestamp with time zone"),
]


def iso_ago(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - seconds))


async def test_seed_004s_table_and_monitoring_queries_run_unchanged(
    tmp_path: Path, pg_cluster: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Seed 004's query for the consoles that sent no heartbeat in 10 minutes lists those, whatever they report as
    their last activity, and not the inactive ones; its statistics count by estado."""
    from supervisor_tui.consoles import service as service_module

    dsn = pg_cluster.new_database()
    uuid = "550e8400-e29b-41d4-a716-446655440000"
    beat = {"estado": "ocupada", "sistema": {"hostname": "mi-servidor"}, "ultimaActividad": iso_ago(1200)}
    beat["videoEnProceso"] = "Video Historia 1 (2/5)"
    # Heard from 20 minutes ago, then silent (the supervisor's clock set back for its registration only).
    clock = service_module.time
    monkeypatch.setattr(service_module, "time", SimpleNamespace(time=lambda: clock.time() - 1200))
    async with (
        served_consoles(tmp_path, consoles__store=dsn, consoles__auth="none", consoles__inactive_after="1h") as srv,
        httpx.AsyncClient(base_url=srv.url) as client,
    ):
        body = {"id": uuid, "nombre": f"Consola {uuid}", "estado": "esperando", "ultimaActividad": iso_ago(0)}
        assert (await client.post("/api/consolas/registrar", json=body)).status_code == 201
    monkeypatch.setattr(service_module, "time", clock)
    conn = await asyncpg.connect(dsn)
    try:
        async with (
            served_consoles(tmp_path, consoles__store=dsn, consoles__auth="none", consoles__inactive_after="1h") as srv,
            httpx.AsyncClient(base_url=srv.url) as client,
        ):
            # Busy and talking now, reporting its last activity 20 minutes ago (the seed's example reports an old
            # one too): the store's inactivity (1 h here) flips neither, and the seed's query finds the quiet one.
            body = {
                "id": "render-2",
                "nombre": "Consola render-2",
                "estado": "ocupada",
                "ultimaActividad": iso_ago(1200),
            }
            assert (await client.post("/api/consolas/registrar", json=body)).status_code == 201
            assert (await client.post("/api/consolas/render-2/heartbeat", json=beat)).status_code == 200
            inactive = await conn.fetch(SEED_INACTIVE)
            assert [(r["id"], r["nombre"], r["estado"]) for r in inactive] == [
                (__import__("uuid").UUID(uuid), f"Consola {uuid}", "esperando")
            ]
        async with (
            served_consoles(
                tmp_path, consoles__store=dsn, consoles__auth="none", consoles__inactive_after="0.5"
            ) as srv,
            httpx.AsyncClient(base_url=srv.url) as client,
        ):
            # With the store's inactivity at 0.5 s, "gone" falls silent and goes inactive (the quiet one at once);
            # render-2 keeps talking. The seed's query leaves the inactive ones out.
            body = {"id": "gone", "nombre": "Consola gone", "estado": "activa"}
            assert (await client.post("/api/consolas/registrar", json=body)).status_code == 201

            async def only_gone_inactive() -> bool:
                assert (await client.post("/api/consolas/render-2/heartbeat", json=beat)).status_code == 200
                return srv.service.state_of("gone") == "inactive"

            deadline = time.monotonic() + 15
            while not await only_gone_inactive():
                assert time.monotonic() < deadline
            assert await conn.fetch(SEED_INACTIVE) == []
            stats = {r["estado"]: (r["total"], r["ultima_actividad_max"]) for r in await conn.fetch(SEED_STATS)}
            assert {k: v[0] for k, v in stats.items()} == {"ocupada": 1, "inactiva": 2}
            # ultima_actividad is when the console was last heard from, not what it reports.
            assert time.time() - stats["ocupada"][1].timestamp() < 60
            assert time.time() - stats["inactiva"][1].timestamp() < 60  # "gone", registered just now
            # The API's statistics count the same; their last activity is what the consoles report (as on SQLite).
            api = (await client.get("/api/consoles/stats", headers=srv.admin)).json()
            assert {s["state"]: s["count"] for s in api["states"] if s["count"]} == {"busy": 1, "inactive": 2}
            busy = next(s for s in api["states"] if s["state"] == "busy")
            assert busy["last_activity"] == beat["ultimaActividad"]
            # Once more (inactive after 0.5 s, and the reads above may take that long on a busy machine).
            assert (await client.post("/api/consolas/render-2/heartbeat", json=beat)).status_code == 200
            row = await conn.fetchrow("SELECT * FROM consolas WHERE console_id = 'render-2'")
            assert row["estado"] == "ocupada" and row["video_en_proceso"] == "Video Historia 1 (2/5)"
            assert json.loads(row["sistema"]) == {"hostname": "mi-servidor"}
            # Seed 004's columns with their types, then the product's; both of its indexes.
            columns = await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'consolas' "
                "ORDER BY ordinal_position"
            )
            assert [(c[0], c[1]) for c in columns][: len(SEED_COLUMNS)] == SEED_COLUMNS
            indexes = {r[0]: r[1] for r in await conn.fetch("SELECT indexname, indexdef FROM pg_indexes")}
            assert indexes["idx_consolas_estado"].endswith("USING btree (estado)")
            assert indexes["idx_consolas_ultima_actividad"].endswith("USING btree (ultima_actividad DESC)")
            assert "idx_consolas_search" not in indexes  # no read uses it (searches are answered from memory)
            assert await conn.fetchval("SELECT max(version) FROM console_schema") == SCHEMA_VERSION
    finally:
        await conn.close()


async def schema_of(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    """The public schema's columns, indexes, constraints and table options: what a migration leaves."""
    columns = await conn.fetch(
        "SELECT table_name, column_name, data_type, is_nullable, column_default, collation_name "
        "FROM information_schema.columns WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
    )
    indexes = await conn.fetch("SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
                               "ORDER BY indexname")  # fmt: skip
    constraints = await conn.fetch(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE connamespace = 'public'::regnamespace ORDER BY conname"
    )
    options = await conn.fetch(
        "SELECT relname, reloptions::text FROM pg_class WHERE relnamespace = 'public'::regnamespace ORDER BY relname"
    )
    functions = await conn.fetch(
        "SELECT proname, proisstrict, provolatile, prosrc FROM pg_proc WHERE pronamespace = 'public'::regnamespace "
        "AND proname LIKE 'consolas%' ORDER BY proname"
    )
    return [tuple(r) for r in (*columns, *indexes, *constraints, *options, *functions)]


async def test_a_store_at_schema_1_upgrades_to_what_a_fresh_one_is_and_keeps_its_consoles(pg_cluster: Any) -> None:
    old, fresh = pg_cluster.new_database(), pg_cluster.new_database()
    conn = await asyncpg.connect(old)
    try:
        async with conn.transaction():  # as the first release left it (PgConsoleStore._migrate's steps)
            await conn.execute("CREATE TABLE console_schema (version INTEGER NOT NULL)")
            await conn.execute(MIGRATIONS[0])
            await conn.execute("INSERT INTO console_schema (version) VALUES (1)")
        await conn.execute(
            "INSERT INTO consolas (id, console_id, nombre, estado, reported_state, hostname, last_seen, "
            "ultima_actividad) SELECT consolas_uuid('old' || i), 'old' || i, 'Old ' || i, 'esperando', 'idle', "
            "'legacy-' || i, now(), CASE WHEN i > 6 THEN now() - interval '1 day' END "
            "FROM generate_series(1, 12) AS i"
        )
        assert await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = 'idx_consolas_search'") == 1
    finally:
        await conn.close()
    for dsn in (old, fresh):
        store = PgConsoleStore(dsn)
        await store.open()
        try:
            assert await store.schema_version() == SCHEMA_VERSION
        finally:
            await store.close()
    upgraded_conn, fresh_conn = await asyncpg.connect(old), await asyncpg.connect(fresh)
    try:
        upgraded, expected = await schema_of(upgraded_conn), await schema_of(fresh_conn)
        assert upgraded == expected
        assert not [row for row in expected if "idx_consolas_search" in row]
        # Version 3: no foreign key from heartbeats (their statement writes them only for consoles it found).
        assert not [row for row in expected if "console_heartbeats_console_id_fkey" in row]
        # Version 4: estado_anterior (the estado the row's last update found), empty in the rows from before it,
        # and consolas_state, consolas_estado the other way.
        assert ("consolas", "estado_anterior", "character varying", "YES", None, None) in expected
        assert await upgraded_conn.fetchval("SELECT count(*) FROM consolas WHERE estado_anterior IS NULL") == 12
        for conn in (upgraded_conn, fresh_conn):
            states = await conn.fetchval(
                "SELECT array_agg(consolas_state(consolas_estado(s)) ORDER BY s) FROM unnest($1::text[]) AS s",
                ["active", "busy", "error", "idle", "inactive"],
            )
            assert states == ["active", "busy", "error", "idle", "inactive"]
        # Version 5: the three functions inlined into the statements that call them (a SQL function that is not
        # inlined runs its body as a query of its own per call): the plan shows their CASE, not a call.
        for conn in (upgraded_conn, fresh_conn):
            for function in ("consolas_estado", "consolas_state", "consolas_uuid"):
                plan = await conn.fetchval(
                    f"EXPLAIN (VERBOSE, FORMAT JSON) SELECT {function}(s) FROM (VALUES ('busy'), (NULL)) AS v(s)"
                )
                output = " ".join(json.loads(plan)[0]["Plan"]["Output"])
                assert "CASE" in output and function not in output, output
            nulls = await conn.fetchrow("SELECT consolas_estado(NULL), consolas_state(NULL), consolas_uuid(NULL)")
            assert tuple(nulls) == (None, None, None)  # as they gave when they were STRICT
        # Version 6: what the consoles reported as their last activity moved to reported_activity, and
        # ultima_actividad is when they were last heard from.
        moved = await upgraded_conn.fetch(
            "SELECT count(*) FILTER (WHERE reported_activity = last_seen - interval '1 day'), "
            "count(*) FILTER (WHERE reported_activity IS NULL), count(*) FILTER (WHERE ultima_actividad = last_seen) "
            "FROM consolas"
        )
        assert tuple(moved[0]) == (6, 6, 12)
        names = await upgraded_conn.fetch("SELECT console_id FROM consolas ORDER BY console_id")
        assert [r[0] for r in names] == sorted(f"old{i}" for i in range(1, 13))
    finally:
        await upgraded_conn.close()
        await fresh_conn.close()


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor_tui", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )


def test_unreachable_at_startup_is_one_line_and_exit_2_without_the_password(tmp_path: Path) -> None:
    dsn = f"postgresql://consoles:{PASSWORD}@127.0.0.1:{free_port()}/consoles"
    done = run_cli(
        "--headless",
        "--data-dir",
        str(tmp_path / "data"),
        "--plugins-dir",
        str(tmp_path),
        "--port",
        "0",
        SUPERVISOR_TUI_CONSOLES_STORE=dsn,
    )
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the console store" in lines[0], done.stderr
    assert "postgresql://consoles:***@127.0.0.1" in lines[0]
    assert PASSWORD not in done.stderr + done.stdout


def test_a_wrong_password_is_refused_at_startup_without_showing_it(tmp_path: Path, pg_cluster: Any) -> None:
    dsn = pg_cluster.dsn("postgres", password="not-the-password")
    done = run_cli(
        "--headless", "--data-dir", str(tmp_path / "d"), "--plugins-dir", str(tmp_path), "--port", "0",
        SUPERVISOR_TUI_CONSOLES_STORE=dsn,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "password authentication failed" in done.stderr and "not-the-password" not in done.stderr


def test_config_shows_the_dsn_with_its_password_masked(tmp_path: Path) -> None:
    dsn = f"postgresql://consoles:{PASSWORD}@db.example:5432/consoles?sslmode=require&password={PASSWORD}"
    done = run_cli("config", SUPERVISOR_TUI_CONSOLES_STORE=dsn)
    assert done.returncode == 0, done.stderr
    assert "postgresql://consoles:***@db.example:5432/consoles?sslmode=require&password=***" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    bad = run_cli("config", SUPERVISOR_TUI_CONSOLES_STORE=f"mysql://u:{PASSWORD}@h/db")
    assert bad.returncode == 2 and PASSWORD not in bad.stderr and "consoles.store" in bad.stderr


async def test_a_lost_server_answers_503_says_so_and_comes_back_by_itself(tmp_path: Path, pg_cluster: Any) -> None:
    dsn = pg_cluster.new_database()
    port = free_port()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    beat = {"estado": "ocupada"}
    with headless_process(tmp_path / "data", port, dsn) as proc:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            r = await client.post("/api/consolas/registrar", json={"id": "c1", "nombre": "uno"})
            token = {"Authorization": f"Bearer {r.json()['token']}"}
            assert (await client.post("/api/consolas/c1/heartbeat", json=beat, headers=token)).status_code == 200
            status = (await client.get("/api/v1/status", headers=admin)).json()["console_store"]
            assert status["kind"] == "postgresql" and status["available"] is True
            assert status["where"] == dsn.replace(PASSWORD, "***") and PASSWORD not in json.dumps(status)
            pg_cluster.stop()
            try:
                r = await client.post("/api/consolas/c1/heartbeat", json=beat, headers=token)
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "unavailable" and PASSWORD not in r.text
                status = (await client.get("/api/v1/status", headers=admin)).json()["console_store"]
                assert status["available"] is False and "cannot be reached" in status["problem"]
                r = await client.get("/api/consoles/c1", headers=admin)
                assert r.status_code == 503 and PASSWORD not in r.text
            finally:
                pg_cluster.start()

            async def beats_again() -> bool:
                r = await client.post("/api/consolas/c1/heartbeat", json=beat, headers=token)
                return r.status_code == 200

            deadline = time.monotonic() + 30
            while not await beats_again():
                assert time.monotonic() < deadline
            # The change feed from other nodes reconnects by itself too (backing off): then all is well again.
            while True:
                status = (await client.get("/api/v1/status", headers=admin)).json()["console_store"]
                if status["available"] and status["problem"] is None:
                    break
                assert time.monotonic() < deadline + 30, status
                await asyncio.sleep(0.1)
            assert (await client.get("/api/consoles/c1", headers=admin)).json()["heartbeats"] == 2
            # The supervisor's log (the TUI's log pane, every log follower) said so once, and that it is back.
            r = await client.get("/api/v1/logs", params={"lines": 500, "source": "supervisor"}, headers=admin)
            said = [line["message"] for line in r.json()["lines"]]
            lost = [m for m in said if m.startswith("the console store is lost") and "heartbeats answer 503" in m]
            back = [m for m in said if "is reachable again" in m]
            assert len(lost) == 1 and len(back) == 1, said
            assert PASSWORD not in r.text
            # At startup it said where the consoles are kept (the DSN masked).
            masked = dsn.replace(PASSWORD, "***")
            assert f"consoles kept in {masked} (a store several supervisors can share)" in said, said
        # Nor did its output say more: no traceback of the driver's pool retrying to reconnect meanwhile.
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout is not None
        output = proc.stdout.read().decode(errors="replace")
        assert proc.wait(30) == 0
        assert "Traceback" not in output and "connection floor" not in output, output


async def test_batches_stay_durable_when_the_database_default_is_asynchronous(pg_cluster: Any) -> None:
    """synchronous_commit=on is the store's, not the server's: on the write batches' connections, and on the pool's,
    where it survives the pool handing connections back (whose default reset runs RESET ALL), even where the
    database defaults to off."""
    from supervisor_tui.consoles.pg_store import PgConsoleStore

    dsn = pg_cluster.new_database()
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET synchronous_commit = off', current_database()); END $$"
        )
    finally:
        await admin.close()
    store = PgConsoleStore(dsn, pool_size=1)
    await store.open()

    async def setting(conn: asyncpg.Connection) -> str:
        return str(await conn.fetchval("SHOW synchronous_commit"))

    try:
        for _ in range(3):  # the one connection goes back to the pool after every use
            assert await store.commit([("call", setting, None)]) == ["on"]  # a write batch's own connection
            assert await store.pool.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await store.close()


async def test_while_the_server_is_lost_a_sweep_retries_a_few_timeouts_and_all_once_it_is_back(
    tmp_path: Path, pg_cluster: Any
) -> None:
    """Timeouts that could not be written wait for the store: each sweep tries only a few while it has a problem
    (re-planning every one each sweep kept a supervisor with many silent consoles busy), every one once it is back."""
    dsn = pg_cluster.new_database()
    ids = [f"t{i}" for i in range(60)]
    async with served_consoles(
        tmp_path, sweep_interval=3600, consoles__store=dsn, consoles__auth="none", consoles__inactive_after="1"
    ) as srv:
        service = srv.service
        async with httpx.AsyncClient(base_url=srv.url) as client:
            for cid in ids:
                r = await client.post("/api/consolas/registrar", json={"id": cid, "nombre": cid})
                assert r.status_code == 201
        later = time.time() + 60

        async def sweep_and_fail() -> int:
            """Sweep, and wait for the batch that writes its timeouts to fail."""
            before = service.metrics().write_failures
            queued = service.sweep(later)
            await wait_until(lambda: service.metrics().write_failures > before)
            return queued

        pg_cluster.stop()
        try:
            assert await sweep_and_fail() == len(ids)  # every one due, and tried once
            assert service.store.problem is not None
            for _ in range(3):
                assert 0 < await sweep_and_fail() <= RETRIES_WHILE_LOST
        finally:
            pg_cluster.start()
        await wait_until(lambda: service.sweep(later) >= 0 and all(service.state_of(c) == "inactive" for c in ids))
        assert service.sweep(later) == 0  # nothing left waiting
