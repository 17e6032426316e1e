"""`supervisor-tui agent ...`: the console agent on the command line.

    agent run  [--api-base-url URL] [--console-id ID] [--interval-minutes N] [--dir DIR] [--dialect en|es]
    agent state STATE [--job NAME] [--error TEXT] [--dir DIR]      change the running agent's state
    agent exec [--job NAME] [--dir DIR] -- CMD ARGS...              report busy while CMD runs, then idle/error

Settings come from flags, then the environment (API_BASE_URL, CONSOLE_ID, HEARTBEAT_INTERVAL_MINUTES,
CONSOLE_DIALECT, CONSOLE_NAME, CONSOLE_ENROLLMENT_TOKEN), then a ``.env`` file in the agent's directory, as
the Spanish console clients are configured. ``agent state`` and ``agent exec`` reach the running agent through a unix
socket next to ``.console-id`` (see control.py).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from supervisor_tui.agent.client import DEFAULT_INTERVAL_MINUTES, Agent, State, parse_state
from supervisor_tui.agent.control import AgentAlreadyRunning, ControlError, ControlServer, control_path, request

EXIT_FAILED = 1
EXIT_USAGE = 2
ENV_KEYS = (
    "API_BASE_URL",
    "CONSOLE_ID",
    "HEARTBEAT_INTERVAL_MINUTES",
    "CONSOLE_DIALECT",
    "CONSOLE_NAME",
    "CONSOLE_ENROLLMENT_TOKEN",
)
STDERR_TAIL = 2000


class UsageError(Exception):
    """Bad flags or configuration: one line on stderr, exit 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="agent_command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="register this machine and send heartbeats until stopped")
    _connection_flags(run)
    state = sub.add_parser("state", help="change the running agent's state (sends a heartbeat at once)")
    state.add_argument("state", help="active, busy, idle or error (or the Spanish activa, ocupada, esperando)")
    state.add_argument("--job", help="what the console is working on (with busy)")
    state.add_argument("--error", help="what went wrong (with error)")
    state.add_argument("--dir", help="the running agent's directory (where .console-id is; default .)")
    ex = sub.add_parser("exec", help="run a command, reporting busy while it runs, then idle or error")
    ex.add_argument("--job", help="job name to report (default: the command line)")
    _connection_flags(ex)
    ex.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the command to run")


def _connection_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api-base-url", help="the supervisor's API base, e.g. http://host:4000/api ($API_BASE_URL)")
    p.add_argument("--console-id", help="this console's id ($CONSOLE_ID; default: a UUID v4 kept in .console-id)")
    p.add_argument(
        "--interval-minutes",
        help=f"minutes between heartbeats ($HEARTBEAT_INTERVAL_MINUTES, default {DEFAULT_INTERVAL_MINUTES:g})",
    )
    p.add_argument("--dir", help="where .console-id (and .env) live (default: the current directory)")
    p.add_argument("--name", help="console name ($CONSOLE_NAME; default 'Console <hostname>')")
    p.add_argument("--dialect", choices=("en", "es"), help="API dialect: en, or es for Spanish ($CONSOLE_DIALECT)")
    p.add_argument("--enrollment-token", help="needed to register a new console if the server asks for one")


def _dotenv(directory: Path) -> dict[str, str]:
    """KEY=VALUE lines of ``directory/.env`` for the agent's keys only."""
    out: dict[str, str] = {}
    try:
        lines = (directory / ".env").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return out
    for line in lines:
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() in ENV_KEYS:
            out[key.strip()] = value.strip().strip("'\"")
    return out


def _config(args: argparse.Namespace) -> dict[str, Any]:
    directory = Path(args.dir or ".")
    env = _dotenv(directory) | {k: os.environ[k] for k in ENV_KEYS if os.environ.get(k)}
    dialect = args.dialect or env.get("CONSOLE_DIALECT") or "en"
    if dialect not in ("en", "es"):
        raise UsageError(f"CONSOLE_DIALECT must be en or es, not {dialect!r}")
    minutes_text = args.interval_minutes or env.get("HEARTBEAT_INTERVAL_MINUTES") or str(DEFAULT_INTERVAL_MINUTES)
    try:
        minutes = float(minutes_text)
        if not minutes > 0:
            raise ValueError
    except ValueError:
        raise UsageError(
            f"HEARTBEAT_INTERVAL_MINUTES must be a positive number of minutes, not {minutes_text!r}"
        ) from None
    return {
        "api_base_url": args.api_base_url or env.get("API_BASE_URL") or "",
        "console_id": args.console_id or env.get("CONSOLE_ID") or None,
        "interval_minutes": minutes,
        "state_dir": directory,
        "name": args.name or env.get("CONSOLE_NAME") or None,
        "dialect": dialect,
        "enrollment_token": args.enrollment_token or env.get("CONSOLE_ENROLLMENT_TOKEN") or None,
    }


def _disabled_message(dialect: str) -> str:
    if dialect == "es":
        return (
            "API_BASE_URL no configurado: el heartbeat está deshabilitado "
            "(configúralo, p. ej. API_BASE_URL=http://localhost:4000/api)"
        )
    return "API_BASE_URL is not set: heartbeat is disabled (set it, e.g. API_BASE_URL=http://localhost:4000/api)"


def main(args: argparse.Namespace) -> int:
    try:
        if args.agent_command == "run":
            return _run(args)
        if args.agent_command == "state":
            return _state(args)
        return _exec(args)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except ControlError as exc:
        _err(str(exc))
        return EXIT_FAILED


def _err(message: str) -> None:
    sys.stderr.write(f"supervisor-tui agent: {message}\n")
    sys.stderr.flush()


def _run(args: argparse.Namespace) -> int:
    cfg = _config(args)
    if not cfg["api_base_url"]:
        _err(_disabled_message(cfg["dialect"]))
        return EXIT_USAGE
    try:
        agent = Agent(**cfg)
    except OSError as exc:
        raise UsageError(f"cannot keep the console id in {cfg['state_dir']}: {exc.strerror or exc}") from None
    control = ControlServer(agent, control_path(agent.state_dir))
    try:
        control.start()
    except AgentAlreadyRunning as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        raise UsageError(f"cannot listen for `agent state` on {control.path}: {exc.strerror or exc}") from None
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    agent.start()
    try:
        while not done.wait(3600):
            pass
    finally:
        control.stop()
        agent.stop()
    return 0


def _state(args: argparse.Namespace) -> int:
    try:
        state = parse_state(args.state)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    path = control_path(Path(args.dir or "."))
    req: dict[str, Any] = {"op": "state", "state": state.value, "job": args.job, "error": args.error}
    try:
        reply = request(path, req)
    except ControlError:
        raise ControlError(
            f"no agent is running for {Path(args.dir or '.').resolve()} (start `supervisor-tui agent run` there)"
        ) from None
    if not reply.get("delivered"):
        _err(f"state set to {state.value}, but the heartbeat was not accepted yet: {reply.get('detail')}")
    return 0


class _Reporter:
    """Reports for `agent exec`: through the running agent when there is one, else with an agent of its own."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.cfg = _config(args)
        self.path = control_path(self.cfg["state_dir"])
        self.own: Agent | None = None
        self.remote = False
        try:
            request(self.path, {"op": "ping"}, timeout=2.0)
            self.remote = True
        except ControlError:
            if self.cfg["api_base_url"]:
                self.own = Agent(**self.cfg, echo=sys.stderr).start()
            else:
                _err(f"not reporting: no agent is running here and {_disabled_message(self.cfg['dialect'])}")

    def report(self, state: State, job: str | None = None, error: Any = None) -> None:
        if self.remote:
            try:
                request(self.path, {"op": "state", "state": state.value, "job": job, "error": error})
            except ControlError as exc:
                _err(f"could not report {state.value}: {exc}")
        elif self.own is not None:
            self.own.set_state(state, current_job=job, error=error, wait=self.own.timeout + 1)

    def close(self) -> None:
        if self.own is not None:
            self.own.stop()


def _exec(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("agent exec needs a command: supervisor-tui agent exec --job NAME -- CMD ARGS...")
    job = args.job or " ".join(cmd)[:500]
    reporter = _Reporter(args)
    try:
        reporter.report(State.BUSY, job=job)
        try:
            proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
        except OSError as exc:
            message = f"cannot run {cmd[0]}: {exc.strerror or exc}"
            _err(message)
            reporter.report(State.ERROR, error={"message": message, "exit_status": 127})
            return 127
        tail: deque[bytes] = deque()
        size = 0
        assert proc.stderr is not None
        err_fd = proc.stderr.fileno()
        # The terminal sends Ctrl-C to the whole process group, the command included: ignore it here and
        # report how the command ended. SIGTERM aimed at us is passed on.
        forward = {
            signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN),
            signal.SIGTERM: signal.signal(signal.SIGTERM, lambda sig, _f: proc.send_signal(sig)),
        }
        try:
            for chunk in iter(lambda: os.read(err_fd, 65536), b""):
                sys.stderr.buffer.write(chunk)
                sys.stderr.buffer.flush()
                tail.append(chunk)
                size += len(chunk)
                while size - len(tail[0]) >= STDERR_TAIL and len(tail) > 1:
                    size -= len(tail.popleft())
            code = proc.wait()
        finally:
            for s, handler in forward.items():
                signal.signal(s, handler)
        status = code if code >= 0 else 128 - code
        if status == 0:
            reporter.report(State.IDLE)
        else:
            text = b"".join(tail)[-STDERR_TAIL:].decode("utf-8", errors="replace")
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            reporter.report(
                State.ERROR,
                error={"message": f"{job} {how}", "exit_status": status, "stderr_tail": text},
            )
        return status
    finally:
        reporter.close()
