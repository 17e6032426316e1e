"""The one SQLite database (data/supervisor.db): schema, versioned migrations, one writer, one reader.

All writes go through ``Store.writer`` (a single aiosqlite connection, so a single thread); reads that may be
slow (lists over 100k consoles) use ``Store.reader`` so they never stall the writer (WAL allows both).
Durability: WAL with synchronous=FULL; callers batch rows into one transaction to keep that cheap.

The file and its -wal and -shm files are 0600 (it holds plugins' env overrides: passwords); wider ones we own are
tightened (``notes`` says so). ``open()`` raises StoreError for a database it cannot write (read-only file,
immutable attribute, read-only mount): the supervisor refuses to run on it rather than forget what it is told.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import aiosqlite

from supervisor_tui.core.private import make_private, open_private, private_dir

# Each entry moves the schema from version i to i+1. Never edit a released entry: append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: plugins' desired state and the pids of what we spawned (orphan cleanup after a crash).
    """
    CREATE TABLE plugin_state (
        key TEXT PRIMARY KEY,
        desired TEXT NOT NULL CHECK (desired IN ('running', 'stopped')),
        pid INTEGER,
        pid_started REAL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE plugin_overrides (
        key TEXT PRIMARY KEY,
        env TEXT NOT NULL DEFAULT '{}',
        updated_at REAL NOT NULL
    );
    """,
    # 2: consoles, their heartbeat history and state transitions.
    """
    CREATE TABLE consoles (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        reported_state TEXT NOT NULL,
        system TEXT,
        last_activity REAL,
        last_error TEXT,
        current_job TEXT,
        token_hash TEXT,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        heartbeats INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX idx_consoles_state ON consoles(state);
    CREATE INDEX idx_consoles_last_seen ON consoles(last_seen DESC);
    CREATE INDEX idx_consoles_last_activity ON consoles(last_activity DESC);
    CREATE INDEX idx_consoles_name ON consoles(name);
    CREATE TABLE heartbeats (
        id INTEGER PRIMARY KEY,
        console_id TEXT NOT NULL REFERENCES consoles(id) ON DELETE CASCADE,
        received_at REAL NOT NULL,
        state TEXT NOT NULL,
        last_activity REAL,
        last_error TEXT,
        current_job TEXT,
        system TEXT
    );
    CREATE INDEX idx_heartbeats_console ON heartbeats(console_id, received_at);
    CREATE INDEX idx_heartbeats_received ON heartbeats(received_at);
    CREATE TABLE transitions (
        id INTEGER PRIMARY KEY,
        console_id TEXT NOT NULL REFERENCES consoles(id) ON DELETE CASCADE,
        from_state TEXT,
        to_state TEXT NOT NULL,
        at REAL NOT NULL,
        reason TEXT NOT NULL CHECK (reason IN ('heartbeat', 'timeout', 'register'))
    );
    CREATE INDEX idx_transitions_console ON transitions(console_id, at);
    CREATE INDEX idx_transitions_at ON transitions(at);
    """,
    # 3: consoles: the reported host name (search by name or host), and indices that let a state filter sorted
    # by last seen or name, the Spanish console API's stats query (count and latest activity by state) and a search by
    # name/host/id read only an index. idx_consoles_state is a prefix of the new state indices and
    # idx_consoles_name of the search index; idx_heartbeats_received goes because retention finds old
    # heartbeats by rowid (ids grow with time), which saves an index update on every heartbeat.
    """
    ALTER TABLE consoles ADD COLUMN hostname TEXT;
    DROP INDEX idx_consoles_state;
    DROP INDEX idx_consoles_name;
    DROP INDEX idx_heartbeats_received;
    CREATE INDEX idx_consoles_state_seen ON consoles(state, last_seen DESC);
    CREATE INDEX idx_consoles_state_activity ON consoles(state, last_activity);
    CREATE INDEX idx_consoles_state_name ON consoles(state, name);
    CREATE INDEX idx_consoles_search ON consoles(name, hostname, id);
    """,
    # 4: consoles: no index on last_seen. Every heartbeat moved the console in both (delete the old entry,
    # append a new one), most of the pages a group commit wrote; lists sorted by last seen are paged from the
    # console service's in-memory order instead, and only the page's rows are read.
    """
    DROP INDEX idx_consoles_last_seen;
    DROP INDEX idx_consoles_state_seen;
    """,
    # 5: search by name or host through a trigram index (FTS5): a search of 3 or more characters reads the
    # consoles that contain it instead of scanning every console's name and host. Its rows are keyed by
    # consoles.search_key, a stable integer set on insert (the rowid of a table without an INTEGER PRIMARY KEY
    # may change on VACUUM); triggers keep it in step, and heartbeats only touch it when a host name changes.
    """
    ALTER TABLE consoles ADD COLUMN search_key INTEGER;
    UPDATE consoles SET search_key = rowid;
    CREATE UNIQUE INDEX idx_consoles_search_key ON consoles(search_key);
    CREATE VIRTUAL TABLE consoles_search USING fts5(name, hostname, tokenize = 'trigram');
    INSERT INTO consoles_search (rowid, name, hostname) SELECT search_key, name, hostname FROM consoles;
    CREATE TRIGGER consoles_search_insert AFTER INSERT ON consoles BEGIN
        UPDATE consoles SET search_key = (SELECT IFNULL(MAX(search_key), 0) + 1 FROM consoles)
            WHERE rowid = new.rowid;
        INSERT INTO consoles_search (rowid, name, hostname)
            SELECT search_key, name, hostname FROM consoles WHERE rowid = new.rowid;
    END;
    CREATE TRIGGER consoles_search_update AFTER UPDATE OF name, hostname ON consoles
        WHEN old.name IS NOT new.name OR old.hostname IS NOT new.hostname BEGIN
        UPDATE consoles_search SET name = new.name, hostname = new.hostname WHERE rowid = new.search_key;
    END;
    CREATE TRIGGER consoles_search_delete AFTER DELETE ON consoles BEGIN
        DELETE FROM consoles_search WHERE rowid = old.search_key;
    END;
    """,
    # 6: the replica count an operator scaled a plugin to (NULL: the manifest's), remembered like a stop.
    """
    ALTER TABLE plugin_state ADD COLUMN replicas INTEGER;
    """,
    # 7: plugins registered over Redis (sent once, when a plugin starts): the message as it
    # was accepted, so after a restart the plugin comes back LOST and its next heartbeat restores its routes. By
    # key and node: one key may be served by several nodes of the fleet ('' for a plugin that announced itself).
    """
    CREATE TABLE fleet_registrations (
        key TEXT NOT NULL,
        node TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL,
        registered_at REAL NOT NULL,
        PRIMARY KEY (key, node)
    );
    """,
    # 8: no trigram search table. Searches are answered from the supervisor's memory (consoles/search.py) and
    # nothing reads consoles_search any more, while its triggers still wrote it on every registration and host
    # change; search_key existed only to key it.
    """
    DROP TRIGGER consoles_search_insert;
    DROP TRIGGER consoles_search_update;
    DROP TRIGGER consoles_search_delete;
    DROP TABLE consoles_search;
    DROP INDEX idx_consoles_search_key;
    ALTER TABLE consoles DROP COLUMN search_key;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


class StoreError(Exception):
    """The database cannot be opened or is newer than this program."""


class StoreUnreachable(StoreError):
    """The console store's server (PostgreSQL) cannot be reached or refuses us: check consoles.store."""


class Store:
    """Owns the SQLite file: opens it, migrates it, and hands out the writer and reader connections."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self.notes: list[str] = []  # permissions tightened by open()

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StoreError("store is not open")
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("store is not open")
        return self._reader

    @property
    def is_open(self) -> bool:
        return self._writer is not None

    async def open(self) -> None:
        try:
            self.notes = [n for n in (private_dir(self.path.parent), self._create_private()) if n]
            writer = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from exc
        self._writer = writer
        try:
            await writer.execute("PRAGMA journal_mode=WAL")
            await writer.execute("PRAGMA synchronous=FULL")
            await writer.execute("PRAGMA foreign_keys=ON")
            await writer.execute("PRAGMA busy_timeout=5000")
            await self._check_writable(writer)
            # SQLite gives -wal and -shm the database file's mode; ones left by an older version may be wider.
            self.notes += [n for n in (make_private(Path(f"{self.path}{s}")) for s in ("-wal", "-shm")) if n]
            await self._migrate(writer)
            reader = await aiosqlite.connect(self.path, isolation_level=None)
            self._reader = reader
            await reader.execute("PRAGMA busy_timeout=5000")
            await reader.execute("PRAGMA query_only=ON")
        except BaseException:
            await self.close()
            raise

    def _create_private(self) -> str | None:
        """Create the database file 0600 before SQLite does (it would follow the umask), or tighten it."""
        if self.path.exists():
            return make_private(self.path)
        os.close(open_private(self.path, os.O_RDWR))
        return None

    async def _check_writable(self, conn: aiosqlite.Connection) -> None:
        """SQLite opens a file it cannot write read-only without a word; a write that is rolled back finds out."""
        try:
            await conn.executescript("BEGIN IMMEDIATE; CREATE TABLE main.write_probe (x); ROLLBACK;")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                await conn.rollback()
            raise StoreError(
                f"database {self.path} cannot be written ({exc}): check the mode, owner and attributes (lsattr) of "
                "it and its -wal and -shm files, and that the file system is not mounted read-only"
            ) from exc

    async def _migrate(self, conn: aiosqlite.Connection) -> None:
        async with conn.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"database {self.path} has schema version {version}, newer than this program's "
                f"{SCHEMA_VERSION}: upgrade supervisor-tui"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            script = MIGRATIONS[target - 1]
            try:
                await conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={target};\nCOMMIT;")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    await conn.rollback()
                hint = ""
                if "fts5" in str(exc).lower() or "trigram" in str(exc).lower():
                    hint = " (this Python's SQLite lacks FTS5 or its trigram tokenizer: SQLite 3.34 or newer is needed)"
                raise StoreError(
                    f"cannot upgrade database {self.path} to schema version {target}: {exc}{hint}; "
                    f"it is left at version {target - 1}"
                ) from exc

    async def schema_version(self) -> int:
        async with self.reader.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def close(self) -> None:
        """Close both connections (aiosqlite's thread is not a daemon: a leaked one keeps the process alive)."""
        for conn in (self._reader, self._writer):
            if conn is not None:
                try:
                    await conn.close()
                except Exception:  # closing must always finish
                    pass
        self._reader = self._writer = None
