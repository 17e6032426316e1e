"""Headless mode: the supervisor without a UI, for servers and systemd.

Starts every autostart plugin, logs to stdout (human or JSON lines), and runs until SIGTERM/SIGINT, then stops
every plugin in reverse dependency order and exits 0. A stop signal is honoured at any moment, also while the
orphans of a previous run are cleaned up or the plugins are starting: what was started is stopped. SIGHUP
re-reads the manifests and applies the difference; from the first line of the program (``cli.main``) until the
supervisor is up, and while it stops, a SIGHUP is ignored (the manifests are being read anyway), never fatal.

Exit codes: 0 after SIGTERM/SIGINT (a full disk included); 1 when the supervisor cannot start (another one holds
the data dir, the database cannot be opened or written); 2 when the API port cannot be bound; 3 with
``--exit-on-fatal`` when a plugin went FATAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import os
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from supervisor_tui.config import Settings
from supervisor_tui.core.events import PluginStateChanged
from supervisor_tui.core.lock import LockError
from supervisor_tui.core.logs import stderr_line
from supervisor_tui.core.store import StoreError, StoreUnreachable
from supervisor_tui.core.supervisor import PluginState, Supervisor
from supervisor_tui.runtime import Runtime, StartupError
from supervisor_tui.server.listen import new_event_loop

EXIT_OK = 0
EXIT_CANNOT_START = 1
EXIT_CANNOT_BIND = 2
EXIT_FATAL = 3
EXIT_STORE_UNREACHABLE = 2  # consoles.store names a PostgreSQL that cannot be reached: a setting to fix

# glibc's malloc gives each thread that allocates under contention an arena of its own (up to 8 per core): an idle
# headless supervisor had 10 for its 9 threads. Two hold the same objects in 0.9 MiB less resident memory.
MALLOC_ARENAS = 2
M_ARENA_MAX = -8  # glibc malloc.h


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process (before its threads start); the operator's own
    MALLOC_ARENA_MAX wins. False where there is no glibc mallopt (another libc)."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))


# Something that runs next to the supervisor until cancelled (e.g. the HTTP server): given the open supervisor.
Service = Callable[[Supervisor], Awaitable[None]]


def run_headless(settings: Settings, exit_on_fatal: bool) -> int:
    """Entry point from the CLI: run until a stop signal; returns the process exit code."""
    limit_malloc_arenas()
    try:
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            return runner.run(serve(settings, exit_on_fatal))
    except StartupError as exc:
        stderr_line(f"supervisor-tui: {exc}")
        return EXIT_CANNOT_BIND
    except StoreUnreachable as exc:
        stderr_line(f"supervisor-tui: {exc}")
        return EXIT_STORE_UNREACHABLE
    except (LockError, StoreError) as exc:
        stderr_line(f"supervisor-tui: {exc}")
        return EXIT_CANNOT_START
    except sqlite3.Error as exc:  # e.g. data/supervisor.db is not a database
        stderr_line(f"supervisor-tui: cannot use the database in {settings.data_dir}: {exc}")
        return EXIT_CANNOT_START
    except OSError as exc:
        stderr_line(f"supervisor-tui: cannot start: {exc}")
        return EXIT_CANNOT_START
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return EXIT_OK


async def serve(settings: Settings, exit_on_fatal: bool = False, services: Sequence[Service] = ()) -> int:
    """Open the supervisor and its HTTP API, start its plugins and ``services``, run until SIGTERM/SIGINT, then
    close it all."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    outcome = {"code": EXIT_OK}
    runtime = Runtime(settings, "headless", echo=sys.stdout, echo_output=True)
    sup = runtime.sup

    def request_stop(code: int = EXIT_OK) -> None:
        if not stop.is_set():
            outcome["code"] = code
            stop.set()

    tasks: list[asyncio.Task[object]] = []

    def reload() -> None:
        if not runtime.url or stop.is_set():
            sup.logs.info("SIGHUP while starting or stopping: ignored", event="reload_ignored")
            return
        sup.logs.info("SIGHUP: reloading plugin manifests", event="reload_requested")
        tasks.append(asyncio.create_task(_guarded(sup, sup.reload(), "reload")))

    started = asyncio.ensure_future(runtime.start(start_plugins=True))
    signals = {signal.SIGTERM: request_stop, signal.SIGINT: request_stop, signal.SIGHUP: reload}
    for sig, handler in signals.items():
        loop.add_signal_handler(sig, handler)
    try:
        if not await _started_unless_stopped(started, stop):
            sup.logs.info("stop requested while starting: stopped what was started", event="shutdown")
            return outcome["code"]
        # What is alive once started (the plugins, every console's entry, the server) lives as long as the
        # supervisor: kept out of the collector's full passes, which over 100,000 consoles in memory took 120-200 ms
        # and stalled every request meanwhile (the TUI freezes its startup heap for the same reason).
        gc.collect()
        gc.freeze()
        try:
            if exit_on_fatal:
                tasks.append(asyncio.create_task(_watch_fatal(sup, lambda: request_stop(EXIT_FATAL))))
            for service in services:
                tasks.append(asyncio.create_task(_guarded(sup, service(sup), "service")))
            await stop.wait()
            sup.logs.info("stop requested: stopping all plugins", event="shutdown")
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=10)
            await runtime.stop()
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nor in the last moments of the exit
    return outcome["code"]


async def _started_unless_stopped(started: asyncio.Future[None], stop: asyncio.Event) -> bool:
    """Wait for the runtime to start; a stop request first cancels the start (which then closes what it opened)
    and returns False. A failed start raises its error."""
    stopping = asyncio.ensure_future(stop.wait())
    waiters: list[asyncio.Future[Any]] = [started, stopping]
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not started.done():
        started.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await started
        return False
    started.result()
    return True


async def _guarded(sup: Supervisor, work: Awaitable[object], what: str) -> None:
    try:
        await work
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # log it; the supervisor keeps running
        sup.logs.error(f"{what} failed: {exc!r}", event="internal_error")


async def _watch_fatal(sup: Supervisor, on_fatal: Callable[[], None]) -> None:
    with sup.bus.subscribe(["plugin.state"]) as sub:
        for snap in sup.plugins():
            if snap.state == PluginState.FATAL:
                break
        else:
            async for event in sub:
                if isinstance(event, PluginStateChanged) and event.to_state == PluginState.FATAL:
                    break
            else:  # pragma: no cover - the subscription only ends when closed
                return
    sup.logs.error("a plugin is FATAL and --exit-on-fatal is set: exiting", event="exit_on_fatal")
    on_fatal()
