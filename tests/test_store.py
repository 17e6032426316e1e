"""The SQLite store on real files: migrations (a newer database is refused, a failing migration says which one
and why, leaves the database at the version before, and the next start with a working migration goes on) and
the modes of its files."""

from __future__ import annotations

import os
import sqlite3
import stat
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


async def test_the_database_files_are_0600_whatever_the_umask_and_wider_ones_are_tightened(tmp_path: Path) -> None:
    path = tmp_path / "data" / "supervisor.db"
    old = os.umask(0o022)
    try:
        store = Store(path)
        await store.open()
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {f.name: "0o600" for f in files}
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700 and store.notes == []
        await store.close()

        path.chmod(0o644)  # as an older version left it
        store = Store(path)
        await store.open()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert store.notes == [f"{path} was mode 0644: tightened to 0600"]
        await store.close()
    finally:
        os.umask(old)
