"""A throwaway PostgreSQL for bench/heartbeats.py (``--pg-cluster``), set up as docs/consoles.md advises, and what
it did while the bench ran: checkpoints and autovacuums from its log, wait events sampled from pg_stat_activity.

    cluster = BenchCluster.start()          # initdb + pg_ctl in a temp dir, on a free port (tests/fixtures/postgres.py)
    dsn = cluster.dsn
    with cluster.sampling():                # pg_stat_activity every 10 ms while the block runs
        ...
    print(cluster.report())                 # checkpoints, autovacuums, wait events
    cluster.destroy()
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

# What docs/consoles.md ("Running PostgreSQL for the console store") tells an operator, and why. Durability
# stays: fsync and synchronous_commit on (the fixture's defaults), every 2xx after its COMMIT's WAL flush.
OPERATOR_SETTINGS: dict[str, str] = {
    # A checkpoint in the middle of the load writes every dirty page and then a full page image per page at
    # its first change after it: the WAL of a heartbeat batch grows several times, its fsync with it (the p99
    # spikes). Checkpoints by time, far apart, and WAL room enough that the load never forces one.
    "checkpoint_timeout": "15min",
    "max_wal_size": "8GB",
    "min_wal_size": "1GB",
    "checkpoint_completion_target": "0.9",
    # The full page images that remain cost less to write and to fsync compressed.
    "wal_compression": "lz4",
    # The whole consoles table and its indexes stay in memory (100,000 consoles are ~100 MB with indexes).
    "shared_buffers": "512MB",
    # One batch of a few hundred heartbeats is a few hundred kB of WAL: it fits the buffers without a flush
    # in the middle of the statement.
    "wal_buffers": "64MB",
    # Profiling: every checkpoint and every autovacuum in the server's log.
    "log_checkpoints": "on",
    "log_autovacuum_min_duration": "0",
    "track_io_timing": "on",
}


class BenchCluster:
    """A PgCluster with the operator settings, one database, and a sampler of its sessions' wait events."""

    def __init__(self, cluster: Any, dsn: str) -> None:
        self.cluster = cluster
        self.dsn = dsn
        self.waits: Counter[str] = Counter()
        self.samples = 0

    @classmethod
    def start(cls, **extra: str) -> BenchCluster:
        from fixtures.postgres import PgCluster

        cluster = PgCluster.create(**{**OPERATOR_SETTINGS, **extra})
        return cls(cluster, cluster.new_database())

    def recycle_wal(self) -> int:
        """Give the cluster the WAL files of a server that has run past its first checkpoints; returns how many
        are ready for reuse.

        A new cluster has one WAL file. Every 16 MB of WAL it creates the next and fills it with zeros (so that
        its later fdatasyncs need no metadata), and every COMMIT waits meanwhile: ~40 ms, about every 5 s at
        the heartbeat rates measured here, both batches in flight at once (most of a run's p99). A server in
        service reuses the files its checkpoints freed instead (as many as min_wal_size holds). So, before the
        runs: that many WAL files, then a CHECKPOINT, which recycles them all."""
        segments = int(
            self.cluster.psql(
                "SELECT (SELECT setting::bigint * 1048576 FROM pg_settings WHERE name = 'min_wal_size') "
                "/ (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
            ).strip()
        )
        self.cluster.psql(
            f"DO $$ BEGIN FOR i IN 1..{segments} LOOP "
            "PERFORM pg_logical_emit_message(false, 'bench', 'wal'); PERFORM pg_switch_wal(); END LOOP; END $$"
        )
        self.cluster.psql("CHECKPOINT")
        current = self.cluster.psql("SELECT pg_walfile_name(pg_current_wal_lsn())").strip()
        wal = (Path(self.cluster.data) / "pg_wal").iterdir()
        return sum(1 for f in wal if re.fullmatch(r"[0-9A-F]{24}", f.name) and f.name > current)

    def settings_line(self) -> str:
        rows = self.cluster.psql(
            "SELECT string_agg(name || '=' || current_setting(name), ', ' ORDER BY name) FROM pg_settings "
            "WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_wal_size', 'checkpoint_timeout', "
            "'wal_buffers', 'wal_compression', 'full_page_writes')"
        )
        return str(rows).strip()

    @property
    def log(self) -> Path:
        return Path(self.cluster.root) / "server.log"

    @contextlib.contextmanager
    def sampling(self, interval: float = 0.01) -> Iterator[None]:
        """Count the wait events of client sessions (and the WAL writer, checkpointer...) while the block runs."""
        stop = threading.Event()

        async def sample() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.dsn)
            try:
                while not stop.is_set():
                    rows = await conn.fetch(
                        "SELECT backend_type, state, wait_event_type, wait_event FROM pg_stat_activity "
                        "WHERE pid <> pg_backend_pid() AND (state IS NULL OR state <> 'idle')"
                    )
                    self.samples += 1
                    for r in rows:
                        what = f"{r[0]}: {r[2] or 'CPU'}/{r[3] or '-'}"
                        self.waits[what] += 1
                    await asyncio.sleep(interval)
            finally:
                await conn.close()

        thread = threading.Thread(target=lambda: asyncio.run(sample()), daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(10)

    def report(self) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        checkpoints = re.findall(r"checkpoint complete: .*", text)
        vacuums = re.findall(r"automatic (?:vacuum|analyze) of table \"([^\"]+)\"", text)
        lines = [f"PostgreSQL log ({self.log}): {len(checkpoints)} checkpoints, {len(vacuums)} autovacuum/analyze runs"]
        lines += [f"  {c[:160]}" for c in checkpoints[-5:]]
        for table, n in Counter(vacuums).most_common(5):
            lines.append(f"  autovacuum/analyze {table}: {n}")
        if self.samples:
            lines.append(f"wait events while heartbeats ran on PostgreSQL ({self.samples} samples, share of samples):")
            for what, n in self.waits.most_common(10):
                lines.append(f"  {what:60} {n / self.samples:6.2f}")
        return "\n".join(lines)

    def destroy(self) -> None:
        self.cluster.destroy()
