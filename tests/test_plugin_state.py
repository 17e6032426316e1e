"""What the supervisor remembers per plugin, on a real SQLite file: desired states, environment overrides and
spawned pids survive reopening the store; a purged key is forgotten; an override that does not decode is skipped."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from supervisor_tui.core.plugin_state import PluginStateStore
from supervisor_tui.core.store import Store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "supervisor.db"


async def opened(path: Path) -> tuple[Store, PluginStateStore]:
    store = Store(path)
    await store.open()
    return store, PluginStateStore(store)


def pids(path: Path) -> dict[str, tuple[int | None, float | None]]:
    conn = sqlite3.connect(path)
    try:
        return {k: (p, s) for k, p, s in conn.execute("SELECT key, pid, pid_started FROM plugin_state")}
    finally:
        conn.close()


async def test_desired_states_and_overrides_survive_reopening(db: Path) -> None:
    store, state = await opened(db)
    try:
        assert await state.load() == ({}, {})
        await state.save_desired("web", "running")
        await state.save_desired("web", "stopped")
        await state.save_desired("api", "running")
        await state.save_overrides("web", {"TOKEN": "s3cret", "MODE": "fast"})
    finally:
        await store.close()
    store, state = await opened(db)
    try:
        desired, overrides = await state.load()
        assert desired == {"web": "stopped", "api": "running"}
        assert overrides == {"web": {"MODE": "fast", "TOKEN": "s3cret"}}
    finally:
        await store.close()


async def test_a_spawned_pid_is_kept_until_its_process_exits(db: Path) -> None:
    store, state = await opened(db)
    try:
        await state.save_pid("web", "running", 4242, 1700000000.5)  # first seen: its desired state comes along
        assert pids(db) == {"web": (4242, 1700000000.5)}
        assert (await state.load())[0] == {"web": "running"}
        await state.save_desired("web", "stopped")
        await state.save_pid("web", "running", 4343, 1700000001.0)  # a respawn keeps the operator's choice
        assert (await state.load())[0] == {"web": "stopped"} and pids(db) == {"web": (4343, 1700000001.0)}
        await state.clear_pid("web")
        assert pids(db) == {"web": (None, None)}
    finally:
        await store.close()
    await state.clear_pid("web")  # an exit reported after the store closed changes nothing and does not fail


async def test_forget_drops_everything_about_a_key(db: Path) -> None:
    store, state = await opened(db)
    try:
        await state.save_desired("web", "running")
        await state.save_overrides("web", {"A": "1"})
        await state.save_desired("api", "stopped")
        await state.save_replicas("web", 3, "running")
        await state.save_pid("web#2", "running", 4242, 1700000000.0)  # a replica's own row
        await state.save_pid("web_x#1", "running", 4343, 1700000000.0)  # another key's replica
        await state.forget("web")
        assert await state.load() == ({"api": "stopped", "web_x#1": "running"}, {})
        assert await state.load_replicas() == {}
    finally:
        await store.close()


async def test_an_override_that_does_not_decode_is_skipped(db: Path) -> None:
    store, state = await opened(db)
    try:
        await state.save_overrides("good", {"A": "1"})
        for key, env in (("bad", "{not json"), ("list", "[1, 2]")):
            await store.writer.execute(
                "INSERT INTO plugin_overrides (key, env, updated_at) VALUES (?, ?, 0)", (key, env)
            )
        assert (await state.load())[1] == {"good": {"A": "1"}}
    finally:
        await store.close()
