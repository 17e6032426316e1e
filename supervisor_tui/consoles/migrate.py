"""``supervisor-tui consoles migrate --to postgresql://...``: copy the SQLite console store into PostgreSQL.

Copies consoles (with their token hashes), heartbeats and transitions in chunks, each chunk in one PostgreSQL
transaction together with how far it got (``console_migration``: per source database and table, the last
SQLite rowid copied). Interrupted, it goes on from there when run again; run again after it finished, it copies
nothing twice. History and transitions are appended, so they go on from the last row copied; consoles are
rows that change, so every run goes over all of them and writes a console only where the SQLite row is newer
(a later ``last_seen``) than PostgreSQL's: a console that spoke through a SQLite supervisor after an earlier run
is brought up to date, one that spoke through PostgreSQL's supervisors since is kept as it is, and so is one
registered there meanwhile. Removals are not copied. It takes the data dir's lock, so it refuses to run while a
supervisor runs on that data dir (its SQLite database must not change meanwhile).

    supervisor-tui consoles migrate --to postgresql://user:pw@host/db [--data-dir DIR] [--config FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from supervisor_tui.config import ConfigError, load_settings, masked_url
from supervisor_tui.consoles.models import ENGLISH_TO_SPANISH
from supervisor_tui.core.lock import DataDirLock, LockError
from supervisor_tui.core.store import StoreError

EXIT_USAGE = 2
CHUNK = 5000

_PROGRESS = """
CREATE TABLE IF NOT EXISTS console_migration (
  source TEXT NOT NULL,
  table_name TEXT NOT NULL,
  last_rowid BIGINT NOT NULL,
  PRIMARY KEY (source, table_name)
)
"""
_PROGRESS_AT = (
    "INSERT INTO console_migration (source, table_name, last_rowid) VALUES ($1, $2, $3) "
    "ON CONFLICT (source, table_name) DO UPDATE SET last_rowid = excluded.last_rowid"
)
_FORGET = "DELETE FROM console_migration WHERE source = $1 AND table_name = $2"
# now() is the transaction's start: the consoles of a chunk that its own transaction inserted or updated.
_WRITTEN_NOW = "SELECT count(*) FROM consolas WHERE console_id = ANY($1::text[]) AND updated_at = now()"
# Console rows change in place (their rowid stays): every run goes over all of them, and counts the ones it wrote.
# History and transitions are appended: a run goes on from the last row copied.
_CHANGING = "consoles"
# SQLite reads: rowid order, after the last one copied. Times stay Unix seconds until PostgreSQL's to_timestamp.
_READS = {
    "consoles": (
        "SELECT rowid, id, name, state, reported_state, system, hostname, last_activity, last_error, current_job, "
        "token_hash, first_seen, last_seen, heartbeats FROM consoles WHERE rowid > ? ORDER BY rowid LIMIT ?"
    ),
    "heartbeats": (
        "SELECT id, console_id, received_at, state, last_activity, last_error, current_job, system FROM heartbeats "
        "WHERE id > ? ORDER BY id LIMIT ?"
    ),
    "transitions": (
        "SELECT id, console_id, from_state, to_state, at, reason FROM transitions WHERE id > ? ORDER BY id LIMIT ?"
    ),
}
# What a console's newer SQLite row brings to PostgreSQL's.
_COPIED_COLUMNS = (
    "nombre", "estado", "reported_state", "sistema", "hostname", "reported_activity", "ultima_actividad",
    "ultimo_error", "video_en_proceso", "token_hash", "last_seen", "heartbeats",
)  # fmt: skip
_WRITES = {
    "consoles": (
        "INSERT INTO consolas (id, console_id, nombre, estado, reported_state, sistema, hostname, reported_activity, "
        "ultimo_error, video_en_proceso, token_hash, created_at, last_seen, ultima_actividad, updated_at, heartbeats) "
        "VALUES (consolas_uuid($1), $1, $2, $3, $4, $5::jsonb, $6, to_timestamp($7), $8::jsonb, $9, $10, "
        "to_timestamp($11), to_timestamp($12), to_timestamp($12), now(), $13) ON CONFLICT (console_id) DO UPDATE SET "
        "estado_anterior = consolas.estado, updated_at = now(), "
        + ", ".join(f"{column} = excluded.{column}" for column in _COPIED_COLUMNS)
        + " WHERE consolas.last_seen < excluded.last_seen"
    ),
    # History of a console that is not there (removed meanwhile) is skipped, not an error.
    "heartbeats": (
        "INSERT INTO console_heartbeats (console_id, received_at, state, last_activity, last_error, current_job, "
        "system) SELECT $1, to_timestamp($2), $3, to_timestamp($4), $5::jsonb, $6, $7::jsonb "
        "WHERE EXISTS (SELECT 1 FROM consolas WHERE console_id = $1)"
    ),
    "transitions": (
        "INSERT INTO console_transitions (console_id, from_state, to_state, at, reason) "
        "SELECT $1, $2, $3, to_timestamp($4), $5 WHERE EXISTS (SELECT 1 FROM consolas WHERE console_id = $1)"
    ),
}


def _console_row(r: tuple[Any, ...]) -> tuple[Any, ...]:
    (_, cid, name, state, reported, system, host, activity, error, job, token_hash, first, last, count) = r
    return (cid, name, ENGLISH_TO_SPANISH[state], reported, system, host, activity, error, job, token_hash, first, last,
            count)  # fmt: skip


_ROWS: dict[str, Callable[[tuple[Any, ...]], tuple[Any, ...]]] = {
    "consoles": _console_row,
    "heartbeats": lambda r: tuple(r[1:]),
    "transitions": lambda r: tuple(r[1:]),
}


async def migrate(
    db_path: Path,
    dsn: str,
    chunk: int = CHUNK,
    report: Callable[[str], None] = lambda line: None,
    stop_after_chunks: int | None = None,
) -> dict[str, int]:
    """Copy what is not copied yet from the SQLite database at ``db_path`` (an absolute path that exists);
    returns the rows copied per table by this run. ``stop_after_chunks`` ends
    the run early (as an interruption would: what was committed stays)."""
    import asyncpg

    from supervisor_tui.consoles.pg_store import PgConsoleStore

    target = PgConsoleStore(dsn)
    await target.open(setting="--to")  # migrates PostgreSQL's schema; StoreUnreachable names the DSN masked
    await target.close()
    source = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    copied = {table: 0 for table in _READS}
    chunks = 0
    try:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(_PROGRESS)
            key = str(db_path)  # absolute (settings resolve data.dir)
            for table, read in _READS.items():
                while True:
                    last = await conn.fetchval(
                        "SELECT last_rowid FROM console_migration WHERE source = $1 AND table_name = $2", key, table
                    )
                    rows = source.execute(read, (last or 0, chunk)).fetchall()
                    if not rows:
                        if table == _CHANGING:
                            await conn.execute(_FORGET, key, table)
                        break
                    async with conn.transaction():
                        await conn.executemany(_WRITES[table], [_ROWS[table](r) for r in rows])
                        rows_written = len(rows)
                        if table == _CHANGING:  # inserted or brought up to date by this transaction
                            rows_written = await conn.fetchval(_WRITTEN_NOW, [r[1] for r in rows])
                        await conn.execute(_PROGRESS_AT, key, table, int(rows[-1][0]))
                    copied[table] += rows_written
                    report(f"{table}: {copied[table]:,} copied")
                    chunks += 1
                    if stop_after_chunks is not None and chunks >= stop_after_chunks:
                        return copied
        finally:
            await conn.close()
    except sqlite3.Error as exc:
        raise StoreError(f"cannot read {db_path}: {exc}") from None
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreError(f"migrating to {masked_url(dsn)} failed: {str(exc).splitlines()[0]}; run it again") from None
    finally:
        source.close()
    return copied


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="consoles_command", required=True)
    p = actions.add_parser("migrate", help="copy the SQLite console store into PostgreSQL (resumable)")
    p.add_argument("--to", required=True, metavar="DSN", help="postgresql://user:password@host:port/database")
    p.add_argument("--config", metavar="PATH", help="settings file (default: ./supervisor.toml if present)")
    p.add_argument("--data-dir", metavar="DIR", help="where the SQLite database is (data.dir)")


def main(args: argparse.Namespace) -> int:
    dsn = str(args.to)
    if not dsn.startswith(("postgresql://", "postgres://")):
        sys.stderr.write(f"supervisor-tui: --to must be a postgresql:// DSN, got {masked_url(dsn)[:80]!r}\n")
        return EXIT_USAGE
    try:
        overrides = {"data.dir": args.data_dir} if getattr(args, "data_dir", None) else {}
        settings = load_settings(getattr(args, "config", None), overrides=overrides)
    except ConfigError as exc:
        sys.stderr.write(f"supervisor-tui: {exc}\n")
        return EXIT_USAGE
    if not settings.db_path.exists():
        sys.stderr.write(f"supervisor-tui: no SQLite console store at {settings.db_path}: nothing to migrate\n")
        return EXIT_USAGE
    lock = DataDirLock(settings.data_dir)
    try:
        lock.acquire()  # no supervisor writes the SQLite database while it is copied
        copied = asyncio.run(migrate(settings.db_path, dsn, report=lambda line: print(line, flush=True)))
    except (LockError, StoreError) as exc:
        sys.stderr.write(f"supervisor-tui: {exc}\n")
        return EXIT_USAGE
    finally:
        lock.release()
    total = ", ".join(f"{n:,} {table}" for table, n in copied.items())
    print(f"migrated {settings.db_path} to {masked_url(dsn)}: {total} copied by this run")
    return 0
