"""``supervisor-tui attach URL``: the TUI on a supervisor running elsewhere, over its admin API.

The admin token comes from ``--token``, else ``SUPERVISOR_TUI_AUTH_ADMIN_TOKEN``, else ``./data/admin.token``.
An unreachable URL or a refused token is one line on stderr and a non-zero exit, before any screen is drawn.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from supervisor_tui.config import ConfigError, load_settings
from supervisor_tui.core.printable import printable
from supervisor_tui.tui.client import ClientError
from supervisor_tui.tui.client_remote import RemoteClient, normalize_url

TOKEN_ENV = "SUPERVISOR_TUI_AUTH_ADMIN_TOKEN"
TOKEN_FILE = Path("data") / "admin.token"
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``supervisor-tui attach``."""
    parser.add_argument("url", help="the supervisor's API, e.g. http://127.0.0.1:4000")
    parser.add_argument("--token", help=f"admin token (default: ${TOKEN_ENV}, then ./{TOKEN_FILE})")
    parser.add_argument(
        "--read-only", action="store_true", default=False, help="hide and refuse every action that changes state"
    )
    parser.add_argument(
        "--config", metavar="PATH", default=None, help="settings file for [keys] (default: ./supervisor.toml)"
    )


def resolve_token(explicit: str | None) -> str | None:
    """--token, else the environment, else ./data/admin.token."""
    if explicit:
        return explicit.strip()
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env
    try:
        return TOKEN_FILE.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def _fail(message: str, code: int) -> int:
    # The message may quote what the remote supervisor answered: shown, never obeyed, by the terminal.
    sys.stderr.write(f"supervisor-tui attach: {printable(message)}\n")
    sys.stderr.flush()
    return code


def main(args: argparse.Namespace) -> int:
    """Attach to the supervisor at ``args.url``; returns the exit code."""
    try:
        url = normalize_url(args.url)
    except ValueError as exc:
        return _fail(str(exc), EXIT_USAGE)
    token = resolve_token(getattr(args, "token", None))
    if not token:
        return _fail(f"no admin token: pass --token, set {TOKEN_ENV}, or run where ./{TOKEN_FILE} exists", EXIT_USAGE)
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        return _fail(str(exc), EXIT_USAGE)
    keys = settings.tables.get("keys", {})
    keymap = {str(k): str(v) for k, v in keys.items()} if isinstance(keys, dict) else {}
    read_only = bool(getattr(args, "read_only", False)) or settings.ui.read_only
    try:
        return asyncio.run(attach(url, token, read_only=read_only, keymap=keymap))
    except ClientError as exc:
        return _fail(exc.message, EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return 130


async def attach(url: str, token: str, *, read_only: bool = False, keymap: dict[str, str] | None = None) -> int:
    """Connect (ClientError when the supervisor cannot be used), then run the TUI until the operator quits."""
    from supervisor_tui.tui.app import SupervisorApp

    client = RemoteClient(url, token, read_only=read_only, keymap=keymap)
    try:
        await client.connect()
        app = SupervisorApp(client)
        await app.run_async()
        return 0 if app.return_code in (None, 129) else int(app.return_code)
    finally:
        await client.close()
