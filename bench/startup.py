"""Supervisor startup, idle cost and crash recovery with N trivial plugins, against a same-run baseline.

    .venv/bin/python bench/startup.py                # 20 plugins, 10 s idle window, 5 crashes
    .venv/bin/python bench/startup.py --plugins 40 --idle 20 --crashes 10 --startsecs 0.5

Runs `supervisor-tui --headless --log-format json` as a child process on a temporary plugins/data dir (API port
0, plugin ports from a private range) and reads its JSON log lines:

1. launch -> all plugins RUNNING: from spawning the supervisor to the last `to: RUNNING` line. Baseline: the same
   N plugin scripts started directly (no supervisor), in parallel, until each printed its first line.
2. idle CPU: the supervisor process's own CPU time over the idle window, as % of one core (plugins excluded).
3. crash -> RUNNING again: SIGKILL one plugin (a different one each time, so no crash backoff applies), time until
   its next `to: RUNNING` line; the overhead is that minus startsecs.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
PLUGIN = """\
import os, sys, time
print(f"up on {os.environ.get('PORT')}", flush=True)
while True:
    time.sleep(3600)
"""


def write_plugins(root: Path, count: int, startsecs: float) -> list[str]:
    keys = [f"p{i:02d}" for i in range(count)]
    for key in keys:
        folder = root / "plugins" / key
        folder.mkdir(parents=True)
        (folder / "plugin.py").write_text(PLUGIN)
        manifest = {"key": key, "command": ["python", "plugin.py"], "startsecs": startsecs}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    return keys


def core_only(root: Path, count: int) -> float:
    """Seconds from ``Supervisor.open()`` to ``start_all()`` returning with every plugin RUNNING, in this process
    (the core alone: no interpreter start, no imports, no HTTP API)."""
    import asyncio

    from supervisor_tui.config import load_settings
    from supervisor_tui.core.supervisor import Supervisor

    start = random.randrange(20000, 29000, 100)
    settings = load_settings(
        env={},
        overrides={
            "plugins.dir": str(root / "plugins"),
            "data.dir": str(root / "core-data"),
            "plugins.port_range_start": start,
            "plugins.port_range_end": start + 99,
            "server.port": 0,
        },
        base_dir=root,
    )

    async def run() -> float:
        t0 = time.perf_counter()
        async with Supervisor(settings) as sup:
            await sup.start_all()
            elapsed = time.perf_counter() - t0
            assert sum(p.state == "RUNNING" for p in sup.plugins()) == count
        return elapsed

    return asyncio.run(run())


def baseline_spawn(root: Path, count: int) -> float:
    """Seconds to start ``count`` plugin scripts directly and see each one's first line."""
    script = root / "plugins" / "p00" / "plugin.py"
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        for _ in range(count)
    ]
    for p in procs:
        assert p.stdout is not None
        p.stdout.readline()
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.kill()
        p.wait()
    return elapsed


class Headless:
    """The supervisor as a child process; its JSON lines go to a queue."""

    def __init__(self, root: Path) -> None:
        start = random.randrange(20000, 29000, 100)
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "SUPERVISOR_TUI_PLUGINS_PORT_RANGE_START": str(start),
            "SUPERVISOR_TUI_PLUGINS_PORT_RANGE_END": str(start + 99),
        }
        args = [sys.executable, "-m", "supervisor_tui", "--headless", "--port", "0", "--log-format", "json"]
        args += ["--plugins-dir", str(root / "plugins"), "--data-dir", str(root / "data")]
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            args, cwd=root, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        self.lines: queue.Queue[tuple[float, dict[str, Any]]] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.put((time.perf_counter(), json.loads(line)))
            except ValueError:
                continue

    def next_running(self, key: str | None, timeout: float = 60) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            ts, rec = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if rec.get("to") == "RUNNING" and (key is None or rec.get("plugin") == key):
                return ts, rec

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plugins", type=int, default=20)
    ap.add_argument("--idle", type=float, default=10.0, help="idle measuring window in seconds")
    ap.add_argument("--crashes", type=int, default=5)
    ap.add_argument("--startsecs", type=float, default=1.0, help="startsecs of every plugin (default 1, the default)")
    args = ap.parse_args()
    n = args.plugins
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        root = Path(tmp)
        write_plugins(root, n, args.startsecs)
        base = baseline_spawn(root, n)
        print(
            f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, "
            f"{n} plugins, startsecs {args.startsecs:g}"
        )
        print(f"baseline: {n} plugin scripts started directly, all printed a line: {base:.3f} s")
        core = core_only(root, n)
        print(
            f"core only (in-process Supervisor.open + start_all, no imports, no API): {core:.3f} s; "
            f"minus startsecs: {core - args.startsecs:.3f} s"
        )

        sup = Headless(root)
        pids: dict[str, int] = {}
        last = sup.t0
        for _ in range(n):
            last, rec = sup.next_running(None)
            pids[rec["plugin"]] = rec["pid"]
        launch = last - sup.t0
        print(
            f"launch -> {n} plugins RUNNING: {launch:.3f} s (goal < 2 s); "
            f"minus startsecs: {launch - args.startsecs:.3f} s; "
            f"ratio to baseline + startsecs: {launch / (base + args.startsecs):.2f}"
        )

        time.sleep(2.5)  # let startup work settle (first metrics samples, first health ticks)
        me = psutil.Process(sup.proc.pid)
        c0, t0 = me.cpu_times(), time.perf_counter()
        time.sleep(args.idle)
        c1, t1 = me.cpu_times(), time.perf_counter()
        cpu = (c1.user - c0.user + c1.system - c0.system) / (t1 - t0) * 100
        print(f"idle supervisor CPU with {n} plugins over {args.idle:g} s: {cpu:.2f} % of one core (goal < 1 %)")

        recoveries = []
        for key in list(pids)[: args.crashes]:
            t_kill = time.perf_counter()
            os.kill(pids[key], signal.SIGKILL)
            ts, rec = sup.next_running(key)
            pids[key] = rec["pid"]
            recoveries.append(ts - t_kill)
        over = [r - args.startsecs for r in recoveries]
        print(
            f"crash -> RUNNING again ({len(recoveries)} crashes): median {statistics.median(recoveries):.3f} s, "
            f"max {max(recoveries):.3f} s; overhead beyond startsecs: median {statistics.median(over):.3f} s, "
            f"max {max(over):.3f} s (goal < 0.5 s)"
        )
        code = sup.stop()
        print(f"supervisor exit code after SIGTERM: {code}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
