"""The fleet over Redis: two headless supervisors (nodes A and B) on one redis-server, measured in the same run.

1. Through node B's gateway to node A's plugin vs node A's gateway directly (wrk, same plugin, same run): the
   ratio B->A / A (goal >= 0.5: it is two hops) and p99 (goal < 15 ms).
2. A ``plugin:registered`` message published on Redis to the first 200 proxied by node B (p50/p99, goal < 100 ms).
3. 1,000 plugins registered over Redis on node B: messages handled per second, and B's RSS before and after.

    python bench/fleet.py [--duration 5] [--connections 32] [--rounds 50] [--plugins 1000]

Needs redis-server (scripts/setup.sh installs it) and wrk (else bench/proxy.py's Python load generator).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from proxy import free_port, run_python_load, run_wrk, wait_listening

HELLO_PLUGIN = """
import os, socket, uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

async def hello(request):
    return PlainTextResponse("hello")

app = Starlette(routes=[Route("/hello", hello)])
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_config=None, access_log=False,
            lifespan="off", http="httptools", loop="uvloop")
"""


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


class Node:
    """``supervisor-tui --headless`` in its own folder; its API URL and admin token once it listens."""

    def __init__(self, root: Path, name: str, redis_url: str, plugin: bool) -> None:
        self.root = root
        (root / "plugins").mkdir(parents=True)
        if plugin:
            folder = root / "plugins" / "hello"
            folder.mkdir()
            (folder / "plugin.py").write_text(HELLO_PLUGIN, encoding="utf-8")
            manifest = {
                "key": "hello",
                "name": "Hello",
                "version": "1.0.0",
                "command": [sys.executable, "plugin.py"],
                "endpoints": [{"method": "GET", "path": "/hello"}],
                "startsecs": 0.5,
            }
            (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
        self.port = free_port()
        (root / "supervisor.toml").write_text(
            f'[server]\nport = {self.port}\n[redis]\nurl = "{redis_url}"\nheartbeat_interval = "1s"\n'
            f'[fleet]\nnode = "{name}"\n[log]\nlevel = "warning"\n',
            encoding="utf-8",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor_tui", "--headless"],
            cwd=root,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        wait_listening(self.port, time.monotonic() + 30)
        self.token = (root / "data" / "admin.token").read_text().strip()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.02)
    raise SystemExit(f"timed out waiting for {what}")


def plugin_state(node: Node, key: str) -> str:
    with node.client() as c:
        r = c.get(f"/api/v1/plugins/{key}")
        return str(r.json()["state"]) if r.status_code == 200 else ""


async def time_to_first_200(url: str, publish: Any, upstream_port: int, rounds: int) -> list[float]:
    """Seconds from PUBLISH plugin:registered to the first 200 through ``url``, one new key per round."""
    import aiohttp

    out = []
    async with aiohttp.ClientSession() as session:
        for i in range(rounds):
            key = f"fresh-{i}"
            message = json.dumps(
                {
                    "key": key,
                    "name": "Fresh",
                    "version": "1.0.0",
                    "port": str(upstream_port),
                    "endpoints": [{"method": "GET", "path": "/hello"}],
                    "timestamp": int(time.time() * 1000),
                }
            )
            t0 = time.perf_counter()
            publish("plugin:registered", message)
            while True:
                async with session.get(f"{url}/api/plugins/{key}/hello") as resp:
                    await resp.read()
                    if resp.status == 200:
                        break
                if time.perf_counter() - t0 > 10:
                    raise SystemExit(f"{key}: no 200 within 10 s")
            out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--rounds", type=int, default=50, help="registrations timed to their first 200 (50)")
    parser.add_argument("--plugins", type=int, default=1000, help="plugins registered in bulk (1000)")
    args = parser.parse_args()
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit("redis-server is not installed (scripts/setup.sh installs it)")
    load = run_wrk if shutil.which("wrk") else None
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        root = Path(tmp)
        redis_port = free_port()
        redis_proc = subprocess.Popen(
            [server, "--port", str(redis_port), "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        nodes: list[Node] = []
        try:
            wait_listening(redis_port, time.monotonic() + 10)
            redis_url = f"redis://127.0.0.1:{redis_port}/0"
            a = Node(root / "a", "node-a", redis_url, plugin=True)
            nodes.append(a)
            b = Node(root / "b", "node-b", redis_url, plugin=False)
            nodes.append(b)
            wait_for(lambda: plugin_state(a, "hello") == "RUNNING", 60, "hello RUNNING on node A")
            wait_for(lambda: plugin_state(b, "hello") == "RUNNING", 60, "node B to learn node A's hello")
            with a.client() as c:
                upstream_port = int(c.get("/api/v1/plugins/hello").json()["port"])

            print(f"# {args.connections} connections, {args.duration} s per run, wrk: {'yes' if load else 'no'}")
            results = {}
            for name, url in (("A direct", a.url), ("B -> A", b.url)):
                target = f"{url}/api/plugins/hello/hello"
                if load is not None:
                    results[name] = load(target, args.duration, args.connections, 1)
                else:
                    results[name] = run_python_load(target, args.duration, args.connections)
                rps, p50, p99 = results[name]
                print(f"{name:<10} {rps:>9,.0f} req/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms")
            ratio = results["B -> A"][0] / results["A direct"][0]
            print(f"B -> A / A direct: {ratio:.2f} (goal >= 0.5), p99 {results['B -> A'][2]:.2f} ms (goal < 15 ms)")

            publisher = redis.Redis(port=redis_port)
            times = asyncio.run(time_to_first_200(b.url, publisher.publish, upstream_port, args.rounds))
            p50, p99 = percentile(times, 0.5) * 1000, percentile(times, 0.99) * 1000
            print(
                f"plugin:registered -> first proxied 200 on B ({args.rounds} keys): p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            )

            rss_before = b.rss()
            with b.client() as c:
                before = len(c.get("/api/v1/plugins").json()["plugins"])
            t0 = time.perf_counter()
            pipe = publisher.pipeline(transaction=False)
            for i in range(args.plugins):
                message = {
                    "key": f"bulk-{i}",
                    "name": f"Bulk {i}",
                    "version": "1.0.0",
                    "port": 20000 + i % 40000,
                    "endpoints": [{"method": "GET", "path": "/hello"}, {"method": "POST", "path": "/items/{id}"}],
                    "timestamp": int(time.time() * 1000),
                }
                pipe.publish("plugin:registered", json.dumps(message))
            pipe.execute()

            def all_in() -> bool:  # the status counts are cheap to read, unlike the listing of every plugin
                time.sleep(0.05)
                with b.client() as c:
                    return int(c.get("/api/v1/status").json()["plugins"]["total"]) >= before + args.plugins

            wait_for(all_in, 120, f"{args.plugins} registrations on node B")
            elapsed = time.perf_counter() - t0
            rss_after = b.rss()
            print(
                f"{args.plugins} plugins registered over Redis on B: {args.plugins / elapsed:,.0f} messages/s "
                f"({elapsed:.2f} s), RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB"
            )
            publisher.close()
        finally:
            for node in nodes:
                node.stop()
            redis_proc.terminate()
            redis_proc.wait(10)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
