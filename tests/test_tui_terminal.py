"""``supervisor-tui`` in a real terminal (tmux): keys reach it, plugins stop and start, quit and hangup clean up.

The screen is read with ``tmux capture-pane``; nothing here talks to the app other than through the terminal.
"""

from __future__ import annotations

import contextlib
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import make_test_settings, plugin_processes, wait_until_sync, write_plugin

from supervisor_tui.config import Settings

REPO = Path(__file__).resolve().parent.parent
TMUX = shutil.which("tmux")


pytestmark = [
    pytest.mark.skipif(TMUX is None, reason="tmux is not installed"),
    pytest.mark.usefixtures("no_plugin_leftovers"),
]

# The command under test; SUPERVISOR_TUI_TEST_COMMAND swaps in another launcher (same flags).
COMMAND = os.environ.get("SUPERVISOR_TUI_TEST_COMMAND", str(Path(sys.executable).parent / "supervisor-tui"))


class Terminal:
    """One detached tmux session, on a tmux server of its own, running a command; keys in, screen text out."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str], size: tuple[int, int] = (100, 30)) -> None:
        self.name = f"suptui-{uuid.uuid4().hex[:8]}"
        self.tmux = [TMUX or "tmux", "-L", self.name]  # a private server: freezing it touches no other terminal
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # tmux hands a detached session COLUMNS=80 LINES=24, which would pin the program to that size.
        shell = f"cd {shlex.quote(str(cwd))} && exec env -u COLUMNS -u LINES {exports} {command}"
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-s", self.name, "-x", str(size[0]), "-y", str(size[1]), shell],
            check=True,
        )
        self.pid = int(self.show("#{pane_pid}"))
        self.server_pid = int(self.show("#{pid}"))
        self.tty = self.show("#{pane_tty}")

    def show(self, fmt: str) -> str:
        out = subprocess.run(
            [*self.tmux, "display-message", "-p", "-t", self.name, fmt], check=True, capture_output=True, text=True
        )
        return out.stdout.strip()

    def screen(self) -> str:
        out = subprocess.run([*self.tmux, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True)
        return out.stdout

    def pane_title(self) -> str:
        """The title the program in the pane set (OSC 0/2); tmux starts it as the host name."""
        return self.show("#{pane_title}")

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def freeze(self) -> None:
        """Stop the terminal reading the program's output (its tmux server is stopped): writes to it block."""
        os.kill(self.server_pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.server_pid, signal.SIGCONT)

    def wait_screen(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> str:
        shown = [""]

        def matches() -> str | None:
            shown[0] = self.screen()
            return shown[0] if predicate(shown[0]) else None

        return str(wait_until_sync(matches, timeout, 0.1, failure=lambda: f"screen never matched:\n{shown[0]}"))

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.thaw()
        subprocess.run([*self.tmux, "kill-session", "-t", self.name], capture_output=True, check=False)


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def plugin_pids(folder: Path) -> list[int]:
    where = str(folder.resolve())
    return [p.pid for p in plugin_processes(folder) if p.info["cwd"] == where]


@pytest.fixture
def terminal(tmp_path: Path) -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(
        term: str = "tmux-256color",
        plugin: str = "sleeper.py",
        stdin: str = "",
        size: tuple[int, int] = (100, 30),
        autostart: bool = True,
    ) -> Terminal:
        settings = make_test_settings(tmp_path)
        write_plugin(settings.plugins_dir, "sleepy", plugin, autostart=autostart)
        start_port, end_port = settings.port_range
        env = {
            "TERM": term,
            "SUPERVISOR_TUI_PLUGINS_PORT_RANGE_START": str(start_port),
            "SUPERVISOR_TUI_PLUGINS_PORT_RANGE_END": str(end_port),
            "PYTHONPATH": str(REPO),
        }
        args = shlex.join(
            ["--plugins-dir", str(settings.plugins_dir), "--data-dir", str(settings.data_dir), "--port", "0"]
        )
        t = Terminal(f"{COMMAND} {args}{stdin}", tmp_path, env, size)
        t.plugin_folder = settings.plugins_dir / "sleepy"  # type: ignore[attr-defined]
        started.append(t)
        return t

    yield start
    for t in started:
        t.kill()
        wait_until_sync(lambda t=t: gone(t.pid), 20)


@pytest.mark.parametrize("term", ["tmux-256color", "screen", "xterm", "xterm-256color"])
def test_keys_stop_and_start_a_plugin_then_quit_stops_it(terminal: Callable[..., Terminal], term: str) -> None:
    t = terminal(term)
    folder = t.plugin_folder  # type: ignore[attr-defined]
    t.wait_screen(lambda s: "sleepy" in s and "RUNNING" in s)
    wait_until_sync(lambda: len(plugin_pids(folder)) == 1)
    first = plugin_pids(folder)[0]

    t.keys("x")
    t.wait_screen(lambda s: "Stop plugin sleepy?" in s)
    t.keys("y")
    t.wait_screen(lambda s: "STOPPED" in s and "Stop plugin" not in s)
    wait_until_sync(lambda: gone(first), 15)

    t.keys("s")
    t.wait_screen(lambda s: "RUNNING" in s)
    wait_until_sync(lambda: len(plugin_pids(folder)) == 1)
    second = plugin_pids(folder)[0]
    assert second != first

    t.keys("q")
    t.wait_screen(lambda s: "Quit supervisor-tui?" in s and "1 running plugin will" in s)
    t.keys("y")
    wait_until_sync(lambda: gone(t.pid), 20)
    wait_until_sync(lambda: gone(second), 10)


def test_closing_the_terminal_stops_plugins_and_exits(terminal: Callable[..., Terminal]) -> None:
    t = terminal()
    folder = t.plugin_folder  # type: ignore[attr-defined]
    t.wait_screen(lambda s: "sleepy" in s and "RUNNING" in s)
    wait_until_sync(lambda: len(plugin_pids(folder)) == 1)
    plugin = plugin_pids(folder)[0]
    proc = psutil.Process(t.pid)
    t.kill()  # tmux sends SIGHUP to the pane's process, like a dropped SSH session
    wait_until_sync(lambda: gone(t.pid), 20)
    wait_until_sync(lambda: gone(plugin), 10)
    del proc


NOISY = """\
import os, sys, time
for i in range(200):
    print(f"NOISY-OUT {i}", flush=True)
    sys.stderr.write(f"NOISY-ERR {i}\\n")
got = sys.stdin.read()  # a plugin that reads stdin must get EOF, never the operator's keys
print(f"NOISY-STDIN {len(got)} bytes", flush=True)
while True:
    time.sleep(3600)
"""


def test_plugin_output_and_stdin_never_reach_the_terminal(terminal: Callable[..., Terminal]) -> None:
    t = terminal(plugin=NOISY)
    screen = t.wait_screen(lambda s: "sleepy" in s and "RUNNING" in s)
    assert "NOISY" not in screen  # the plugins pane is showing: plugin output only goes to the logs pane
    # A key that moves the focus takes effect once the app's queue gets to it: keys sent before that go to the
    # widget that had the focus. So each step waits for the screen to show it was done (the field is focused
    # before it is drawn).
    t.keys("3")
    t.wait_screen(lambda s: "─ Logs" in s)
    t.keys("/")
    t.wait_screen(lambda s: "filter logs:" in s)
    t.keys("-l", "stdin")  # the logs filter: only the line the plugin printed after reading stdin
    screen = t.wait_screen(lambda s: "NOISY-STDIN 0 bytes" in s)
    t.keys("Escape")  # alone: tmux would read escape followed at once by "1" as alt+1
    t.wait_screen(lambda s: "matching" not in s)
    t.keys("1")
    screen = t.wait_screen(lambda s: "Key" in s and "NOISY" not in s)
    t.keys("x")  # keys still reach the TUI, not the plugin
    t.wait_screen(lambda s: "Stop plugin sleepy?" in s)
    t.keys("n")
    t.wait_screen(lambda s: "Stop plugin sleepy?" not in s)


def api_of(data: Path) -> httpx.Client:
    """A client of the admin API of the supervisor whose data directory is ``data``."""
    url = re.findall(r"API listening on (\S+)", (data / "logs" / "supervisor.log").read_text())[-1]
    admin = {"Authorization": f"Bearer {(data / 'admin.token').read_text().strip()}"}
    return httpx.Client(base_url=url, headers=admin, timeout=10)


def stays_stopped(api: httpx.Client, key: str) -> None:
    """``key`` is STOPPED, and still is a moment later (a start asked for would have shown by then)."""
    for _ in range(10):
        assert api.get(f"/api/v1/plugins/{key}").json()["state"] == "STOPPED"
        time.sleep(0.1)


@pytest.mark.parametrize("typed", ["/abc", "/s1"])
def test_keys_in_one_write_after_slash_go_to_the_filter(
    terminal: Callable[..., Terminal], tmp_path: Path, typed: str
) -> None:
    # Over a slow link every byte of "/s1" arrives in one read; "s" on the plugins table would start the plugin.
    t = terminal(autostart=False)
    t.wait_screen(lambda s: "sleepy" in s and "STOPPED" in s)
    t.keys("-l", typed)  # one send-keys: the keys reach the program together
    text = typed[1:]
    t.wait_screen(lambda s: f"filter: {text} (0 shown)" in s and "sleepy" not in s)
    with api_of(tmp_path / "data") as api:
        stays_stopped(api, "sleepy")
    assert not plugin_pids(t.plugin_folder)  # type: ignore[attr-defined]
    t.keys("Escape")
    t.wait_screen(lambda s: "sleepy" in s and "filter:" not in s)


def test_plugin_output_cannot_set_the_terminal_title(terminal: Callable[..., Terminal]) -> None:
    t = terminal(plugin="hostile_output.py")  # prints OSC 0 "PWNED" (and OSC 52, a bidi override)
    t.wait_screen(lambda s: "sleepy" in s and "RUNNING" in s)
    t.keys("3")
    screen = t.wait_screen(lambda s: "hostile-out" in s and "hostile-err" in s)  # the logs pane shows both lines
    assert "PWNED" not in t.pane_title()
    assert r"\x1b]0;PWNED\x07" in screen  # the operator sees it, as an escape


def test_stdin_at_eof_exits_cleanly_without_spinning(terminal: Callable[..., Terminal], tmp_path: Path) -> None:
    t = terminal(stdin=" < /dev/null")  # the terminal is there for output, but input is gone from the start
    wait_until_sync(lambda: gone(t.pid), 30)
    assert not plugin_pids(t.plugin_folder)  # type: ignore[attr-defined]
    assert "Traceback" not in t.screen()


def test_sigterm_stops_plugins_and_exits(terminal: Callable[..., Terminal]) -> None:
    t = terminal()
    folder = t.plugin_folder  # type: ignore[attr-defined]
    t.wait_screen(lambda s: "sleepy" in s and "RUNNING" in s)
    wait_until_sync(lambda: len(plugin_pids(folder)) == 1)
    plugin = plugin_pids(folder)[0]
    os.kill(t.pid, signal.SIGTERM)
    wait_until_sync(lambda: gone(t.pid), 20)
    wait_until_sync(lambda: gone(plugin), 10)


async def api_url(proc: Any) -> str:
    """Where the headless supervisor ``proc`` serves its API, once it does."""
    record = await proc.wait_for(lambda r: r.get("event") == "api_listening" and bool(r.get("url")), timeout=30)
    return str(record["url"])


def admin_token(settings: Settings) -> str:
    return (settings.data_dir / "admin.token").read_text().strip()


def attach_terminal(url: str, settings: Settings, tmp_path: Path) -> Terminal:
    """``supervisor-tui attach`` to the supervisor at ``url`` (its admin token from ``settings``) in a terminal."""
    command = f"{COMMAND} attach {shlex.quote(url)} --token {shlex.quote(admin_token(settings))}"
    return Terminal(command, tmp_path, {"TERM": "tmux-256color", "PYTHONPATH": str(REPO)})


async def test_attach_in_a_terminal_controls_a_headless_supervisor(
    headless: Any, settings: Settings, make_plugin: Callable[..., Path], tmp_path: Path
) -> None:
    make_plugin("sleepy", "sleeper.py", autostart=True)
    proc = headless()
    url = await api_url(proc)
    await proc.wait_state("sleepy", "RUNNING")
    t = attach_terminal(url, settings, tmp_path)
    try:
        t.wait_screen(lambda s: "sleepy" in s and "RUNNING" in s and "attached" in s)
        t.keys("x")
        t.wait_screen(lambda s: "Stop plugin sleepy?" in s)
        t.keys("y")
        await proc.wait_state("sleepy", "STOPPED")
        t.wait_screen(lambda s: "STOPPED" in s)
        t.keys("s")
        t.wait_screen(lambda s: "RUNNING" in s)
        t.keys("q")
        t.wait_screen(lambda s: "keep running" in s)
        t.keys("y")
        wait_until_sync(lambda: gone(t.pid), 20)
        assert proc.proc.poll() is None  # the supervisor and its plugins keep running
    finally:
        t.kill()


WRITE_SYSCALL = {"x86_64": 1, "aarch64": 64}.get(platform.machine())

CHATTY = """\
import time
i = 0
while True:
    for _ in range(20):
        print(f"CHATTY {i:08d} " + "c" * 150)
        i += 1
    print(end="", flush=True)
    time.sleep(0.01)
"""


def blocked_writing_to_terminal(pid: int) -> bool:
    """Whether a thread of ``pid`` is inside write(2) on its terminal (fd 2, where Textual draws)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            fields = (task / "syscall").read_text().split()
            if len(fields) > 1 and fields[0] == str(WRITE_SYSCALL) and int(fields[1], 16) == 2:
                return True
    return False


def lines_in(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def chatty_tui(terminal: Callable[..., Terminal], tmp_path: Path) -> tuple[Terminal, httpx.Client, Path]:
    """The TUI in a big terminal (every frame is large) showing the logs of a plugin that prints fast; a client
    of its API; and the plugin's log file."""
    t = terminal(plugin=CHATTY, size=(200, 50))
    t.wait_screen(lambda s: "sleepy" in s and "RUNNING" in s)
    t.keys("3")
    t.wait_screen(lambda s: "CHATTY" in s)
    data = tmp_path / "data"
    return t, api_of(data), data / "logs" / "sleepy.log"


@pytest.mark.skipif(WRITE_SYSCALL is None, reason="write(2)'s number on this machine is not known here")
def test_a_terminal_that_stops_reading_does_not_stop_the_supervisor(
    terminal: Callable[..., Terminal], tmp_path: Path
) -> None:
    t, api, plugin_log = chatty_tui(terminal, tmp_path)
    with api:
        t.freeze()
        try:
            wait_until_sync(lambda: blocked_writing_to_terminal(t.pid))
            # The supervisor keeps reading the plugin's output and the TUI keeps drawing it; nobody reads the
            # frames. The API (same process, same event loop) answers all along.
            target = lines_in(plugin_log) + 20_000
            while lines_in(plugin_log) < target:
                assert api.get("/api/v1/status").status_code == 200
            assert blocked_writing_to_terminal(t.pid)
            # The last change the logs pane shows happens while the terminal is still not reading.
            assert api.post("/api/v1/plugins/sleepy/stop").status_code == 200
            wait_until_sync(lambda: api.get("/api/v1/plugins/sleepy").json()["state"] == "STOPPED")
            for _ in range(20):
                assert api.get("/api/v1/status").status_code == 200
        finally:
            t.thaw()
    # The terminal reads again: the whole screen is drawn anew, so the frames dropped meanwhile are not missed.
    t.wait_screen(lambda s: "-> STOPPED" in s and "Consoles" in s)
    t.keys("q")
    t.wait_screen(lambda s: "Quit supervisor-tui?" in s)
    t.keys("y")
    wait_until_sync(lambda: gone(t.pid), 20)


@pytest.mark.skipif(WRITE_SYSCALL is None, reason="write(2)'s number on this machine is not known here")
def test_sigterm_ends_the_tui_while_its_terminal_is_not_reading(
    terminal: Callable[..., Terminal], tmp_path: Path
) -> None:
    t, api, plugin_log = chatty_tui(terminal, tmp_path)
    folder = t.plugin_folder  # type: ignore[attr-defined]
    api.close()
    t.freeze()
    try:
        wait_until_sync(lambda: blocked_writing_to_terminal(t.pid))
        target = lines_in(plugin_log) + 20_000  # many more frames than may wait for the terminal
        wait_until_sync(lambda: lines_in(plugin_log) >= target)
        os.kill(t.pid, signal.SIGTERM)
        wait_until_sync(lambda: gone(t.pid), 20)
    finally:
        t.thaw()
    assert not plugin_pids(folder)


async def test_attached_keys_in_one_write_after_slash_go_to_the_filter(
    headless: Any, settings: Settings, make_plugin: Callable[..., Path], tmp_path: Path
) -> None:
    make_plugin("sleepy", "sleeper.py", autostart=False)
    url = await api_url(headless())
    t = attach_terminal(url, settings, tmp_path)
    try:
        t.wait_screen(lambda s: "sleepy" in s and "STOPPED" in s and "attached" in s)
        t.keys("-l", "/s1")  # one send-keys: the keys reach the program together
        t.wait_screen(lambda s: "filter: s1 (0 shown)" in s and "sleepy" not in s)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token(settings)}"}) as api:
            stays_stopped(api, "sleepy")
    finally:
        t.kill()
