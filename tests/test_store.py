"""The SQLite store's migrations on real files: a newer database is refused, a failing migration says which one
and why, leaves the database at the version before, and the next start with a working migration goes on."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from supervisor_tui.core import store as store_module
from supervisor_tui.core.store import SCHEMA_VERSION, Store, StoreError


def version_of(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return int(db.execute("PRAGMA user_version").fetchone()[0])
    finally:
        db.close()


async def test_a_failing_migration_is_reported_and_changes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "supervisor.db"
    store = Store(path)
    await store.open()
    await store.close()
    assert version_of(path) == SCHEMA_VERSION

    # As on a Python whose SQLite has no FTS5: the next migration creates a table and then fails.
    broken = "CREATE TABLE half_done (x);\nCREATE VIRTUAL TABLE t USING fts5x(a);"
    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS, broken))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError) as err:
        await Store(path).open()
    message = str(err.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message and "no such module: fts5x" in message
    assert "SQLite 3.34 or newer" in message and f"left at version {SCHEMA_VERSION}" in message
    assert version_of(path) == SCHEMA_VERSION
    db = sqlite3.connect(path)
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() is None  # rolled back
    db.close()

    monkeypatch.setattr(store_module, "MIGRATIONS", (*store_module.MIGRATIONS[:-1], "CREATE TABLE done (x);"))
    fixed = Store(path)
    await fixed.open()
    assert await fixed.schema_version() == SCHEMA_VERSION + 1
    await fixed.close()


async def test_a_database_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "supervisor.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    db.close()
    with pytest.raises(StoreError, match="newer than this program"):
        await Store(path).open()
