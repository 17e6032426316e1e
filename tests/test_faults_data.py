"""The data dir under faults, on a real `supervisor-tui --headless` and real files: modes of what it creates, an
unwritable logs/, a full disk (a small tmpfs) under an operator's stop and SIGTERM, a read-only database, and a
damaged page of console history.

Fault injection needs root: ``mount -t tmpfs`` for a full disk, ``chattr +i`` for files even root cannot write.
Tests that need one skip, saying why, where it is not permitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import signal
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import HeadlessProcess, open_supervisor, wait_until
from fixtures.consoles.harness import database_at_version, served_consoles

from supervisor_tui.config import Settings
from supervisor_tui.core.store import SCHEMA_VERSION, Store
from supervisor_tui.plugins.model import PluginState

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

Headless = Callable[..., HeadlessProcess]

CHATTY = "import time\nwhile True:\n    print('x' * 200, flush=True)\n    time.sleep(0.01)\n"


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """Permission bits of everything under ``root`` (itself included), by path relative to it."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def umask_of(pid: int) -> str:
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[1] for line in status.splitlines() if line.startswith("Umask:"))


def chattr(flag: str, *paths: Path) -> None:
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def immutable(tmp_path: Path) -> Iterator[Callable[..., None]]:
    """``immutable(*paths)``: chattr +i (undone at teardown); skips where the file system or user cannot."""
    probe = tmp_path / "chattr-probe"
    probe.touch()
    try:
        chattr("+i", probe)
        chattr("-i", probe)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"chattr +i does not work here ({exc}): needs root and ext4/xfs/btrfs")
    made: list[Path] = []

    def make(*paths: Path) -> None:
        chattr("+i", *paths)
        made.extend(paths)

    yield make
    existing = [p for p in made if p.exists()]
    if existing:
        chattr("-i", *existing)


@pytest.fixture
def small_disk(settings: Settings) -> Iterator[Path]:
    """The data dir on a 2 MiB tmpfs of its own (unmounted at teardown); skips where mounting is not permitted."""
    data = settings.data_dir
    data.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(data)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield data
    finally:
        subprocess.run(["umount", "--lazy", str(data)], check=True)


def fill(directory: Path) -> None:
    """Write a file until the file system is full (ENOSPC), down to the last bytes."""
    with open(directory / "filler", "wb", buffering=0) as f:
        for chunk in (1 << 16, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * chunk)
    with pytest.raises(OSError) as full, open(directory / "one-more", "wb", buffering=0) as f:
        f.write(b"\0" * 4096)
    assert full.value.errno == errno.ENOSPC


async def api_url(proc: HeadlessProcess) -> str:
    return str((await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"])


def admin_headers(settings: Settings) -> dict[str, str]:
    return {"Authorization": f"Bearer {(settings.data_dir / 'admin.token').read_text().strip()}"}


async def test_everything_in_the_data_dir_is_private_whatever_the_umask(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_plugin("chatty", CHATTY)
    monkeypatch.setenv("SUPERVISOR_TUI_DATA_LOG_MAX_BYTES", "4096")  # rotated files too
    config = settings.base_dir / "supervisor.toml"
    config.write_text('[inprocess.audit-log]\nmodule = "supervisor_tui.inprocess_plugins.audit_log:AuditLog"\n')
    with umask(0o022):
        proc = headless("--config", str(config))
    running = await proc.wait_state("chatty", "RUNNING")
    # The umask is the supervisor's business only: plugins keep the one they were started with.
    assert umask_of(running["pid"]) == "0022"
    url = await api_url(proc)
    async with httpx.AsyncClient(base_url=url, headers=admin_headers(settings)) as client:
        r = await client.put("/api/v1/plugins/chatty/config", json={"env": {"PASSWORD": "hunter2"}})
        assert r.status_code == 200, r.text
    logs = settings.data_dir / "logs"
    await wait_until(lambda: (logs / "chatty.log.1").exists())
    found = modes(settings.data_dir)
    expected = {"supervisor.db", "supervisor.db-wal", "supervisor.db-shm", "supervisor.lock", "admin.token"}
    expected |= {"plugin.token", "logs/supervisor.log", "logs/chatty.log", "logs/chatty.log.1", "audit.jsonl"}
    assert expected <= set(found), sorted(found)
    wrong = {name: f"{mode:04o}" for name, mode in found.items() if mode != (0o700 if name in (".", "logs") else 0o600)}
    assert not wrong, wrong
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


async def test_an_existing_data_dir_open_to_others_is_tightened_and_said_so(
    headless: Headless, settings: Settings
) -> None:
    with umask(0o022):
        settings.data_dir.mkdir(parents=True)
        settings.data_dir.chmod(0o755)
        proc = headless()
    note = await proc.wait_for(lambda r: r.get("event") == "permissions_tightened")
    assert str(settings.data_dir) in note["message"] and "0755" in note["message"] and note["level"] == "warning"
    assert stat.S_IMODE(settings.data_dir.stat().st_mode) == 0o700
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


async def test_a_stop_on_a_full_disk_stops_says_it_is_not_saved_and_sigterm_exits_0(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings, small_disk: Path
) -> None:
    make_plugin("alpha", CHATTY)
    proc = headless()
    running = await proc.wait_state("alpha", "RUNNING")
    url = await api_url(proc)
    fill(small_disk)
    # Its lines no longer fit in logs/alpha.log: said once, not once per line.
    await proc.wait_for(lambda r: r.get("event") == "log_file_failed" and r.get("file") == "alpha.log")
    async with httpx.AsyncClient(base_url=url, headers=admin_headers(settings), timeout=30) as client:
        r = await client.post("/api/v1/plugins/alpha/stop")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["plugin"]["state"] == "STOPPED"
    assert "could not be saved" in body["warning"] and "restart will not remember" in body["warning"]
    assert not psutil.pid_exists(running["pid"])
    unsaved = await proc.wait_for(lambda r: r.get("event") == "desired_state_unsaved")
    assert unsaved["plugin"] == "alpha" and unsaved["level"] == "warning"
    # `ctl` does it too, and says so on stderr while still succeeding.
    token = (settings.data_dir / "admin.token").read_text().strip()
    ctl = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "supervisor_tui", "ctl", "--url", url, "--token", token, "start", "alpha"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(ctl.communicate(), 60)
    assert ctl.returncode == 0, err
    assert out.decode().startswith("alpha: "), out
    assert "warning: alpha:" in err.decode() and "restart will not remember" in err.decode(), err
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.find(lambda r: r.get("event") == "log_file_failed" and r.get("file") == "alpha.log")) == 1


async def test_an_unwritable_logs_dir_is_said_once_and_supervision_goes_on(
    make_plugin: Callable[..., Path], settings: Settings, immutable: Callable[..., None]
) -> None:
    make_plugin("chatty", CHATTY)
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True, mode=0o700)
    immutable(logs)  # no file can be created in it, not even by root
    async with open_supervisor(settings) as sup:
        await sup.start("chatty")
        await wait_until(lambda: len(sup.logs.tail("chatty", 1000)) >= 50)  # the ring keeps every line
        assert sup.plugin("chatty").state == PluginState.RUNNING
        warned = [r for r in sup.logs.tail("supervisor", 1000) if r.fields.get("event") == "log_file_failed"]
    assert sorted(r.fields["file"] for r in warned) == ["chatty.log", "supervisor.log"]  # once each, not per line
    assert all(str(logs) in r.message and r.level == "warning" for r in warned)
    assert all("Operation not permitted" in r.message for r in warned), [r.message for r in warned]


async def test_a_database_that_cannot_be_written_is_refused_with_one_line_and_exit_1(
    headless: Headless, settings: Settings, immutable: Callable[..., None]
) -> None:
    store = Store(settings.db_path)
    await store.open()
    await store.close()
    immutable(settings.db_path)  # SQLite would open it read-only without a word
    proc = headless()
    assert await proc.wait(timeout=30) == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot be written" in lines[0] and str(settings.db_path) in lines[0], proc.stderr


def damage(db_path: Path, name: str, page: str = "root") -> None:
    """Overwrite the root page (or a ``"middle"`` leaf) of table or index ``name`` with garbage; the database is
    not in use."""
    db = sqlite3.connect(db_path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        if page == "root":
            number = db.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
        else:
            leaves = db.execute("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'", (name,)).fetchall()
            assert len(leaves) >= 5, f"{name} has only {len(leaves)} leaf pages"
            number = sorted(leaves)[len(leaves) // 2][0]
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
    finally:
        db.close()
    with open(db_path, "r+b") as f:
        f.seek((number - 1) * page_size)
        f.write(b"\xa5" * page_size)


@pytest.mark.parametrize(
    ("damaged", "table"),
    [("heartbeats", "heartbeats"), ("idx_heartbeats_console", "heartbeats"), ("transitions", "transitions")],
)
async def test_damaged_console_history_is_named_and_the_rest_works(
    headless: Headless, settings: Settings, damaged: str, table: str
) -> None:
    proc = headless()
    url = await api_url(proc)
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/api/consoles/register", json={"id": "c1", "name": "C1", "state": "idle"})
        assert r.status_code == 201, r.text
        token = {"Authorization": f"Bearer {r.json()['token']}"}
        for i in range(60):  # a few pages of history: heartbeats and a transition each
            body = {"state": ("busy", "idle")[i % 2], "current_job": f"job-{i}-" + "x" * 300}
            r = await client.post("/api/consoles/c1/heartbeat", json=body, headers=token)
            assert r.status_code == 200, r.text
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    damage(settings.db_path, damaged)

    proc = headless()
    url = await api_url(proc)  # it starts
    said = await proc.wait_for(lambda r: r.get("event") == "history_damaged")
    assert said["table"] == table and said["level"] == "error" and f"table {table} " in said["message"]
    admin = admin_headers(settings)
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/api/consoles/c1/heartbeat", json={"state": "error"}, headers=token)  # a transition
        assert r.status_code == 200, r.text
        r = await client.post("/api/consoles/register", json={"id": "c2", "name": "C2", "state": "busy"})
        assert r.status_code == 201, r.text
        c2 = {"Authorization": f"Bearer {r.json()['token']}"}
        r = await client.post("/api/consoles/c2/heartbeat", json={"state": "idle"}, headers=c2)
        assert r.status_code == 200, r.text
        r = await client.get("/api/consoles/c1", headers=admin)
        assert r.json()["state"] == "error" and r.json()["heartbeats"] == 61
        r = await client.get(f"/api/consoles/c1/{table}", headers=admin)
        assert r.status_code == 503 and f"history table {table} is damaged" in r.json()["error"]["message"]
        other = "transitions" if table == "heartbeats" else "heartbeats"
        r = await client.get(f"/api/consoles/c1/{other}", headers=admin)
        assert r.status_code == 200 and r.json()
        r = await client.get("/api/v1/status", headers=admin)
        assert set(r.json()["damaged_tables"]) == {table}
        r = await client.get("/metrics", headers=admin)
        skipped = next(line for line in r.text.splitlines() if line.startswith("supervisor_console_history_rows_"))
        assert skipped.startswith("supervisor_console_history_rows_skipped_total ") and float(skipped.split()[1]) >= 1
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert len(proc.find(lambda r: r.get("event") == "history_damaged")) == 1


async def test_history_damaged_away_from_its_ends_is_found_by_the_write_and_heartbeats_are_acknowledged(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    db = database_at_version(data, SCHEMA_VERSION)
    ids = [f"console-{i:03d}-" + "x" * 100 for i in range(300)]  # long ids: the index spans many pages
    db.executemany(
        "INSERT INTO consoles (id, name, state, reported_state, first_seen, last_seen) VALUES (?, ?, 'idle', 'idle', "
        "1, 2)",
        [(cid, cid) for cid in ids],
    )
    db.executemany(
        "INSERT INTO transitions (console_id, from_state, to_state, at, reason) "
        "VALUES (?, NULL, 'idle', 1, 'register')",
        [(cid,) for cid in ids],
    )
    db.commit()
    db.close()
    damage(data / "supervisor.db", "idx_transitions_console", page="middle")  # not read at start

    async with served_consoles(data, consoles__auth="none") as server, httpx.AsyncClient(base_url=server.url) as c:

        def said() -> list[Any]:
            return [r for r in server.logs.tail("supervisor", 1000) if r.fields.get("event") == "history_damaged"]

        assert not said()  # the start reads only the ends of the index
        for cid in ids:  # each a state change: a transition row in the damaged index
            r = await c.post(f"/api/consoles/{cid}/heartbeat", json={"state": "busy"})
            assert r.status_code == 200, r.text
        assert len(said()) == 1 and said()[0].fields["table"] == "transitions"
        assert set(server.service.damaged_history()) == {"transitions"}
        r = await c.get(f"/api/consoles/{ids[0]}", headers=server.admin)
        assert r.json()["state"] == "busy"
