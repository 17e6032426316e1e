"""Command line: argument parsing only, then hand-off to the mode that was asked for.

    supervisor-tui [flags]              TUI with an embedded supervisor
    supervisor-tui --headless [flags]   the same supervisor, no UI (servers, systemd)
    supervisor-tui attach URL           TUI on a supervisor running elsewhere
    supervisor-tui ctl ...              scripted control over the admin API
    supervisor-tui routes               the route table of a running supervisor, and its export (Caddy)
    supervisor-tui agent ...            the console-side heartbeat agent
    supervisor-tui config [flags]       print the effective settings and where each came from

Errors an operator can cause are one line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from collections.abc import Sequence
from typing import Any

from supervisor_tui.config import ConfigError, Settings, load_settings
from supervisor_tui.config.render import config_lines

EXIT_USAGE = 2

# Subcommands whose arguments and behaviour live in their own module: name -> (module, help).
# Each module has add_arguments(parser) and main(args) -> int.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "attach": ("supervisor_tui.tui.attach", "TUI on a supervisor running elsewhere (URL of its API)"),
    "ctl": ("supervisor_tui.ctl", "control a running supervisor over its admin API"),
    "routes": ("supervisor_tui.routes_cli", "the route table of a running supervisor and where it is exported"),
    "agent": ("supervisor_tui.agent.cli", "the console-side heartbeat agent"),
    "consoles": ("supervisor_tui.consoles.migrate", "console store tools: migrate --to postgresql://..."),
}


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> Any:
        sys.stderr.write(f"supervisor-tui: {message} (see --help)\n")
        raise SystemExit(EXIT_USAGE)


def add_supervisor_flags(parser: argparse.ArgumentParser) -> None:
    """Flags shared by every mode that runs a supervisor."""
    # SUPPRESS: a flag given before a subcommand is not reset by the subcommand's copy of it.
    g = parser.add_argument_group("supervisor", argument_default=argparse.SUPPRESS)
    g.add_argument("--config", metavar="PATH", help="settings file (default: ./supervisor.toml if present)")
    g.add_argument("--plugins-dir", metavar="DIR", help="plugin folders (default ./plugins)")
    g.add_argument("--data-dir", metavar="DIR", help="database, logs, admin token (default ./data)")
    g.add_argument("--host", help="address the API binds to (default 127.0.0.1)")
    g.add_argument("--port", help="API port (default 4000)")
    g.add_argument("--log-format", choices=("human", "json"), help="supervisor log format (default human)")
    g.add_argument("--read-only", action="store_true", help="refuse every action that changes state")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings with the shared flags applied on top of file and environment."""
    overrides = {
        "plugins.dir": getattr(args, "plugins_dir", None),
        "data.dir": getattr(args, "data_dir", None),
        "server.host": getattr(args, "host", None),
        "server.port": getattr(args, "port", None),
        "log.format": getattr(args, "log_format", None),
        "ui.read_only": getattr(args, "read_only", None),
    }
    return load_settings(getattr(args, "config", None), overrides=overrides)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The full parser. Only the subcommand named in ``argv`` has its module imported (all of them for help):
    the TUI's imports alone would add a quarter of a second to every headless start."""
    words = set(sys.argv[1:] if argv is None else argv)
    wanted = {name for name in SUBCOMMANDS if name in words}
    if words & {"-h", "--help"} and not wanted:
        wanted = set(SUBCOMMANDS)
    parser = _Parser(
        prog="supervisor-tui",
        description="Supervise plugins, proxy them behind one gateway, collect console heartbeats, watch it live.",
    )
    add_supervisor_flags(parser)
    parser.add_argument("--headless", action="store_true", help="run the supervisor without the UI")
    parser.add_argument(
        "--exit-on-fatal", action="store_true", help="headless: exit non-zero as soon as any plugin is FATAL"
    )
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    config_parser = sub.add_parser("config", help="print the effective settings and where each came from")
    add_supervisor_flags(config_parser)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name in wanted:
            importlib.import_module(module).add_arguments(p)
    return parser


def print_config(settings: Settings) -> int:
    """The effective settings, one per line, with where each value came from (secrets masked)."""
    print("\n".join(config_lines(settings)))
    return 0


def _exit_0(signum: int, frame: object) -> None:
    raise SystemExit(0)


def skip_httpx_cli() -> None:
    """Import httpx without its command line (``httpx._main``), which pulls in click, rich and pygments: about
    6 MiB of the headless supervisor's resident memory and 40 ms of its start, for a command nobody runs here."""
    if "httpx" not in sys.modules:
        sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]  # None makes its import fail


def main(argv: Sequence[str] | None = None) -> int:
    skip_httpx_cli()
    if "--headless" in (sys.argv[1:] if argv is None else argv):
        # Until headless mode handles them itself: a hangup while the supervisor loads must not kill it, and a
        # stop request ends it with exit 0 (nothing runs yet that would need stopping).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _exit_0)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        if args.command in SUBCOMMANDS:
            return int(importlib.import_module(SUBCOMMANDS[args.command][0]).main(args))
        settings = settings_from_args(args)
        if args.command == "config":
            return print_config(settings)
        if args.headless:
            from supervisor_tui.headless import run_headless

            return run_headless(settings, exit_on_fatal=args.exit_on_fatal)
        from supervisor_tui.embedded import run_embedded

        return run_embedded(settings)
    except ConfigError as exc:
        sys.stderr.write(f"supervisor-tui: {exc}\n")
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
