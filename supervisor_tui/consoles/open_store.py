"""The console store ``consoles.store`` names: the supervisor's SQLite database, or a PostgreSQL DSN."""

from __future__ import annotations

from supervisor_tui.config import Settings
from supervisor_tui.consoles.console_store import ConsoleStore
from supervisor_tui.consoles.sqlite_store import SqliteConsoleStore
from supervisor_tui.core.store import Store


async def open_console_store(settings: Settings, db: Store) -> ConsoleStore:
    """The opened store; StoreError (one line, no password) when PostgreSQL cannot be reached or migrated."""
    where = settings.consoles.store
    if where == "sqlite":
        return SqliteConsoleStore(db)
    # Only a supervisor configured for PostgreSQL loads its driver.
    from supervisor_tui.consoles.pg_store import PgConsoleStore

    store = PgConsoleStore(where)
    await store.open()
    return store
