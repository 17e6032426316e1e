"""Embedded mode (`supervisor-tui` with no subcommand): the TUI with the supervisor and its API in-process.

Plugins and consoles keep reporting through the API while the operator watches. Quitting the TUI (or losing
the terminal: SIGHUP, stdin at EOF) stops every plugin and exits. Nothing is printed to the terminal besides
the UI: supervisor messages and plugin output go to the log hub (the logs pane and data/logs/).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

from supervisor_tui.config import Settings
from supervisor_tui.core.lock import LockError
from supervisor_tui.core.logs import stderr_line
from supervisor_tui.core.store import StoreError, StoreUnreachable
from supervisor_tui.runtime import Runtime, StartupError
from supervisor_tui.tui.app import SupervisorApp
from supervisor_tui.tui.client_local import InProcessClient

EXIT_CANNOT_START = 1
EXIT_CANNOT_BIND = 2
EXIT_HANGUP = 129  # the app's code when the terminal went away: a normal end for a supervisor


def run_embedded(settings: Settings) -> int:
    """Entry point from the CLI; returns the process exit code."""
    try:
        return asyncio.run(_run(settings))
    except StartupError as exc:
        stderr_line(f"supervisor-tui: {exc}")
        return EXIT_CANNOT_BIND
    except StoreUnreachable as exc:  # consoles.store names a PostgreSQL that cannot be reached: a setting to fix
        stderr_line(f"supervisor-tui: {exc}")
        return 2
    except (LockError, StoreError, sqlite3.Error, OSError) as exc:
        stderr_line(f"supervisor-tui: cannot start: {exc}")
        return EXIT_CANNOT_START
    except KeyboardInterrupt:
        return 130


async def _run(settings: Settings) -> int:
    runtime = Runtime(settings, "embedded")
    await runtime.start()
    starting: asyncio.Task[None] | None = None
    gateway = runtime.gateway
    client = InProcessClient(
        runtime.sup,
        runtime.url,
        request_counts=(lambda: gateway.stats().requests_by_plugin()) if gateway is not None else None,
        route_export=runtime.route_export_status,
        fleet=runtime.fleet,
        admin_token=runtime.tokens.admin if runtime.tokens is not None else "",
    )
    try:
        starting = asyncio.create_task(runtime.start_plugins(), name="start-plugins")
        app = SupervisorApp(client)
        await app.run_async()
        code = app.return_code
        return 0 if code in (None, EXIT_HANGUP) else int(code)
    finally:
        if starting is not None:
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await starting
        await client.close()
        await runtime.stop()
