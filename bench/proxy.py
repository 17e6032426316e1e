"""Gateway throughput against nginx and Caddy on the same upstream, measured in the same run.

Starts the upstream (uvicorn + Starlette answering "hello"), the gateway (supervisor_tui.server.gateway served by
supervisor_tui.server.serve, uvloop) and, when installed, nginx (keepalive 64, config in a temp dir, run as a
child) and Caddy (``caddy run``, admin API on a free port, data dirs in the temp dir) with the routes the route
export writes (server.caddy_config, the same server object routes.export = caddy keeps in Caddy), all on 127.0.0.1
ephemeral ports; then runs wrk (or a small Python load generator when wrk is missing) against each and prints
req/s, p50/p99 and the ratios between them.

    python bench/proxy.py [--duration 5] [--connections 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HELLO_PATH = "/hello"


# -- the processes under test ------------------------------------------------------------------------------------


def run_upstream() -> None:
    """Role: uvicorn + Starlette answering hello on an ephemeral port (prints PORT n)."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route(HELLO_PATH, hello)])
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(2048)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", http="httptools", loop="uvloop")
    uvicorn.Server(config).run(sockets=[sock])


def run_gateway(upstream: str, loop: str) -> None:
    """Role: the gateway in front of ``upstream`` with one plugin "hello" (prints PORT n)."""
    sys.path.insert(0, str(ROOT))

    from supervisor_tui.server.gateway import Gateway, PluginRoute, RouteTable
    from supervisor_tui.server.serve import HttpServer

    async def main() -> None:
        table = RouteTable([PluginRoute("hello", upstream, (("GET", HELLO_PATH),))])
        gateway = Gateway(table)
        server = HttpServer()
        _, port = await server.start(gateway, "127.0.0.1", 0)
        print(f"PORT {port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()
        await server.stop()
        await gateway.close()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


# -- orchestration -----------------------------------------------------------------------------------------------


def spawn_role(*args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL
    )
    assert proc.stdout is not None
    # Bounded: a child that never reports its port is killed after 20 s.
    ready, _, _ = select.select([proc.stdout], [], [], 20.0)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("PORT "):
        proc.kill()
        raise SystemExit(f"{args[1]} did not start: {line!r}")
    return proc, int(line.split()[1])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def start_nginx(upstream_port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], int] | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        return None
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    upstream hello {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://hello;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""
    )
    proc = subprocess.Popen([nginx, "-p", str(workdir), "-c", str(conf)], stdin=subprocess.DEVNULL)
    wait_listening(port, time.monotonic() + 10)
    return proc, port


def start_caddy(upstream_port: int, workdir: Path) -> tuple[Callable[[], None], int] | None:
    """Caddy with the exported routes of one plugin "hello" on ``upstream_port``: (what stops it, its port)."""
    if shutil.which("caddy") is None:
        return None
    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT))
    import httpx
    from fixtures.caddy.harness import CaddyProcess

    from supervisor_tui.server.caddy_config import caddy_server
    from supervisor_tui.server.gateway import PluginRoute

    caddy = CaddyProcess(workdir / "caddy")
    caddy.start()
    port = free_port()
    route = PluginRoute("hello", f"http://127.0.0.1:{upstream_port}", (("GET", HELLO_PATH),))
    server = caddy_server([route], f"127.0.0.1:{port}", "")
    answer = httpx.put(f"{caddy.admin_url}/config/apps/http/servers/supervisor-tui", json=server, timeout=10)
    if answer.status_code != 200:
        caddy.stop()
        raise SystemExit(f"caddy refused the exported routes: {answer.text}")
    wait_listening(port, time.monotonic() + 10)
    return caddy.stop, port


def run_wrk(url: str, duration: int, connections: int, threads: int) -> tuple[float, float, float]:
    """(req/s, p50 ms, p99 ms) from ``wrk --latency``."""
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    if "Non-2xx" in out or "Socket errors" in out:
        problems = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket" in line]
        print(f"  warning: {url}: " + "; ".join(problems))

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if m is None:
            return float("nan")
        return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]

    return rps, pct("50"), pct("99")


def run_python_load(url: str, duration: int, connections: int) -> tuple[float, float, float]:
    """A small aiohttp load generator for machines without wrk: ``connections`` workers for ``duration`` s."""
    import aiohttp

    async def main() -> tuple[float, float, float]:
        latencies: list[float] = []
        end = time.perf_counter() + duration
        connector = aiohttp.TCPConnector(limit=connections)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def worker() -> None:
                while (t0 := time.perf_counter()) < end:
                    async with session.get(url) as resp:
                        await resp.read()
                    latencies.append(time.perf_counter() - t0)

            await asyncio.gather(*(worker() for _ in range(connections)))
        latencies.sort()
        n = len(latencies)
        return n / duration, latencies[n // 2] * 1000, latencies[min(n - 1, int(n * 0.99))] * 1000

    return asyncio.run(main())


def stop(proc: subprocess.Popen[str] | subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=5, help="seconds per load run (default 5)")
    parser.add_argument("--connections", type=int, default=32, help="concurrent connections (default 32)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is kept (2)")
    parser.add_argument("--load", choices=["auto", "wrk", "python"], default="auto", help="load generator")
    parser.add_argument("--gateway-loop", choices=["uvloop", "asyncio"], default="uvloop", help="the gateway's loop")
    parser.add_argument("--role", choices=["upstream", "gateway"], help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role == "upstream":
        return run_upstream()
    if args.role == "gateway":
        return run_gateway(args.upstream, args.gateway_loop)

    use_wrk = args.load == "wrk" or (args.load == "auto" and shutil.which("wrk") is not None)
    children: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = []
    stoppers: list[Callable[[], None]] = []
    best: dict[str, tuple[float, float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-proxy-") as tmp:
        try:
            upstream, up_port = spawn_role("--role", "upstream")
            children.append(upstream)
            gateway, gw_port = spawn_role(
                "--role", "gateway", "--upstream", f"http://127.0.0.1:{up_port}", "--gateway-loop", args.gateway_loop
            )
            children.append(gateway)
            targets = {"direct": f"http://127.0.0.1:{up_port}{HELLO_PATH}"}
            nginx = start_nginx(up_port, Path(tmp))
            if nginx is not None:
                children.append(nginx[0])
                targets["nginx"] = f"http://127.0.0.1:{nginx[1]}{HELLO_PATH}"
            caddy = start_caddy(up_port, Path(tmp))
            if caddy is not None:
                stoppers.append(caddy[0])
                targets["caddy"] = f"http://127.0.0.1:{caddy[1]}/api/plugins/hello{HELLO_PATH}"
            targets["gateway"] = f"http://127.0.0.1:{gw_port}/api/plugins/hello{HELLO_PATH}"
            tool = (
                f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s --latency"
                if use_wrk
                else f"python load generator, {args.connections} connections, {args.duration} s"
            )
            print(f"load: {tool}; {args.rounds} interleaved round(s), best kept")
            nginx_desc = "1 worker, keepalive 64" if nginx else "not installed"
            caddy_desc = "exported routes" if caddy else "not installed"
            print(
                f"upstream: uvicorn + Starlette hello; nginx: {nginx_desc}; caddy: {caddy_desc}; "
                f"gateway loop: {args.gateway_loop}"
            )
            for round_no in range(1, args.rounds + 1):
                for name, url in targets.items():
                    if use_wrk:
                        run_wrk(url, 1, args.connections, args.threads)  # warm-up: pools, caches
                        result = run_wrk(url, args.duration, args.connections, args.threads)
                    else:
                        result = run_python_load(url, args.duration, args.connections)
                    rps, p50, p99 = result
                    print(f"  round {round_no} {name:8s} {rps:10,.0f} req/s  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
                    if name not in best or rps > best[name][0]:
                        best[name] = result
        finally:
            for stop_caddy in stoppers:
                stop_caddy()
            for child in reversed(children):
                stop(child)
    print("best of the rounds:")
    for name, (rps, p50, p99) in best.items():
        print(f"{name:8s} {rps:10,.0f} req/s   p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
    gw = best["gateway"][0]
    print(f"gateway / direct: {gw / best['direct'][0]:.2f}")
    if "nginx" in best:
        print(f"gateway / nginx:  {gw / best['nginx'][0]:.2f}   (goal >= 0.35 with p99 < 15 ms)")
    if "caddy" in best:
        print(f"gateway / caddy:  {gw / best['caddy'][0]:.2f}")
        if "nginx" in best:
            print(f"caddy / nginx:    {best['caddy'][0] / best['nginx'][0]:.2f}")


if __name__ == "__main__":
    main()
