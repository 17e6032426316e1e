"""`supervisor-tui consoles migrate --to postgresql://...`: the SQLite store's consoles, history, transitions and
tokens copied into PostgreSQL; interrupted and run again it finishes, run twice it copies nothing twice."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
from fixtures.consoles.harness import served_consoles
from fixtures.postgres import PASSWORD

from supervisor_tui.consoles.migrate import migrate
from supervisor_tui.core.lock import DataDirLock

READS = ("/api/consoles?limit=1000&sort=name", "/api/consoles/stats")


async def sqlite_store_with_history(data: Path) -> tuple[dict[str, str], dict[str, Any]]:
    """A SQLite store with 12 consoles, their heartbeats and transitions; returns (tokens, what the API reads)."""
    tokens: dict[str, str] = {}
    async with (
        served_consoles(data, consoles__register_rate=0) as srv,
        httpx.AsyncClient(base_url=srv.url) as client,
    ):
        for i in range(12):
            body = {"id": f"m{i}", "nombre": f"Consola {i}", "sistema": {"hostname": f"host-{i}"}}
            r = await client.post("/api/consolas/registrar", json=body)
            tokens[f"m{i}"] = r.json()["token"]
            for estado in ("ocupada", "esperando", "error")[: i % 3 + 1]:
                beat = {"estado": estado, "videoEnProceso": f"job {i}", "ultimoError": {"msg": "x"}}
                headers = {"Authorization": f"Bearer {tokens[f'm{i}']}"}
                assert (
                    await client.post(f"/api/consolas/m{i}/heartbeat", json=beat, headers=headers)
                ).status_code == 200
        await client.delete("/api/consoles/m11", headers=srv.admin)
        return tokens, await reads(client, srv.admin)


async def reads(client: httpx.AsyncClient, admin: dict[str, str]) -> dict[str, Any]:
    out = {path: (await client.get(path, headers=admin)).json() for path in READS}
    for i in range(11):
        for what in ("heartbeats", "transitions"):
            out[f"{i}/{what}"] = (await client.get(f"/api/consoles/m{i}/{what}", headers=admin)).json()
    return out


async def test_migrate_copies_everything_resumes_and_runs_twice(tmp_path: Path, pg_cluster: Any) -> None:
    data = tmp_path / "data"
    tokens, before = await sqlite_store_with_history(data)
    dsn = pg_cluster.new_database()
    # Interrupted after two chunks of 4 rows: what was committed stays, the next run goes on from there.
    partial = await migrate((data / "supervisor.db").resolve(), dsn, chunk=4, stop_after_chunks=2)
    assert partial == {"consoles": 8, "heartbeats": 0, "transitions": 0}
    env = {**os.environ, "SUPERVISOR_TUI_CONSOLES_STORE": "sqlite"}
    cmd = [sys.executable, "-m", "supervisor_tui", "consoles", "migrate", "--to", dsn, "--data-dir", str(data)]
    done = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    # 11 consoles (m11 was removed), 21 heartbeats, 11 registrations + 21 state changes.
    assert "3 consoles, 21 heartbeats, 32 transitions copied by this run" in done.stdout, done.stdout
    assert PASSWORD not in done.stdout + done.stderr
    again = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0 and "0 consoles, 0 heartbeats, 0 transitions copied" in again.stdout

    async with (
        served_consoles(tmp_path / "pg", consoles__store=dsn) as srv,
        httpx.AsyncClient(base_url=srv.url) as client,
    ):
        assert await reads(client, srv.admin) == before
        # Tokens came along: the console's own token is still its token.
        headers = {"Authorization": f"Bearer {tokens['m3']}"}
        r = await client.post("/api/consolas/m3/heartbeat", json={"estado": "activa"}, headers=headers)
        assert r.status_code == 200
        r = await client.post(
            "/api/consolas/m3/heartbeat", json={"estado": "activa"}, headers={"Authorization": "Bearer no"}
        )
        assert r.status_code == 403


async def beat(client: httpx.AsyncClient, cid: str, token: str, estado: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    r = await client.post(f"/api/consolas/{cid}/heartbeat", json={"estado": estado}, headers=headers)
    assert r.status_code == 200, r.text


async def console_reads(client: httpx.AsyncClient, admin: dict[str, str], cid: str) -> dict[str, Any]:
    """A console, its heartbeats and its transitions, as the API reads them."""
    return {what: (await client.get(f"/api/consoles/{cid}{what}", headers=admin)).json()
            for what in ("", "/heartbeats", "/transitions")}  # fmt: skip


async def test_migrate_again_brings_consoles_changed_since_up_to_date(tmp_path: Path, pg_cluster: Any) -> None:
    """A console that spoke through the SQLite store after a migration is brought up to date by the next run (its
    row, history and transitions agree); one that spoke through PostgreSQL since is kept as it is there."""
    data = tmp_path / "data"
    tokens, _ = await sqlite_store_with_history(data)
    dsn = pg_cluster.new_database()
    env = {**os.environ, "SUPERVISOR_TUI_CONSOLES_STORE": "sqlite"}
    cmd = [sys.executable, "-m", "supervisor_tui", "consoles", "migrate", "--to", dsn, "--data-dir", str(data)]
    first = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    # Then m5 speaks through SQLite and after that through PostgreSQL (newer there); m3 speaks through SQLite last.
    async with served_consoles(data, consoles__register_rate=0) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        await beat(c, "m5", tokens["m5"], "activa")
    async with served_consoles(tmp_path / "pg", consoles__store=dsn) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        await beat(c, "m5", tokens["m5"], "ocupada")
        kept = (await c.get("/api/consoles/m5", headers=srv.admin)).json()
    async with served_consoles(data, consoles__register_rate=0) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        await beat(c, "m3", tokens["m3"], "activa")
        m3 = await console_reads(c, srv.admin, "m3")
    again = await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 0, again.stderr
    # m3 only: m5's SQLite row is older than PostgreSQL's; the history of both is appended.
    assert "1 consoles, 2 heartbeats, 2 transitions copied by this run" in again.stdout, again.stdout
    async with served_consoles(tmp_path / "pg", consoles__store=dsn) as srv, httpx.AsyncClient(base_url=srv.url) as c:
        got = await console_reads(c, srv.admin, "m3")
        assert got == m3
        assert got[""]["state"] == "active"
        assert (await c.get("/api/consoles/m5", headers=srv.admin)).json() == kept
    # The row itself, as seed 004's queries read it: m3's estado, the same as its last transition.
    row = pg_cluster.psql("SELECT estado FROM consolas WHERE console_id = 'm3'", dsn.rsplit("/", 1)[1])
    assert row.strip() == "activa"


def test_migrate_refuses_while_a_supervisor_runs_on_the_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    sqlite3.connect(data / "supervisor.db").close()
    lock = DataDirLock(data)
    lock.acquire()  # what a running supervisor holds
    try:
        cmd = [sys.executable, "-m", "supervisor_tui", "consoles", "migrate", "--data-dir", str(data),
               "--to", f"postgresql://u:{PASSWORD}@127.0.0.1:1/db"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        lock.release()
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert f"pid {os.getpid()}" in done.stderr and "already running" in done.stderr
    assert PASSWORD not in done.stderr and done.stdout == ""
    # Once it is stopped, the next thing in the way is the DSN given with --to (not the setting).
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert "cannot reach the console store" in done.stderr and done.stderr.rstrip().endswith("(--to)")


def test_migrate_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "supervisor_tui", "consoles", "migrate"]
    bad = subprocess.run([*base, "--to", f"mysql://u:{PASSWORD}@h/db"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and PASSWORD not in bad.stderr and len(bad.stderr.splitlines()) == 1
    none = subprocess.run(
        [*base, "--to", f"postgresql://u:{PASSWORD}@127.0.0.1:1/db", "--data-dir", str(tmp_path / "empty")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert none.returncode == 2 and "nothing to migrate" in none.stderr and PASSWORD not in none.stderr
