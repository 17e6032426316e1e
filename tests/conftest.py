"""Shared test fixtures: settings in a tmp dir, plugin folders, a running Supervisor, a headless process.

Fixtures (all function-scoped, everything under ``tmp_path``):

- ``make_settings(**overrides)`` -> Settings with plugins/ and data/ in tmp_path, a private plugin port range (a
  block of 100 whose ports all bind, ``free_port_block``) and ``server.port`` 0; ``overrides`` map
  "section.key" to values. The ``settings`` fixture is ``make_settings()``. At teardown the plugin
  cgroups of a supervisor of those settings that did not exit cleanly are removed.
- ``make_plugin(key, script, **manifest_fields)`` -> the plugin folder. ``script`` is a file name from
  tests/fixtures/plugins/ ("sleeper.py", "crash_at_start.py", "crash_after.py", "ignore_term.py", "grandchild.py",
  "http_server.py") or Python source (written as plugin.py). The manifest gets ``command: ["python", <script>]``,
  fast test timings (startsecs 0.3, backoff_max_s 0.2, stopwaitsecs 3) and ``env.SPAWN_LOG`` (see ``spawns``),
  then ``manifest_fields`` on top (``env`` is merged). The module-level ``write_plugin(plugins_dir, key, script,
  **fields)`` does the same for any folder.
- ``supervisor`` -> an open ``Supervisor`` on ``settings`` (closed after the test); ``open_supervisor(settings)``
  is the async context manager behind it; its close is bounded (``close_within``, ``CLOSE_TIMEOUT``): a close that
  hangs fails the test, naming the plugins not stopped and the tasks still running, instead of hanging the run.
- ``headless`` -> a factory: ``headless(*extra_args, settings=None)`` starts ``python -m supervisor_tui --headless
  --log-format json`` on the settings' dirs and returns a ``HeadlessProcess`` (JSON lines parsed as they come;
  ``wait_for(predicate)``, ``signal(sig)``, ``wait(timeout)``; ``pause_reading()`` leaves its stdout pipe unread
  until ``resume_reading()``); every one still running is killed at teardown.
- ``spawns(folder)`` -> pids the fixture plugin in ``folder`` recorded, one per spawn.
- ``plugin_processes(path)`` -> live (non-zombie) processes whose working directory is under ``path``: plugins
  run in their folder and their children inherit it, so this finds orphans (read from /proc: it is polled).
- ``no_plugin_leftovers`` -> fails a test that leaves processes running under its tmp dir (and kills them).
- ``shared_headless`` (session-scoped) -> one ``SharedHeadless`` supervisor for the read-only API tests: a headless
  process with one plugin, "web" (sleeper.py, not autostarted), and ``consoles.auth = "none"``; a test on it may
  add a console but must leave plugins as they are. ``fixtures.api.harness.shared_api`` gives it an ``Api``.
- ``free_port()`` and ``free_port_block(size)`` (tests/fixtures/ports.py): loopback ports no other pytest process of
  the run hands out (the suite runs on several xdist workers).
- ``wait_until(predicate, timeout)`` -> the one polling helper: polls a condition (sync or async) with a deadline;
  ``pause=pilot.pause`` under Pilot. ``wait_until_sync`` is the same for tests without an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from fixtures.ports import free_port_block

from supervisor_tui.config import Settings, load_settings
from supervisor_tui.core.supervisor import Supervisor, owner_id
from supervisor_tui.plugins.cgroups import CgroupTree

FIXTURE_PLUGINS = Path(__file__).parent / "fixtures" / "plugins"
REPO = Path(__file__).resolve().parent.parent

FAST = {"startsecs": 0.3, "backoff_max_s": 0.2, "stopwaitsecs": 3}


def make_test_settings(root: Path, **overrides: Any) -> Settings:
    """Settings rooted in ``root`` with a private plugin port range; ``overrides`` use "section.key" names
    (or section_key, e.g. plugins_dir=...)."""
    start = free_port_block()
    values: dict[str, Any] = {
        "plugins.dir": str(root / "plugins"),
        "data.dir": str(root / "data"),
        "plugins.port_range_start": start,
        "plugins.port_range_end": start + 99,
        "server.port": 0,
    }
    for name, value in overrides.items():
        values[name if "." in name else name.replace("_", ".", 1)] = value
    (root / "plugins").mkdir(parents=True, exist_ok=True)
    return load_settings(env={}, overrides=values, base_dir=root)


def write_plugin(plugins_dir: Path, key: str, script: str, **fields: Any) -> Path:
    """Write plugins_dir/key/manifest.json for a fixture script (or Python source); returns the folder."""
    folder = plugins_dir / key
    folder.mkdir(parents=True, exist_ok=True)
    if "\n" in script:
        (folder / "plugin.py").write_text(script, encoding="utf-8")
        script_path = "plugin.py"
    else:
        script_path = str(FIXTURE_PLUGINS / script)
        assert Path(script_path).is_file(), f"no fixture plugin {script}"
    env = {"SPAWN_LOG": str(folder / "spawns.log")}
    env.update(fields.pop("env", {}))
    manifest: dict[str, Any] = {"key": key, "command": ["python", script_path], **FAST, "env": env}
    if script == "crash_at_start.py":
        # Its exit is a failed start only when it comes within startsecs, and on a loaded machine Python's own
        # startup can take longer than FAST's 0.3 s: the plugin would count as RUNNING, then as crashed.
        manifest["startsecs"] = 10
    manifest.update(fields)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return folder


def spawns(folder: Path) -> list[int]:
    """Pids recorded by a fixture plugin, one per spawn."""
    path = folder / "spawns.log"
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split()]


def _cwds() -> Iterator[tuple[int, str]]:
    """(pid, working directory) of every process that has one, read from /proc: psutil's ``process_iter`` reads
    far more per process, and tests poll this (on a busy machine with 2000 processes: 0.5 s a call against 0.04 s).
    Elsewhere than Linux, psutil's way."""
    if not os.path.isdir("/proc/self"):
        for p in psutil.process_iter(["cwd"]):
            if p.info["cwd"]:
                yield p.pid, p.info["cwd"]
        return
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cwd = os.readlink(f"/proc/{entry.name}/cwd")
            except OSError:  # gone meanwhile, or a zombie (which has no working directory)
                continue
            # A removed folder reads as "<path> (deleted)": still the path, as psutil reports it.
            yield int(entry.name), cwd.removesuffix(" (deleted)")


def plugin_processes(path: Path) -> list[psutil.Process]:
    """Live processes (zombies excluded) whose working directory is inside ``path``; ``p.info["cwd"]`` says where."""
    root = str(path.resolve())
    found = []
    for pid, cwd in _cwds():
        if cwd != root and not cwd.startswith(root + os.sep):
            continue
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                p.info = {"cwd": cwd}
                found.append(p)
        except psutil.Error:
            continue
    return found


class _Deadline:
    """The one polling deadline: ``check()`` fails the test once ``timeout`` seconds have passed."""

    def __init__(self, timeout: float, failure: str | Callable[[], str] | None, predicate: object) -> None:
        self.timeout, self.failure, self.predicate = timeout, failure, predicate
        self.at = time.monotonic() + timeout

    def check(self) -> None:
        if time.monotonic() > self.at:
            failure = self.failure
            if callable(failure):
                raise AssertionError(failure())
            raise AssertionError(f"{failure or 'condition not met'} within {self.timeout}s: {self.predicate}")


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,  # noqa: ASYNC109
    interval: float = 0.05,
    pause: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    failure: str | Callable[[], str] | None = None,
) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy, which is returned; fail after
    ``timeout`` seconds with ``failure`` (a text, or a function giving it). ``pause(interval)`` runs between tries:
    ``asyncio.sleep``, or ``pilot.pause`` so that a Textual app under Pilot processes its messages meanwhile."""
    deadline = _Deadline(timeout, failure, predicate)
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        deadline.check()
        await pause(interval)


def wait_until_sync(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    interval: float = 0.05,
    failure: str | Callable[[], str] | None = None,
) -> Any:
    """``wait_until`` for tests without an event loop (a tmux terminal, a child process's log): sleeps between
    tries."""
    deadline = _Deadline(timeout, failure, predicate)
    while not (value := predicate()):
        deadline.check()
        time.sleep(interval)
    return value


# Seconds a supervisor's close may take in a fixture's teardown. pytest-timeout (method "signal", the default on
# POSIX) arms one SIGALRM for setup, call and teardown together and fails the test when it fires; teardown then runs
# with no timer at all, so a close that hangs (a stop that never returns) would leave the run stuck forever.
CLOSE_TIMEOUT = 60.0


async def close_within(sup: Supervisor, timeout: float = CLOSE_TIMEOUT) -> None:  # noqa: ASYNC109
    """``sup.close()``, or a test failure naming the plugins still up and the tasks still running after ``timeout``
    (the no_plugin_leftovers fixture then kills what the plugins left)."""
    closing = asyncio.create_task(sup.close(), name="supervisor.close")
    done, _ = await asyncio.wait([closing], timeout=timeout)
    if done:
        return closing.result()
    # what is stuck, seen before the close is cancelled
    up = [f"{p.key} {p.state} pid {p.pid}" for p in sup.plugins() if p.state not in ("STOPPED", "INVALID")]
    current = asyncio.current_task()
    tasks = [
        f"{t.get_name()} at {frames[-1].f_code.co_qualname}:{frames[-1].f_lineno}"
        if (frames := t.get_stack(limit=1))
        else t.get_name()
        for t in asyncio.all_tasks()
        if t is not current
    ]
    closing.cancel()
    await asyncio.wait([closing], timeout=5.0)
    pytest.fail(
        f"supervisor.close() did not return within {timeout:g}s; plugins not stopped: {up or 'none'}; "
        f"tasks still running: {sorted(tasks)}",
        pytrace=False,
    )


@contextlib.asynccontextmanager
async def open_supervisor(settings: Settings) -> AsyncIterator[Supervisor]:
    """An open Supervisor that is always closed (plugins stopped) afterwards, within ``CLOSE_TIMEOUT``."""
    sup = Supervisor(settings)
    await sup.open()
    try:
        yield sup
    finally:
        await close_within(sup)


def cgroup_tree(settings: Settings) -> CgroupTree | None:
    """Where a supervisor of ``settings`` started by this process keeps its plugin cgroups (None: no cgroup2)."""
    return CgroupTree.locate(owner_id(settings.data_dir))


@pytest.fixture
def make_settings(tmp_path: Path) -> Iterator[Callable[..., Settings]]:
    made: list[Settings] = []

    def make(**overrides: Any) -> Settings:
        made.append(make_test_settings(tmp_path, **overrides))
        return made[-1]

    yield make
    for settings in made:  # a SIGKILLed supervisor leaves its cgroups behind: not on this machine
        tree = cgroup_tree(settings)
        if tree is not None and tree.path.exists():
            tree.clear()


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def make_plugin(settings: Settings) -> Callable[..., Path]:
    return lambda key, script, **fields: write_plugin(settings.plugins_dir, key, script, **fields)


@pytest.fixture
async def supervisor(settings: Settings) -> AsyncIterator[Supervisor]:
    async with open_supervisor(settings) as sup:
        yield sup


@pytest.fixture
def add_plugin(supervisor: Supervisor, make_plugin: Callable[..., Path]) -> Callable[..., Any]:
    """Write a plugin folder (autostart off) and load it into the running supervisor; returns the folder."""

    async def add(key: str, script: str, **fields: object) -> Path:
        fields.setdefault("autostart", False)
        folder = make_plugin(key, script, **fields)
        result = await supervisor.reload()
        assert key in result["added"], result
        return folder

    return add


@pytest.fixture
def no_plugin_leftovers(tmp_path: Path) -> Iterator[None]:
    """Whatever a test leaves running under its tmp dir is killed, and the test fails for it. Use it with
    ``pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")``."""
    yield
    leftovers = plugin_processes(tmp_path)
    for p in leftovers:
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert not leftovers, f"processes outlived the test: {[(p.pid, p.info.get('cwd')) for p in leftovers]}"


class HeadlessProcess:
    """``supervisor-tui --headless --log-format json`` as a child process, its stdout parsed line by line."""

    def __init__(self, settings: Settings, extra_args: tuple[str, ...]) -> None:
        start, end = settings.port_range
        env = dict(os.environ)
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "SUPERVISOR_TUI_PLUGINS_PORT_RANGE_START": str(start),
                "SUPERVISOR_TUI_PLUGINS_PORT_RANGE_END": str(end),
            }
        )
        args = [
            sys.executable,
            "-m",
            "supervisor_tui",
            "--headless",
            "--plugins-dir",
            str(settings.plugins_dir),
            "--data-dir",
            str(settings.data_dir),
            "--port",
            "0",
            "--log-format",
            "json",
            *extra_args,
        ]
        self.proc = subprocess.Popen(
            args,
            cwd=settings.base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []
        self.stderr = ""
        self._cond = threading.Condition()
        self._reading = threading.Event()
        self._reading.set()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._reading.wait()
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                with contextlib.suppress(ValueError):
                    self.records.append(json.loads(line))
                self._cond.notify_all()

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = self.proc.stderr.read()

    def pause_reading(self) -> None:
        """Stop reading stdout after the current line: the pipe fills up and the process's writes to it block."""
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def find(self, predicate: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._cond:
            return [r for r in self.records if predicate(r)]

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        """The first JSON record matching ``predicate`` (waiting up to ``timeout`` seconds for it)."""

        def found() -> dict[str, Any] | None:
            matches = self.find(predicate)
            if matches:
                return matches[0]
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"headless exited with {self.proc.returncode}; stderr: {self.stderr}")
            return None

        return await wait_until(found, timeout)

    async def wait_state(self, key: str, state: str, timeout: float = 30.0, after: int = 0) -> dict[str, Any]:  # noqa: ASYNC109
        """The first state-change record of ``key`` to ``state`` at or after record index ``after``."""

        def match(r: dict[str, Any]) -> bool:
            return r.get("plugin") == key and r.get("to") == state and r.get("event") == "plugin_state"

        def found() -> dict[str, Any] | None:
            with self._cond:
                hits = [r for r in self.records[after:] if match(r)]
            if hits:
                return hits[0]
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"headless exited with {self.proc.returncode}; stderr: {self.stderr}")
            return None

        return await wait_until(found, timeout)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30.0) -> int:  # noqa: ASYNC109
        await wait_until(lambda: self.proc.poll() is not None, timeout)
        self._reader.join(5)
        self._err_reader.join(5)
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def terminate(self) -> None:
        """SIGTERM if still running, SIGKILL after 30 s."""
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def headless(settings: Settings) -> Iterator[Callable[..., HeadlessProcess]]:
    started: list[HeadlessProcess] = []

    def start(*extra_args: str, settings_: Settings | None = None) -> HeadlessProcess:
        proc = HeadlessProcess(settings_ or settings, extra_args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.terminate()


@dataclass(frozen=True)
class SharedHeadless:
    """The session's shared headless supervisor: where it answers, its tokens and its settings."""

    url: str
    admin_token: str
    plugin_token: str
    settings: Settings


@pytest.fixture(scope="session")
def shared_headless(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedHeadless]:
    settings = make_test_settings(tmp_path_factory.mktemp("shared-headless"), **{"consoles.auth": "none"})
    write_plugin(settings.plugins_dir, "web", "sleeper.py", autostart=False)
    proc = HeadlessProcess(settings, ())
    try:

        def listening() -> str | None:
            if proc.proc.poll() is not None:
                raise AssertionError(f"headless exited with {proc.proc.returncode}; stderr: {proc.stderr}")
            return next((str(r["url"]) for r in proc.find(lambda r: r.get("event") == "api_listening")), None)

        url = wait_until_sync(listening, 60)
        wait_until_sync(lambda: httpx.get(f"{url}/ready").status_code == 200, 60)
        tokens = [(settings.data_dir / f"{name}.token").read_text().strip() for name in ("admin", "plugin")]
        yield SharedHeadless(url, tokens[0], tokens[1], settings)
    finally:
        proc.terminate()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """One throwaway PostgreSQL cluster for the session (tests/fixtures/postgres.py), started when first asked."""
    from fixtures.postgres import PgCluster

    cluster = PgCluster.create()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def console_store(request: pytest.FixtureRequest) -> str:
    """``consoles.store`` for a test run against each console store: "sqlite", or a fresh PostgreSQL database's
    DSN on the session's cluster."""
    if request.param == "sqlite":
        return "sqlite"
    cluster = request.getfixturevalue("pg_cluster")
    dsn: str = cluster.new_database()
    return dsn
