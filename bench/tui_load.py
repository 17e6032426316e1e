"""Input latency and CPU of the TUI under console load: 10,000 consoles, 1,000 heartbeats/s (not a test).

Runs ``SupervisorApp`` headless (``run_test``) over the demo supervisor, once idle (the baseline) and once
under load, pressing a key every ``--interval`` seconds. Latency is from posting the key to the first frame
rendered to terminal output that shows the table's cursor moved. CPU is this process's user+system time
over the phase (app and load feeder together) as a share of one core.

    .venv/bin/python bench/tui_load.py                      # 10,000 consoles, 1,000 heartbeats/s, 2 x 10 s
    .venv/bin/python bench/tui_load.py --consoles 20000 --rate 2000 --seconds 15
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from textual import events
from textual._compositor import CompositorUpdate

from supervisor_tui.tui.app import SupervisorApp
from supervisor_tui.tui.demo import DemoClient
from supervisor_tui.tui.widgets.keyed_table import KeyedTable

TICK = 0.01  # the feeder publishes one batch every 10 ms


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


async def feed(client: DemoClient, consoles: int, rate: int, logs_per_s: int, stop: asyncio.Event) -> int:
    """Publish ``rate`` heartbeats/s (random consoles, some state changes) and a few log lines until stopped."""
    rng = random.Random(7)
    sent = 0
    start = time.perf_counter()
    states = ("active", "busy", "idle", "busy", "active", "error")
    while not stop.is_set():
        elapsed = time.perf_counter() - start
        due = int(elapsed * rate) - sent
        if due > 0:
            indexes = [rng.randrange(consoles) for _ in range(due)]
            client.heartbeats(indexes, state=states[sent % len(states)] if sent % 50 == 0 else None)
            sent += due
        if logs_per_s and rng.random() < logs_per_s * TICK:
            client.write_log("echo", f"GET /echo?n={sent} 200 0.4ms")
        await asyncio.sleep(TICK)
    return sent


async def idle(stop: asyncio.Event) -> int:
    await stop.wait()
    return 0


async def phase(
    name: str, consoles: int, rate: int, seconds: float, interval: float, size: tuple[int, int]
) -> dict[str, Any]:
    client = DemoClient(consoles=consoles, now=time.time(), clock=time.time)
    return await press_keys(name, client, "2", "#consoles-table", seconds, interval, size, consoles, rate)


async def press_keys(
    name: str,
    client: Any,
    pane_key: str,
    table_id: str,
    seconds: float,
    interval: float,
    size: tuple[int, int],
    consoles: int = 0,
    rate: int = 0,
) -> dict[str, Any]:
    """Key-to-screen latency of j/k in the table ``table_id`` of the pane ``pane_key`` shows; with ``rate``, the
    demo client gets that many heartbeats a second meanwhile."""
    app = SupervisorApp(client, handle_signals=False)
    proc = psutil.Process()
    latencies: list[float] = []
    async with app.run_test(size=size) as pilot:
        frames: list[float] = []
        frame_ready = asyncio.Event()
        original_display = app._display

        def display(screen: Any, renderable: Any) -> None:
            # Headless apps skip turning frames into terminal output; do that work here, as a terminal would
            # need it, and note when each frame was ready.
            if renderable is not None and not app._batch_count and isinstance(renderable, CompositorUpdate):
                renderable.render_segments(app.console)
                frames.append(time.perf_counter())
                frame_ready.set()
            original_display(screen, renderable)

        app._display = display  # type: ignore[method-assign]
        table = app.main.query_one(table_id, KeyedTable)
        await pilot.press(pane_key)
        deadline = time.monotonic() + 30
        while table.row_count == 0 and time.monotonic() < deadline:
            await pilot.pause(0.05)
        stop = asyncio.Event()
        demo = isinstance(client, DemoClient)
        feeder = asyncio.create_task(feed(client, consoles, rate, 50 if rate else 0, stop) if demo else idle(stop))
        await asyncio.sleep(1.0)  # warm-up: the first batches and refreshes
        cpu0 = proc.cpu_times()
        t_start = time.perf_counter()
        key = "j"
        while time.perf_counter() - t_start < seconds:
            before = table.cursor_row
            if before >= table.row_count - 2:
                key = "k"
            elif before <= 1:
                key = "j"
            t0 = time.perf_counter()
            app.post_message(events.Key(key, None))
            # The first frame drawn once the cursor has moved is the one that shows the key press.
            try:
                async with asyncio.timeout(5):
                    while True:
                        frame_ready.clear()
                        await frame_ready.wait()
                        if table.cursor_row != before:
                            latencies.append((frames[-1] - t0) * 1000)
                            break
            except TimeoutError:
                print(f"{name}: a key press did not reach the screen within 5 s", flush=True)
            await asyncio.sleep(interval)
        wall = time.perf_counter() - t_start
        cpu1 = proc.cpu_times()
        stop.set()
        sent = await feeder
        flushes = app.flushes
        table_rows = table.row_count
    cpu = (cpu1.user - cpu0.user + cpu1.system - cpu0.system) / wall * 100
    result = {
        "name": name,
        "presses": len(latencies),
        "p50": statistics.median(latencies) if latencies else float("nan"),
        "p99": percentile(latencies, 99),
        "max": max(latencies) if latencies else float("nan"),
        "cpu": cpu,
        "heartbeats": sent,
        "flushes": flushes,
    }
    print(
        f"{name:<9} consoles={consoles:>6,} heartbeats/s={rate:>5,} rows={table_rows:>6,}  "
        f"presses={result['presses']:>3}  "
        f"latency p50={result['p50']:6.1f} ms  p99={result['p99']:6.1f} ms  max={result['max']:6.1f} ms  "
        f"CPU={cpu:5.1f}% of one core",
        flush=True,
    )
    return result


async def plugins_phase(count: int, seconds: float, interval: float, size: tuple[int, int]) -> dict[str, Any]:
    """The TUI over a real supervisor in this process (the embedded mode, without the HTTP API) running
    ``count`` trivial plugins, its metrics sampling included; j/k in the plugins table."""
    from startup import write_plugins

    from supervisor_tui.config import load_settings
    from supervisor_tui.core.supervisor import Supervisor
    from supervisor_tui.tui.client_local import InProcessClient

    with tempfile.TemporaryDirectory(prefix="bench-tui-plugins-") as tmp:
        root = Path(tmp)
        write_plugins(root, count, 1.0)
        start = random.randrange(20000, 29000 - count, 100)
        overrides = {
            "plugins.dir": str(root / "plugins"),
            "data.dir": str(root / "data"),
            "plugins.port_range_start": start,
            "plugins.port_range_end": start + count + 99,
            "plugins.watch": False,
        }
        settings = load_settings(env={}, overrides=overrides, base_dir=root)
        async with Supervisor(settings) as sup:
            t0 = time.perf_counter()
            await sup.start_all()
            running = sum(p.state == "RUNNING" for p in sup.plugins())
            print(f"{running} of {count} plugins RUNNING after {time.perf_counter() - t0:.2f} s", flush=True)
            client = InProcessClient(sup, "http://127.0.0.1:0")
            return await press_keys("plugins", client, "1", "#plugins-table", seconds, interval, size)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--consoles", type=int, default=10_000)
    parser.add_argument("--rate", type=int, default=1_000, help="heartbeats per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per phase")
    parser.add_argument("--interval", type=float, default=0.1, help="pause between key presses")
    parser.add_argument("--size", default="160x48", help="terminal size, e.g. 80x24")
    parser.add_argument("--plugins", type=int, default=0, help="instead: a real supervisor with this many plugins")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    if args.plugins:
        print(f"TUI over {args.plugins} plugins: terminal {width}x{height}, a key every {args.interval:g} s")
        result = await plugins_phase(args.plugins, args.seconds, args.interval, (width, height))
        met = "met" if result["p99"] < 100 else "NOT met"
        print(f"goal: key to screen < 100 ms with {args.plugins} plugins ({met}: p99 {result['p99']:.1f} ms)")
        return
    print(f"TUI under load: terminal {width}x{height}, {args.seconds:g} s per phase, a key every {args.interval:g} s")
    base = await phase("baseline", args.consoles, 0, args.seconds, args.interval, (width, height))
    load = await phase("load", args.consoles, args.rate, args.seconds, args.interval, (width, height))
    print(
        f"ratio load/baseline: p50 x{load['p50'] / base['p50']:.2f}, p99 x{load['p99'] / base['p99']:.2f}, "
        f"CPU {load['cpu']:.1f}% vs {base['cpu']:.1f}%"
    )
    ok_latency = load["p99"] < 100
    ok_cpu = load["cpu"] < 30
    print(
        f"goal: key to screen < 100 ms ({'met' if ok_latency else 'NOT met'}: p99 {load['p99']:.1f} ms), "
        f"TUI CPU < 30% of a core ({'met' if ok_cpu else 'NOT met'}: {load['cpu']:.1f}%)"
    )


if __name__ == "__main__":
    asyncio.run(main())
