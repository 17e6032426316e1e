"""A startup step that fails closes every part the steps before it opened, in reverse order: no plugin process, no
open database, no held data-dir lock, no bound API port, no task of ours left in the loop.

The failures are real: a console store (PostgreSQL) nobody listens on, an API port another socket holds, a
database written by a newer version (the Supervisor's own open)."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import plugin_processes, spawns, write_plugin
from fixtures.ports import free_port

from supervisor_tui.config import Settings
from supervisor_tui.core.lock import DataDirLock
from supervisor_tui.core.store import StoreError, StoreUnreachable
from supervisor_tui.core.supervisor import Supervisor
from supervisor_tui.runtime import Runtime, StartupError

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")


def _assert_all_closed(
    runtime: Runtime, settings: Settings, folder: Path, tasks_before: set[asyncio.Task[object]]
) -> None:
    assert spawns(folder) == [] and plugin_processes(settings.base_dir) == []
    assert not runtime.sup.store.is_open  # the database is closed (its thread would keep the process alive)
    assert not runtime.sup.opened
    lock = DataDirLock(settings.data_dir)
    lock.acquire()  # the data-dir lock was released: LockError otherwise
    lock.release()
    # The supervisor's loops (metrics, external plugins), the console writer, the plugin starts: all gone.
    left = {t for t in asyncio.all_tasks() if t not in tasks_before and not t.done()}
    assert left == set(), left


async def _tasks_settle(before: set[asyncio.Task[object]]) -> None:
    """Cancelled tasks finish within a few loop turns; give them those (nothing is awaited on a timer)."""
    for _ in range(20):
        if not {t for t in asyncio.all_tasks() if t not in before and not t.done()}:
            return
        await asyncio.sleep(0)


async def test_an_unreachable_console_store_closes_the_supervisor_and_the_api_socket(
    make_settings: Callable[..., Settings],
) -> None:
    port = free_port()
    dsn = f"postgresql://consoles:secret@127.0.0.1:{free_port()}/consoles"
    settings = make_settings(**{"server.port": port, "consoles.store": dsn})

    folder = write_plugin(settings.plugins_dir, "web", "sleeper.py")
    runtime = Runtime(settings, "headless")
    before = set(asyncio.all_tasks())
    with pytest.raises(StoreUnreachable) as failed:
        await runtime.start(start_plugins=True)
    await _tasks_settle(before)
    _assert_all_closed(runtime, settings, folder, before)
    # The API socket was bound before the console store failed: closed since, not merely left to the garbage
    # collector (the traceback in ``failed`` still holds start()'s frame).
    with socket.socket() as again:
        again.bind(("127.0.0.1", port))
    assert "cannot reach the console store" in str(failed.value)
    # And the data dir serves the next supervisor at once, with the plugin the failed start never ran.
    async with Supervisor(settings) as sup:
        await sup.start("web")
        assert len(spawns(folder)) == 1


async def test_an_api_port_in_use_closes_the_supervisor_before_any_plugin_runs(
    make_settings: Callable[..., Settings],
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = make_settings(**{"server.port": taken.getsockname()[1]})

        folder = write_plugin(settings.plugins_dir, "web", "sleeper.py")
        runtime = Runtime(settings, "headless")
        before = set(asyncio.all_tasks())
        with pytest.raises(StartupError, match="in use"):
            await runtime.start(start_plugins=True)
        await _tasks_settle(before)
        _assert_all_closed(runtime, settings, folder, before)
    await runtime.stop()  # stop after a failed start has nothing left to do


async def test_a_database_from_a_newer_version_fails_open_and_releases_the_lock(settings: Settings) -> None:
    settings.data_dir.mkdir(parents=True, mode=0o700)
    with sqlite3.connect(settings.db_path) as db:
        db.execute("PRAGMA user_version = 999")
    db.close()
    sup = Supervisor(settings)
    before = set(asyncio.all_tasks())
    with pytest.raises(StoreError, match="newer than this program"):
        await sup.open()
    await _tasks_settle(before)
    assert not sup.opened and not sup.store.is_open
    assert {t for t in asyncio.all_tasks() if t not in before and not t.done()} == set()
    lock = DataDirLock(settings.data_dir)
    lock.acquire()  # released by the failed open: LockError otherwise
    lock.release()
    # The same data dir with the database set aside opens at once.
    settings.db_path.rename(settings.db_path.with_suffix(".newer"))
    async with Supervisor(settings) as again:
        assert again.opened and again.store.is_open
