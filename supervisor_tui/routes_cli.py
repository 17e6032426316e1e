"""`supervisor-tui routes`: the route table a running supervisor believes in, and where it is exported.

    supervisor-tui routes [--url URL] [--token T] [--json]

The first line says where routes are exported (routes.export) and whether the last export succeeded, when, and
its error; then one row per declared endpoint: key, method, path, upstream, the plugin's state. Exit code 0, or 1
when the supervisor cannot be reached or the last export failed (so a cron job or a probe notices), 2 for bad
usage. What the supervisor sends is printed through core.printable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import httpx

from supervisor_tui.config import ConfigError
from supervisor_tui.core.printable import printable
from supervisor_tui.ctl import CtlError, add_connection_arguments, target, transport_reason

EXIT_FAILED = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print GET /api/v1/routes as it is")


def main(args: argparse.Namespace) -> int:
    try:
        url, token = target(args)
    except (CtlError, ConfigError) as exc:
        _complain(str(exc))
        return EXIT_USAGE
    try:
        response = httpx.get(url + "/api/v1/routes", headers={"Authorization": f"Bearer {token}"}, timeout=10.0)
    except httpx.TransportError as exc:
        _complain(f"cannot reach {url}: {transport_reason(exc)}")
        return EXIT_FAILED
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code != 200 or not isinstance(body, dict):
        error = body.get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") if isinstance(error, dict) else None
        _complain(f"GET /api/v1/routes: {message or response.reason_phrase} (HTTP {response.status_code})")
        return EXIT_FAILED
    export = body.get("export") or {}
    if args.json:
        print(json.dumps(body, indent=2))
    else:
        print(printable(export_line(export, time.time())))
        rows: list[tuple[str, ...]] = [("KEY", "METHOD", "PATH", "UPSTREAM", "STATE")]
        for route in body.get("routes") or []:
            cells = (
                route.get("key"),
                route.get("method"),
                route.get("path"),
                route.get("upstream"),
                route.get("state"),
            )
            rows.append(tuple(printable(str(c if c is not None else "-")) for c in cells))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_FAILED if export.get("ok") is False else 0


def export_line(export: dict[str, Any], now: float) -> str:
    """``export: caddy <admin> server '<name>' on <listen>: ok, last success 12:00:01 (3 s ago)`` and the like."""
    if export.get("target", "none") == "none":
        return "export: none (routes.export = none: only the built-in gateway serves these routes)"
    where = f"export: {export.get('target')} {export.get('admin')} server {export.get('server')!r}"
    where += f" on {export.get('listen')}"
    success = export.get("last_success_at")
    when = (
        "never" if not success else f"{time.strftime('%H:%M:%S', time.localtime(success))} ({now - success:.0f} s ago)"
    )
    if export.get("ok") is None:
        return f"{where}: not attempted yet"
    if export.get("ok"):
        return f"{where}: ok, last success {when}"
    return f"{where}: FAILING ({export.get('last_error')}), last success {when}"


def _complain(message: str) -> None:
    sys.stderr.write(f"supervisor-tui routes: {printable(message)}\n")
