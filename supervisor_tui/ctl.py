"""`supervisor-tui ctl`: supervisorctl-style control of a running supervisor over its admin API.

    ctl status | start KEY... | stop KEY... | restart KEY... | scale KEY N | logs [KEY] [-f] [--grep RE]
    ctl install MANIFEST.json | group start|stop|restart NAME | graph [--mermaid] | fleet

Several keys are handled in parallel. The exit code is non-zero when any action failed, with one line per
failure on stderr. The token comes from --token, $SUPERVISOR_TUI_AUTH_ADMIN_TOKEN, or <data dir>/admin.token.
What the supervisor sends (plugin output, names, error messages) is printed with its control and bidi
characters as visible escapes (core.printable), so the terminal shows them instead of obeying them.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec

from supervisor_tui import __version__
from supervisor_tui.config import ConfigError, load_settings, local_url
from supervisor_tui.core.graph import DependencyGraph, render_mermaid, render_text
from supervisor_tui.core.groups import GROUP_ACTIONS
from supervisor_tui.core.printable import printable
from supervisor_tui.core.status import NodeList
from supervisor_tui.plugins.manifest_schema import MAX_REPLICAS
from supervisor_tui.plugins.model import GroupActionResult, LogEntry, LogLines, PluginEnvelope, PluginList

EXIT_FAILED = 1
EXIT_USAGE = 2
TOKEN_ENV = "SUPERVISOR_TUI_AUTH_ADMIN_TOKEN"
Answer = TypeVar("Answer")


class CtlError(Exception):
    """One failure to report as one line."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """--url, --token, --data-dir, --config: which supervisor, and the admin token (see ``target``)."""
    parser.add_argument("--url", help="supervisor API (default: http://<server.host>:<server.port> from settings)")
    parser.add_argument("--token", help=f"admin token (default: ${TOKEN_ENV} or <data dir>/admin.token)")
    # SUPPRESS: the same flags given before the subcommand are not reset by these copies.
    parser.add_argument("--data-dir", default=argparse.SUPPRESS, help="where to find admin.token (default ./data)")
    parser.add_argument("--config", default=argparse.SUPPRESS, help="settings file (for the default URL and data dir)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per action (default 120)")
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    sub.add_parser("status", help="every plugin's state")
    for name in ("start", "stop", "restart"):
        p = sub.add_parser(name, help=f"{name} plugins and wait for the result")
        p.add_argument("keys", nargs="+", metavar="KEY")
    p = sub.add_parser("scale", help="run N replicas of a plugin (remembered across restarts)")
    p.add_argument("key", metavar="KEY")
    p.add_argument("replicas", metavar="N", type=int, help=f"how many replicas, 1 to {MAX_REPLICAS}")
    p = sub.add_parser(
        "logs", help="a plugin's newest log lines (every plugin's, each line after its key, without KEY)"
    )
    p.add_argument("key", metavar="KEY", nargs="?")
    p.add_argument("-n", "--lines", type=int, default=100)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (needs a KEY)")
    p.add_argument("--grep", metavar="RE", help="only lines matching this regular expression (the in-memory tail)")
    p = sub.add_parser("group", help="start, stop or restart every plugin of a group")
    p.add_argument("group_action", choices=GROUP_ACTIONS, metavar="start|stop|restart")
    p.add_argument("group", metavar="NAME")
    p = sub.add_parser("graph", help="the plugins' dependency graph, level by level")
    p.add_argument("--mermaid", action="store_true", help="print a mermaid graph TD block instead")
    p = sub.add_parser("install", help="install a plugin from a manifest file")
    p.add_argument("manifest", metavar="MANIFEST.json")
    p.add_argument("--start", action="store_true", help="start it once installed")
    sub.add_parser("fleet", help="the fleet's nodes (redis.url): up or lost, last seen, counts")


def main(args: argparse.Namespace) -> int:
    if args.action == "scale" and not 1 <= args.replicas <= MAX_REPLICAS:
        _complain(f"scale {args.key}: N must be from 1 to {MAX_REPLICAS}, got {args.replicas}")
        return EXIT_USAGE
    if args.action == "logs" and args.follow and (args.key is None or args.grep is not None):
        _complain("logs -f follows one plugin: give its KEY, and no --grep")
        return EXIT_USAGE
    try:
        url, token = target(args)
    except (CtlError, ConfigError) as exc:
        _complain(str(exc))
        return EXIT_USAGE
    try:
        return asyncio.run(_run(args, url, token))
    except KeyboardInterrupt:
        return 130


def target(args: argparse.Namespace) -> tuple[str, str]:
    """(API base URL, admin token) from the connection arguments, settings and the data dir."""
    # --host/--port given before "ctl" (the shared flags) say where the supervisor is, too.
    overrides = {
        "data.dir": getattr(args, "data_dir", None),
        "server.host": getattr(args, "host", None),
        "server.port": getattr(args, "port", None),
    }
    settings = load_settings(getattr(args, "config", None), overrides=overrides)
    url = args.url or local_url(settings.server.host, settings.server.port)
    token = args.token or os.environ.get(TOKEN_ENV, "") or settings.auth.admin_token
    if not token:
        path = settings.data_dir / "admin.token"
        try:
            token = path.read_text(encoding="utf-8").strip()
        except OSError:
            raise CtlError(f"no admin token: pass --token, set ${TOKEN_ENV}, or run next to {path}") from None
    return url.rstrip("/"), token


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


async def _run(args: argparse.Namespace, url: str, token: str) -> int:
    headers = {
        "Authorization": f"Bearer {token}",
        # The audit log records who acted from where: ctl, run by this user.
        "User-Agent": f"supervisor-tui-ctl/{__version__}",
        "X-Supervisor-Origin": "ctl",
        "X-Supervisor-Actor": _whoami(),
    }
    timeout = httpx.Timeout(args.timeout, connect=5.0)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout) as client:
        try:
            if args.action == "status":
                return await _status(client)
            if args.action in ("start", "stop", "restart"):
                return await _act(client, args.action, args.keys)
            if args.action == "scale":
                return await _scale(client, args.key, args.replicas)
            if args.action == "logs":
                if args.grep is not None or args.key is None:
                    return await _search_logs(client, args.key, args.lines, args.grep)
                return await _logs(client, args.key, args.lines, args.follow)
            if args.action == "group":
                return await _group(client, args.group_action, args.group)
            if args.action == "graph":
                return await _graph(client, args.mermaid)
            if args.action == "install":
                return await _install(client, Path(args.manifest), args.start)
            if args.action == "fleet":
                return await _fleet(client)
        except CtlError as exc:
            _complain(str(exc))
            return EXIT_FAILED
        except httpx.TransportError as exc:
            _complain(f"cannot reach {url}: {transport_reason(exc)}")
            return EXIT_FAILED
    return EXIT_USAGE


def _say(line: str) -> None:
    """One line on stdout, shown as it is by the terminal."""
    print(printable(line), flush=True)


def _complain(message: str) -> None:
    """One failure on stderr, shown as it is by the terminal."""
    sys.stderr.write(f"supervisor-tui ctl: {printable(message)}\n")


def transport_reason(exc: httpx.TransportError) -> str:
    """Why the supervisor could not be reached, in a few words."""
    if isinstance(exc, httpx.ConnectError):
        return "connection refused (is the supervisor running?)"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return type(exc).__name__


def _check(resp: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        body = {}
    if resp.status_code >= 400:
        err = body.get("error", {}) if isinstance(body, dict) else {}
        message = err.get("message") or resp.reason_phrase
        raise CtlError(f"{what}: {message} (HTTP {resp.status_code})")
    return body if isinstance(body, dict) else {}


def _answer(resp: httpx.Response, what: str, shape: type[Answer]) -> Answer:
    """A successful answer decoded into the admin API's own Struct for it (plugins/model.py, core/status.py)."""
    body = _check(resp, what)
    try:
        return msgspec.convert(body, shape)
    except msgspec.ValidationError as exc:
        raise CtlError(f"{what}: the supervisor answered in an unexpected shape: {exc}") from None


async def _status(client: httpx.AsyncClient) -> int:
    plugins = _answer(await client.get("/api/v1/plugins"), "status", PluginList).plugins
    rows: list[tuple[str, ...]] = [("KEY", "STATE", "PID", "PORT", "UPTIME", "RESTARTS", "HEALTH", "GROUP", "DETAIL")]
    for p in plugins:
        health = {True: "ok", False: "unhealthy", None: "-"}[p.healthy]
        cells = (
            p.key,
            p.state,
            str(p.pid or "-"),
            str(p.port or "-"),
            _uptime(p.uptime),
            str(p.restarts),
            health,
            p.group or "-",
            p.detail,
        )
        rows.append(tuple(printable(str(c)) for c in cells))  # escaped before the widths are measured
        for r in p.replicas if len(p.replicas) > 1 else ():  # one row per replica under its plugin
            sub = (
                f"{p.key}#{r.index}",
                r.state,
                str(r.pid or "-"),
                str(r.port or "-"),
                "-",
                str(r.restarts),
                "-",
                p.group or "-",
                r.detail,
            )
            rows.append(tuple(printable(str(c)) for c in sub))
    _table(rows)
    return 0


def _table(rows: list[tuple[str, ...]]) -> None:
    """Aligned columns; the last one is left as long as it is."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        _say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


async def _fleet(client: httpx.AsyncClient) -> int:
    nodes = _answer(await client.get("/api/v1/fleet/nodes"), "fleet", NodeList).nodes
    rows: list[tuple[str, ...]] = [("NODE", "STATUS", "LAST SEEN", "VERSION", "PLUGINS", "CONSOLES", "URL")]
    now = time.time()
    for n in nodes:
        cells = (
            n.node + (" *" if n.this_node else ""),
            n.status,
            f"{max(0, int(now - n.last_seen))}s ago",
            n.version,
            _counts(n.plugins),
            _counts(n.consoles),
            n.advertise_url,
        )
        rows.append(tuple(printable(str(c)) for c in cells))
    _table(rows)
    return 0


async def _scale(client: httpx.AsyncClient, key: str, replicas: int) -> int:
    resp = await client.post(f"/api/v1/plugins/{key}/scale", json={"replicas": replicas})
    plugin = _answer(resp, f"scale {key}", PluginEnvelope).plugin
    count = len(plugin.replicas)
    _say(f"{key}: {count} replica{'' if count == 1 else 's'}, {plugin.state} ({plugin.detail})")
    return 0


def _counts(by_state: dict[str, int]) -> str:
    return ", ".join(f"{n} {state}" for state, n in sorted(by_state.items()) if n) or "-"


def _uptime(seconds: float | None) -> str:
    if not seconds:
        return "-"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}:{s % 60:02d}"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


async def _act(client: httpx.AsyncClient, action: str, keys: list[str]) -> int:
    async def one(key: str) -> tuple[str, str | None, str]:
        """(key, the state after the action or None, and a warning); a failure is "!message" as the state."""
        try:
            done = _answer(await client.post(f"/api/v1/plugins/{key}/{action}"), f"{action} {key}", PluginEnvelope)
            return key, done.plugin.state, done.warning or ""
        except CtlError as exc:
            return key, f"!{exc}", ""
        except httpx.TransportError as exc:
            return key, f"!{action} {key}: {transport_reason(exc)}", ""

    failed = 0
    for key, result, warning in await asyncio.gather(*(one(k) for k in dict.fromkeys(keys))):
        if result and result.startswith("!"):
            failed += 1
            _complain(result[1:])
            continue
        _say(f"{key}: {result}")
        if warning:  # done, but e.g. not remembered across a restart (the database cannot be written)
            _complain(f"warning: {key}: {warning}")
    return EXIT_FAILED if failed else 0


async def _logs(client: httpx.AsyncClient, key: str, lines: int, follow: bool) -> int:
    if not follow:
        resp = await client.get(f"/api/v1/plugins/{key}/logs", params={"lines": lines})
        for line in _answer(resp, f"logs {key}", LogLines).lines:
            _print_log(line)
        return 0
    params: dict[str, Any] = {"lines": lines, "follow": "true"}
    # Ctrl-C ends a follower at once, as it ends tail -f: every line is flushed as it is printed and nothing else
    # needs undoing, so the exit does not depend on how the HTTP stream unwinds under asyncio's cancellation.
    signal.signal(signal.SIGINT, _exit_interrupted)
    async with client.stream("GET", f"/api/v1/plugins/{key}/logs", params=params, timeout=None) as resp:
        if resp.status_code >= 400:
            await resp.aread()
            _check(resp, f"logs {key}")
        try:
            async for raw in resp.aiter_lines():
                if raw.strip():
                    _print_log(_log_line(raw, f"logs {key}"))
        except httpx.TransportError:
            pass  # the connection went away mid-stream: said below, like an orderly end
    # Following only ends when the supervisor goes away (it is stopping, or it died).
    raise CtlError(f"logs {key}: the supervisor ended the stream (it stopped or restarted)")


def _exit_interrupted(signum: int, frame: object) -> None:
    os._exit(130)


_LOG_LINE = msgspec.json.Decoder(LogEntry)


def _log_line(raw: str, what: str) -> LogEntry:
    """One line of a followed log stream (newline-delimited LogEntry JSON)."""
    try:
        return _LOG_LINE.decode(raw)
    except msgspec.DecodeError as exc:
        raise CtlError(f"{what}: the supervisor sent a line in an unexpected shape: {exc}") from None


def _print_log(line: LogEntry, with_source: bool = False) -> None:
    ts = time.strftime("%H:%M:%S", time.localtime(line.ts))
    stream = {"stdout": "out", "stderr": "err", "supervisor": "sup"}.get(line.stream, "")
    source = f"{line.source} " if with_source else ""
    _say(f"{ts} {source}{stream} {line.message}")


async def _search_logs(client: httpx.AsyncClient, key: str | None, lines: int, grep: str | None) -> int:
    """The newest lines of one plugin or of all (each after its source), matching ``grep`` when given."""
    params: dict[str, Any] = {"lines": lines}
    if grep is not None:
        params["grep"] = grep
    what = "logs" + (f" {key}" if key else "")
    path = f"/api/v1/plugins/{key}/logs" if key else "/api/v1/logs"
    for line in _answer(await client.get(path, params=params), what, LogLines).lines:
        _print_log(line, with_source=key is None)
    return 0


async def _group(client: httpx.AsyncClient, action: str, group: str) -> int:
    resp = await client.post(f"/api/v1/groups/{group}/{action}")
    for p in _answer(resp, f"{action} group {group}", GroupActionResult).plugins:
        _say(f"{p.key}: {p.state}")
    return 0


async def _graph(client: httpx.AsyncClient, mermaid: bool) -> int:
    graph = DependencyGraph.from_dict(_check(await client.get("/api/v1/graph"), "graph"))
    for line in render_mermaid(graph) if mermaid else render_text(graph):
        _say(line)
    return 0


async def _install(client: httpx.AsyncClient, path: Path, start: bool) -> int:
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))  # noqa: ASYNC240 - one small file, nothing else runs
    except OSError as exc:
        raise CtlError(f"install: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise CtlError(f"install: {path} is not valid JSON: {exc}") from None
    resp = await client.post("/api/v1/plugins/install", json={"manifest": manifest, "autoStart": start})
    plugin = _answer(resp, f"install {path}", PluginEnvelope).plugin
    _say(f"{plugin.key}: installed ({plugin.state})")
    return 0
