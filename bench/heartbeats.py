"""Heartbeat ingest benchmark: durable heartbeats/s and latency against a plain Starlette "hello" in the same run.

    python bench/heartbeats.py [--duration 5] [--connections 32] [--consoles 100000] [--rounds 3]
    python bench/heartbeats.py --rounds 4 --against /tmp/old-checkout     # before/after, interleaved
    python bench/heartbeats.py --rounds 2 --store postgresql://user:pw@127.0.0.1:5432/db   # both stores
    python bench/heartbeats.py --rounds 3 --pg-cluster        # both stores, on a throwaway PostgreSQL it starts

Starts the real console ingest (SQLite in WAL with synchronous=FULL, group-commit writer, raw ASGI app on the
same uvicorn setup the supervisor uses) in its own process, registers consoles (a few over HTTP, the rest
bulk-loaded into the database before the server starts), drives seed 004's heartbeat body at many console ids
with wrk (each request carries its console's token), and counts only 2xx answers. Then it measures list,
filter and stats queries over all registered consoles and the server process's RSS. Loopback only, bounded.

With ``--rounds N`` the hello and heartbeat runs alternate N times (ratios per round, then medians): on a shared
machine one pair of runs says little. ``--against DIR`` adds a second heartbeat server from another checkout of
the project (e.g. ``git archive <commit> | tar -x -C DIR``), with its own database, in the same rounds (with
``--pg-cluster`` also on PostgreSQL: its own database of the cluster, migrated by that checkout).
``--store DSN`` adds a heartbeat server of this checkout on the PostgreSQL console store at DSN (an empty
database: the bench migrates and loads it), in the same rounds, and measures the queries on both stores.
``--pg-cluster`` does the same on a throwaway cluster it starts in a temp dir (initdb + pg_ctl, bench/pg_cluster.py,
with the settings docs/consoles.md advises; ``--pg-setting KEY=VALUE`` overrides one; its WAL files made ready for
reuse first, as on a server in service: BenchCluster.recycle_wal) and reports what the server did meanwhile:
checkpoints and autovacuums from its log, wait events sampled from pg_stat_activity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import hashlib
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEED_BODY = {
    "estado": "ocupada",
    "sistema": {
        "hostname": "mi-servidor",
        "platform": "win32",
        "arch": "x64",
        "cpus": 8,
        "totalMemory": 16,
        "freeMemory": 8,
        "uptime": 1440,
        "nodeVersion": "v18.x.x",
    },
    "ultimaActividad": "2025-12-03T10:30:00.000Z",
    "ultimoError": None,
    "videoEnProceso": "Video Historia 1 (2/5)",
}
ADMIN = "bench-admin-token"
WRK = shutil.which("wrk") or "/usr/bin/wrk"


# -- server processes ------------------------------------------------------------------------------------------
def _announce(port_file: str, port: int) -> None:
    """Tell the parent which port the server got."""
    Path(port_file).write_text(str(port))


async def _serve_consoles(data_dir: str, port_file: str) -> None:
    from supervisor_tui.config import load_settings
    from supervisor_tui.consoles.service import ConsoleService
    from supervisor_tui.core.events import EventBus
    from supervisor_tui.core.logs import LogHub
    from supervisor_tui.core.store import Store
    from supervisor_tui.server.consoles_api import ConsolesAPI
    from supervisor_tui.server.limits import ConnectionLimits
    from supervisor_tui.server.serve import HttpServer

    # The bench registers its HTTP consoles from one address as fast as it can: no registration rate limit.
    overrides: dict[str, object] = {
        "data.dir": data_dir,
        "consoles.register_rate": 0,
        "consoles.register_rate_global": 0,
    }
    console_store = os.environ.get("BENCH_CONSOLES_STORE")
    if console_store:
        overrides["consoles.store"] = console_store
    settings = load_settings(env={}, overrides=overrides, base_dir=Path(data_dir))
    bus = EventBus()
    store = Store(settings.db_path)
    await store.open()
    if console_store:
        from supervisor_tui.consoles.open_store import open_console_store

        service = ConsoleService(await open_console_store(settings, store), bus, settings, LogHub(bus, None))
    else:
        service = ConsoleService(store, bus, settings, LogHub(bus, None))
    await service.start()
    gc.collect()  # as headless.serve does once started
    gc.freeze()
    server = HttpServer()
    api = ConsolesAPI(service, settings, ADMIN)
    # As the runtime serves it: heartbeats without ASGI where fast_http can (--asgi-only: through ASGI).
    # With the runtime's connection limits too (header caps and timeouts, connection cap, loopback Host check).
    fast = None if os.environ.get("BENCH_ASGI_ONLY") else api
    _, port = await server.start(api, "127.0.0.1", 0, fast=fast, limits=ConnectionLimits.from_settings(settings))
    _announce(port_file, port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop()
    await service.stop()
    await store.close()


async def _serve_hello(port_file: str) -> None:
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from supervisor_tui.server.serve import HttpServer

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    # Any path, any method: the baseline gets exactly the requests the heartbeat run gets (same wrk script).
    app = Starlette(routes=[Route("/{path:path}", hello, methods=["GET", "POST"])])
    server = HttpServer()
    _, port = await server.start(app, "127.0.0.1", 0)
    _announce(port_file, port)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop()


def _run_loop(coro: object) -> None:
    try:
        import uvloop

        uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        asyncio.run(coro)  # type: ignore[arg-type]


class Proc:
    """A server subprocess of this script (or of ``script``: the same file in another checkout)."""

    def __init__(self, *args: str, script: str = __file__, env: dict[str, str] | None = None) -> None:
        self.port_file = tempfile.mktemp(prefix="bench-port-")
        self.proc = subprocess.Popen(
            [sys.executable, script, *args, self.port_file], start_new_session=True, env={**os.environ, **(env or {})}
        )
        deadline = time.monotonic() + 60
        while not (os.path.exists(self.port_file) and Path(self.port_file).read_text()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("bench: server process did not start")
            time.sleep(0.05)
        self.port = int(Path(self.port_file).read_text())
        self.url = f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        import psutil

        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.unlink(self.port_file)


# -- wrk -------------------------------------------------------------------------------------------------------
def _wrk(url: str, duration: float, connections: int, script: str | None) -> dict[str, float]:
    cmd = [WRK, "-t1", f"-c{connections}", f"-d{duration:g}s", "--latency", "--timeout", "5s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"(\d+) requests in ([\d.]+)(\w+)", out).group(1))  # type: ignore[union-attr]
    secs_m = re.search(r"requests in ([\d.]+)(m?s)", out)
    assert secs_m
    secs = float(secs_m.group(1)) / (1000.0 if secs_m.group(2) == "ms" else 1.0)
    non2xx_m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors_m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non2xx = int(non2xx_m.group(1)) if non2xx_m else 0

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return {
        "ok": total - non2xx,
        "non2xx": non2xx,
        "socket_errors": sum(int(x) for x in errors_m.groups()) if errors_m else 0,
        "rate": (total - non2xx) / secs,
        "p50": pct("50"),
        "p99": pct("99"),
    }


def _lua(consoles: list[tuple[str, str]], path: str) -> None:
    body = json.dumps(SEED_BODY).replace("\\", "\\\\").replace("'", "\\'")
    ids = ",".join(f'"{cid}"' for cid, _ in consoles)
    toks = ",".join(f'"Bearer {tok}"' for _, tok in consoles)
    Path(path).write_text(
        f"""
local ids = {{{ids}}}
local toks = {{{toks}}}
local n = #ids
local body = '{body}'
local i = math.random(n)
request = function()
  i = (i % n) + 1
  return wrk.format("POST", "/api/consolas/" .. ids[i] .. "/heartbeat",
    {{["Content-Type"] = "application/json", ["Authorization"] = toks[i]}}, body)
end
"""
    )


# -- setup -----------------------------------------------------------------------------------------------------
def _bulk_consoles(db_path: Path, start: int, count: int) -> list[tuple[str, str]]:
    """Insert consoles straight into the (migrated) database; token i is "tok-<i>"."""
    states = ("active", "busy", "idle", "error", "inactive")
    now = time.time()
    rows = []
    out = []
    for i in range(start, start + count):
        cid = f"00000000-0000-4000-8000-{i:012d}"
        tok = f"tok-{i}"
        state = states[i % 5]
        system = json.dumps({**SEED_BODY["sistema"], "hostname": f"host-{i}"})  # type: ignore[dict-item]
        last = now - (i % 500)
        rows.append(
            (
                cid,
                f"Consola {i}",
                state,
                state,
                system,
                f"host-{i}",
                last - 5,
                hashlib.sha256(tok.encode()).hexdigest(),
                now - 86400,
                last,
                f"host-{i}",
            )
        )
        out.append((cid, tok))
    conn = sqlite3.connect(db_path)
    conn.executemany(
        "INSERT INTO consoles (id, name, state, reported_state, system, hostname, last_activity, token_hash, "
        "first_seen, last_seen, heartbeats) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
        [r[:10] for r in rows],
    )
    conn.commit()
    conn.close()
    return out


def _bulk_consoles_pg(dsn: str, start: int, count: int, root: Path = ROOT) -> list[tuple[str, str]]:
    """The same consoles as _bulk_consoles, loaded (COPY) into the PostgreSQL store at ``dsn`` migrated with the
    schema of the checkout at ``root``."""
    import asyncpg

    from supervisor_tui.consoles.models import ENGLISH_TO_SPANISH

    states = ("active", "busy", "idle", "error", "inactive")
    now = time.time()
    rows, out = [], []
    for i in range(start, start + count):
        cid = f"00000000-0000-4000-8000-{i:012d}"
        tok = f"tok-{i}"
        state = states[i % 5]
        system = json.dumps({**SEED_BODY["sistema"], "hostname": f"host-{i}"})  # type: ignore[dict-item]
        last = now - (i % 500)
        rows.append(
            (
                __import__("uuid").UUID(cid),
                cid,
                f"Consola {i}",
                ENGLISH_TO_SPANISH[state],
                state,
                system,
                f"host-{i}",
                _dt(last - 5),
                hashlib.sha256(tok.encode()).hexdigest(),
                _dt(now - 86400),
                _dt(last),
            )
        )
        out.append((cid, tok))

    _migrate(dsn, root)

    async def load() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.copy_records_to_table(
                "consolas",
                records=rows,
                columns=[
                    "id",
                    "console_id",
                    "nombre",
                    "estado",
                    "reported_state",
                    "sistema",
                    "hostname",
                    "ultima_actividad",
                    "token_hash",
                    "created_at",
                    "last_seen",
                ],
            )
            await conn.execute("VACUUM ANALYZE consolas")
        finally:
            await conn.close()

    asyncio.run(load())
    return out


def _dt(ts: float) -> object:
    import datetime

    return datetime.datetime.fromtimestamp(ts, datetime.UTC)


def _migrate(where: Path | str, root: Path = ROOT) -> None:
    """Create the SQLite database at path ``where`` or the PostgreSQL store at DSN ``where`` with the schema of the
    checkout at ``root`` (in a child: its own imports)."""
    if isinstance(where, Path):
        store = f"from supervisor_tui.core.store import Store\nopen_store = lambda: Store(Path({str(where)!r}))\n"
    else:
        store = "from supervisor_tui.consoles.pg_store import PgConsoleStore\n"
        store += f"open_store = lambda: PgConsoleStore({where!r})\n"
    code = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        f"sys.path.insert(0, {str(root)!r})\n" + store + "async def go():\n"
        "    store = open_store()\n"
        "    await store.open()\n"
        "    await store.close()\n"
        "asyncio.run(go())\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def _register_http(url: str, n: int) -> list[tuple[str, str]]:
    import httpx

    out = []
    with httpx.Client(base_url=url) as c:
        for i in range(n):
            cid = f"10000000-0000-4000-8000-{i:012d}"
            r = c.post(
                "/api/consolas/registrar",
                json={"id": cid, "nombre": f"Consola http-{i}", "estado": "esperando", "sistema": SEED_BODY["sistema"]},
            )
            r.raise_for_status()
            out.append((cid, r.json()["token"]))
    return out


def _query_p99(url: str, paths: list[str], rounds: int) -> dict[str, tuple[float, float]]:
    import httpx

    out = {}
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as c:
        for path in paths:
            c.get(path).raise_for_status()  # warm
            times = []
            for _ in range(rounds):
                t = time.perf_counter()
                c.get(path).raise_for_status()
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            out[path] = (statistics.median(times), times[int(len(times) * 0.99) - 1])
    return out


class _Target:
    """One heartbeat server under test: its checkout, database, process and wrk script."""

    def __init__(self, name: str, root: Path, work: Path, a: argparse.Namespace, store: str | None = None) -> None:
        self.name = name
        self.store = store  # a PostgreSQL DSN, or None: SQLite
        data = work / name / "data"
        data.mkdir(parents=True)
        self.db = data / "supervisor.db"
        _migrate(self.db, root)
        where = "PostgreSQL" if store else str(self.db)
        print(f"{name}: loading {a.consoles - a.http_registrations:,} consoles into {where} ...", flush=True)
        if store:
            bulk = _bulk_consoles_pg(store, 0, a.consoles - a.http_registrations, root)
        else:
            bulk = _bulk_consoles(self.db, 0, a.consoles - a.http_registrations)
        env = {"BENCH_CONSOLES_STORE": store} if store else None
        self.server = Proc("--serve-consoles", str(data), script=str(root / "bench" / "heartbeats.py"), env=env)
        t = time.perf_counter()
        via_http = _register_http(self.server.url, a.http_registrations)
        self.reg_rate = a.http_registrations / (time.perf_counter() - t)
        self.hot = via_http + bulk[: max(0, a.hot_consoles - len(via_http))]
        self.script = str(work / name / "heartbeat.lua")
        _lua(self.hot, self.script)
        self.runs: list[dict[str, float]] = []
        self.wal_bytes = 0  # WAL written while this target's runs went on (PostgreSQL)
        self.updates = ""  # its consolas updates, and how many of them were HOT


def _pg_value(dsn: str, sql: str) -> object:
    import asyncpg

    async def value() -> object:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(value())


def _wal_lsn(dsn: str) -> int:
    """The cluster's current WAL position in bytes (one server runs at a time: the difference is its WAL)."""
    return int(str(_pg_value(dsn, "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint")))


def _pg_count(dsn: str, table: str) -> int:
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
        finally:
            await conn.close()

    return asyncio.run(count())


def _median(runs: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--consoles", type=int, default=100_000, help="registered consoles for the query/RSS part")
    p.add_argument("--hot-consoles", type=int, default=10_000, help="distinct consoles the heartbeat load cycles over")
    p.add_argument("--http-registrations", type=int, default=500)
    p.add_argument("--rounds", type=int, default=1, help="hello/heartbeat runs, alternating; medians are reported")
    p.add_argument("--against", type=Path, help="another checkout of the project, measured in the same rounds")
    p.add_argument("--asgi-only", action="store_true", help="heartbeats through uvicorn's ASGI path")
    p.add_argument("--store", help="a PostgreSQL DSN (empty database): also measure this checkout on it")
    p.add_argument("--pg-cluster", action="store_true", help="as --store, on a throwaway PostgreSQL started here")
    p.add_argument("--pg-setting", action="append", default=[], help="KEY=VALUE for --pg-cluster's postgresql.conf")
    a = p.parse_args()
    cluster = None
    if a.pg_cluster:
        from pg_cluster import BenchCluster

        if a.store:
            raise SystemExit("bench: --store and --pg-cluster are exclusive")
        settings = dict(kv.split("=", 1) for kv in a.pg_setting)
        cluster = BenchCluster.start(**settings)
        a.store = cluster.dsn
        print(f"PostgreSQL cluster in {cluster.cluster.root}: {cluster.settings_line()}", flush=True)
    try:
        return _run(a, cluster)
    finally:
        if cluster is not None:
            cluster.destroy()


def _run(a: argparse.Namespace, cluster: object | None) -> int:
    if a.asgi_only:
        os.environ["BENCH_ASGI_ONLY"] = "1"  # read by the server processes this script starts
    if not os.path.exists(WRK):
        raise SystemExit("bench: wrk is not installed (Debian: apt-get install wrk)")
    if a.against is not None and not (a.against / "bench" / "heartbeats.py").exists():
        raise SystemExit(f"bench: {a.against} has no bench/heartbeats.py")
    work = Path(tempfile.mkdtemp(prefix="bench-heartbeats-"))
    targets: list[_Target] = []
    hello: Proc | None = None
    hello_runs: list[dict[str, float]] = []
    try:
        targets.append(_Target("this", ROOT, work, a))
        if a.against is not None:
            targets.append(_Target("against", a.against.resolve(), work, a))
        if a.store:
            targets.append(_Target("postgresql", ROOT, work, a, store=a.store))
        if a.against is not None and cluster is not None:  # the other checkout on its own database of the cluster
            against_db = cluster.cluster.new_database()  # type: ignore[attr-defined]
            targets.append(_Target("against-postgresql", a.against.resolve(), work, a, store=against_db))
        this = targets[0]
        if cluster is not None:
            ready = cluster.recycle_wal()  # type: ignore[attr-defined]
            print(f"PostgreSQL: {ready} WAL files ready for reuse, as on a server past its first checkpoints")
        # The baseline in the same run, driven by the same wrk script (same bodies, paths and headers).
        hello = Proc("--serve-hello")
        _wrk(hello.url, 1, a.connections, this.script)  # warm
        for t in targets:
            # Warm up until every hot console has reported once: its first heartbeat changes the state, host and
            # activity the bulk load gave it (indices, a transition, a NOTIFY in the transaction on PostgreSQL),
            # a one-off per console. 5 s runs until 1.5 times as many 2xx as hot consoles (at most four: a
            # busy machine may make fewer than 2,000 heartbeats/s).
            warm = 0.0
            for _ in range(4):
                warm += _wrk(t.server.url, 5, a.connections, t.script)["ok"]
                if warm >= 1.5 * len(t.hot):
                    break
        for i in range(a.rounds):
            hello_runs.append(_wrk(hello.url, a.duration, a.connections, this.script))
            order = targets if i % 2 == 0 else targets[::-1]
            for t in order:
                # The wait events are this checkout's (the cluster's sessions of both databases are sampled).
                sampling = (
                    cluster.sampling() if cluster is not None and t.name == "postgresql" else contextlib.nullcontext()
                )
                lsn = _wal_lsn(t.store) if t.store else 0
                with sampling:  # type: ignore[attr-defined]
                    t.runs.append(_wrk(t.server.url, a.duration, a.connections, t.script))
                if t.store:
                    t.wal_bytes += _wal_lsn(t.store) - lsn
            if a.rounds > 1:
                line = f"round {i + 1}: hello {hello_runs[-1]['rate']:,.0f}/s"
                for t in targets:
                    r = t.runs[-1]
                    ratio = r["rate"] / hello_runs[-1]["rate"]
                    line += f", {t.name} {r['rate']:,.0f}/s (p99 {r['p99']:.1f} ms, ratio {ratio:.2f})"
                print(line, flush=True)
        hello.stop()
        hello = None
        rss_after_load = this.server.rss()
        query_paths = [
            "/api/consoles?limit=100",
            "/api/consoles?state=busy&limit=100",
            "/api/consoles?q=host-4242&limit=100",
            "/api/consoles?q=host&limit=100",  # matches every console: the worst case for a search
            "/api/consoles?state=idle&sort=name&limit=50&offset=1000",
            "/api/consoles/stats",
        ]
        queries = _query_p99(this.server.url, query_paths, 100)
        pg = next((t for t in targets if t.store), None)
        pg_queries = _query_p99(pg.server.url, query_paths, 100) if pg is not None else {}
        rss = this.server.rss()
        for t in targets:
            t.server.stop()
            if t.store:
                t.updates = str(
                    _pg_value(
                        t.store,
                        "SELECT n_tup_upd || ' updates, ' || round(100.0 * n_tup_hot_upd / greatest(n_tup_upd, 1)) "
                        "|| ' % HOT' FROM pg_stat_user_tables WHERE relname = 'consolas'",
                    )
                )
        conn = sqlite3.connect(this.db)
        stored = conn.execute("SELECT COUNT(*) FROM heartbeats").fetchone()[0]
        registered = conn.execute("SELECT COUNT(*) FROM consoles").fetchone()[0]
        conn.close()
        pg_stored = _pg_count(pg.store, "console_heartbeats") if pg is not None and pg.store else 0
    finally:
        if hello is not None:
            hello.stop()
        for t in targets:
            if t.server.proc.poll() is None:
                t.server.stop()
        shutil.rmtree(work, ignore_errors=True)

    h = {k: _median(hello_runs, k) for k in ("rate", "p50", "p99")}
    print()
    what = f", medians of {a.rounds} alternating rounds" if a.rounds > 1 else ""
    print(
        f"wrk -t1 -c{a.connections} -d{a.duration:g}s, seed 004 heartbeat body over {len(this.hot):,} console ids{what}"
    )
    print(f"{'':52} {'req/s (2xx)':>12} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}")
    print(f"{'Starlette hello, same requests':52} {h['rate']:>12,.0f} {h['p50']:>8.2f} {h['p99']:>8.2f}")
    for t in targets:
        hb = {k: _median(t.runs, k) for k in ("rate", "p50", "p99")}
        ratios = [r["rate"] / x["rate"] for r, x in zip(t.runs, hello_runs, strict=True)]
        label = "heartbeats (WAL, synchronous=FULL)" + (", ASGI" if a.asgi_only else "")
        if t.store:
            label = "heartbeats (PostgreSQL, synchronous_commit)"
        if t.name.startswith("against"):
            label += ", against"
        print(f"{label:52} {hb['rate']:>12,.0f} {hb['p50']:>8.2f} {hb['p99']:>8.2f} {statistics.median(ratios):>6.2f}")
    print(
        "goal: ratio >= 0.40, >= 10,000/s, p99 < 25 ms"
        + ("; PostgreSQL: >= 0.35, >= 8,000/s, p99 < 25 ms" if a.store else "")
    )
    for t in targets:
        if t.store:
            beats = sum(r["ok"] for r in t.runs)
            print(f"{t.name}: WAL {t.wal_bytes / max(beats, 1):,.0f} bytes per heartbeat; consolas: {t.updates}")
    non2xx = sum(r["non2xx"] for r in this.runs)
    print(f"non-2xx answers: {non2xx}, socket errors: {sum(r['socket_errors'] for r in this.runs)}")
    ok = sum(r["ok"] for r in this.runs)
    print(f"heartbeat rows in the database: {stored:,} (2xx answers incl. warm-up: >= {ok:,})")
    print(f"registrations over HTTP: {this.reg_rate:,.0f}/s")
    print()
    print(f"queries over {registered:,} registered consoles (100 sequential requests each)")
    for path, (p50, p99) in queries.items():
        print(f"  {path:58} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    if pg_queries:
        print(f"the same on PostgreSQL (heartbeat rows stored there: {pg_stored:,}; goal p99 < 50 ms)")
        for path, (p50, p99) in pg_queries.items():
            print(f"  {path:58} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    print(
        f"server RSS: {rss / 2**20:,.0f} MiB (after the heartbeat load: {rss_after_load / 2**20:,.0f} MiB; goal < 300)"
    )
    if cluster is not None:
        print()
        print(cluster.report())  # type: ignore[attr-defined]
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve-consoles":
        _run_loop(_serve_consoles(sys.argv[2], sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--serve-hello":
        _run_loop(_serve_hello(sys.argv[2]))
    else:
        sys.exit(main())
