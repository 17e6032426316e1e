"""The same trivial children under supervisor-tui, supervisord and PM2, side by side in one run (not a test).

    .venv/bin/python bench/anchors.py                    # 20 children, 20 s idle window, 5 crashes, each supervisor
    .venv/bin/python bench/anchors.py --rounds 2         # the three supervisors in turn, twice
    .venv/bin/python bench/anchors.py --plugins 500      # supervisor-tui alone: 500 plugins all RUNNING, idle CPU
    .venv/bin/python bench/anchors.py --plugins 500 --child c   # the same with a tiny C child (compiled with cc)
    .venv/bin/python bench/anchors.py --rounds 3 --before /tmp/old   # also the supervisor-tui of another source
                                                         # tree (e.g. `git archive main | tar -x -C /tmp/old`)

Every child is the same tiny Python TCP server on its own fixed port (accept, answer one line, close). For each
supervisor it measures:

1. launch -> all children up: from spawning the supervisor (or `pm2 start`) until every child's port accepts a
   connection (polled from this process, the same way for all three).
2. idle CPU: the supervisor's own process (supervisor-tui's headless process, supervisord, PM2's God daemon),
   CPU time of all its threads (schedstat, ns precision) over the idle window after 2.5 s of settling, as % of
   one core. Children excluded.
3. RSS: the same process's resident set at the end of the idle window. Children excluded.
4. crash -> respawn: SIGKILL one child (a different one each time) until its port accepts again from a new
   process.

The anchors are used when installed, else skipped with a line saying how to get them. Each is looked for as
`--supervisord PATH` / `--pm2 PATH` when given, else on PATH, else where the install commands below put them:
- supervisord: /tmp/anchors-venv/bin/supervisord (`python3 -m venv /tmp/anchors-venv &&
  /tmp/anchors-venv/bin/pip install supervisor`);
- PM2: /tmp/anchors-pm2/node_modules/.bin/pm2 (`mkdir -p /tmp/anchors-pm2 && cd /tmp/anchors-pm2 &&
  npm install pm2`). PM2_HOME is a temporary directory, so no other PM2 is touched.

`--before DIR` runs a second supervisor-tui, from the source tree DIR (on PYTHONPATH, with this interpreter and
its packages), in the same rounds: before/after figures of a change measured side by side on the same machine.

`--child` (with `--plugins`): `python` (the default: this interpreter, with its site packages), `python-minimal`
(`python3 -S -I`: no site, no user paths) or `c` (a 20-line C server compiled with `cc`): the launch figure of
a child that starts in about a millisecond is the supervisor's own cost.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent
SETTLE_S = 2.5
BEFORE = "supervisor-tui (before)"  # --before's name in the table
CHILD = """\
import os, socket, sys
server = socket.create_server(("127.0.0.1", int(sys.argv[1])), backlog=16)
with open(os.path.join(os.path.dirname(__file__), "pids", sys.argv[1] + ".tmp"), "w") as f:
    f.write(str(os.getpid()))
os.replace(f.name, f.name[:-4])
while True:
    conn, _ = server.accept()
    conn.sendall(b"up\\n")
    conn.close()
"""


CHILD_C = r"""
#include <arpa/inet.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
int main(int argc, char **argv) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET; a.sin_port = htons(atoi(argv[1])); a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) return 1;
    for (;;) { int c = accept(s, 0, 0); if (c >= 0) { write(c, "up\n", 3); close(c); } }
}
"""
CHILD_KINDS = ("python", "python-minimal", "c")


def child_argv(root: Path, kind: str) -> list[str]:
    """The command of one child (its port is appended): see --child."""
    if kind == "c":
        binary = root / "child-c"
        if not binary.exists():
            (root / "child.c").write_text(CHILD_C)
            subprocess.run(["cc", "-O2", "-o", str(binary), str(root / "child.c")], check=True)
        return [str(binary)]
    if kind == "python-minimal":
        return [sys.executable, "-S", "-I", str(root / "child.py")]
    return [sys.executable, str(root / "child.py")]


@dataclass
class Figures:
    launch: list[float] = field(default_factory=list)
    idle_cpu: list[float] = field(default_factory=list)
    rss: list[int] = field(default_factory=list)
    respawn: list[float] = field(default_factory=list)


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_ports(ports: list[int], timeout: float = 60) -> float:
    """Poll until every port accepts a connection; returns the perf_counter time when the last one did."""
    deadline = time.perf_counter() + timeout
    todo = list(ports)
    while todo:
        todo = [p for p in todo if not accepts(p)]
        if todo:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"{len(todo)} children never came up, e.g. port {todo[0]}")
            time.sleep(0.005)
    return time.perf_counter()


def write_child(root: Path) -> None:
    (root / "child.py").write_text(CHILD)
    (root / "pids").mkdir()


def bindable(port: int) -> bool:
    try:
        socket.create_server(("127.0.0.1", port)).close()
        return True
    except OSError:
        return False


def free_port_block(count: int) -> int:
    """The first of ``count`` consecutive ports that can be bound now (below the ephemeral range)."""
    for _ in range(200):
        start = random.randrange(20000, 32000 - count)
        if all(bindable(p) for p in range(start, start + count)):
            return start
    raise RuntimeError("no free port block")


def child_pid(root: Path, port: int) -> int | None:
    """Pid of the child serving ``port`` now, as it wrote it after binding (None before the first one did)."""
    try:
        return int((root / "pids" / str(port)).read_text())
    except (OSError, ValueError):
        return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def crash_respawn(root: Path, ports: list[int], crashes: int) -> list[float]:
    """SIGKILL the child of each of the first ``crashes`` ports in turn; seconds until a new process accepts on
    the port (SIGKILL closes the old one's socket: a connection accepted after it died is the new child's)."""
    out = []
    for port in ports[:crashes]:
        pid = child_pid(root, port)
        if pid is None:
            raise RuntimeError(f"no child found for port {port}")
        t_kill = time.perf_counter()
        os.kill(pid, signal.SIGKILL)
        while not gone(pid):
            time.sleep(0.0005)
        while not accepts(port):
            if time.perf_counter() - t_kill > 30:
                raise TimeoutError(f"child on port {port} was not respawned")
            time.sleep(0.001)
        out.append(time.perf_counter() - t_kill)
        time.sleep(0.5)
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far, in nanoseconds' precision (/proc/<pid>/task/*/schedstat):
    the clock-tick counters of cpu_times cannot tell 0.0 % from 0.05 % over a 20 s window."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:  # a thread that ended meanwhile
            continue
    return total / 1e9


def idle_cpu(pid: int, seconds: float) -> tuple[float, int]:
    """% of one core used by process ``pid`` alone over ``seconds``, and its RSS at the end."""
    c0, t0 = cpu_seconds(pid), time.perf_counter()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.perf_counter()
    return (c1 - c0) / (t1 - t0) * 100, psutil.Process(pid).memory_info().rss


class Subject:
    """One supervisor under test: start() spawns it on the children, pid() is the process to measure."""

    name = ""

    def __init__(self, root: Path, ports: list[int]) -> None:
        self.root, self.ports = root, ports
        self.child = root / "child.py"

    def start(self) -> None:
        raise NotImplementedError

    def pid(self) -> int:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class SupervisorTui(Subject):
    name = "supervisor-tui"

    def __init__(self, root: Path, ports: list[int], source: Path | None = None, child: str = "python") -> None:
        super().__init__(root, ports)
        self.source, self.child_kind = source, child
        if source is not None:
            self.name = BEFORE

    def start(self) -> None:
        plugins = self.root / "sv-tui" / "plugins"
        for i, port in enumerate(self.ports):
            folder = plugins / f"c{i:03d}"
            folder.mkdir(parents=True)
            argv = child_argv(self.root, self.child_kind)
            manifest = {"key": f"c{i:03d}", "command": [*argv, str(port)], "port": port}
            (folder / "manifest.json").write_text(json.dumps(manifest))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.source is not None:  # --before: that tree's supervisor_tui first on the path
            env["PYTHONPATH"] = str(self.source)
        args = [sys.executable, "-m", "supervisor_tui", "--headless", "--port", "0", "--log-format", "json"]
        args += ["--plugins-dir", str(plugins), "--data-dir", str(self.root / "sv-tui" / "data")]
        self.lines: list[tuple[float, dict[str, object]]] = []
        self.proc = subprocess.Popen(
            args, cwd=self.root, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.lines.append((time.perf_counter(), json.loads(line)))
            except ValueError:
                continue

    def all_running(self, timeout: float = 120) -> float:
        """perf_counter time of the last plugin's first ``to: RUNNING`` line."""
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            running = {rec.get("plugin"): ts for ts, rec in list(self.lines) if rec.get("to") == "RUNNING"}
            if len(running) >= len(self.ports):
                return max(running.values())
            time.sleep(0.05)
        raise TimeoutError("not every plugin became RUNNING")

    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


class Supervisord(Subject):
    name = "supervisord"

    def __init__(self, root: Path, ports: list[int], binary: str) -> None:
        super().__init__(root, ports)
        self.binary = binary

    def start(self) -> None:
        home = self.root / "supervisord"
        (home / "logs").mkdir(parents=True)
        conf = [
            "[supervisord]",
            "nodaemon=true",
            f"logfile={home / 'supervisord.log'}",
            f"pidfile={home / 'supervisord.pid'}",
            f"childlogdir={home / 'logs'}",
            "",
            "[unix_http_server]",
            f"file={home / 'supervisor.sock'}",
            "",
        ]
        for i, port in enumerate(self.ports):
            conf += [
                f"[program:c{i:03d}]",
                f"command={sys.executable} {self.child} {port}",
                "autorestart=true",
                f"stdout_logfile={home / 'logs' / f'c{i:03d}.log'}",
                "redirect_stderr=true",
                "",
            ]
        path = home / "supervisord.conf"
        path.write_text("\n".join(conf))
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(path)],
            cwd=home,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


class Pm2(Subject):
    name = "PM2"

    def __init__(self, root: Path, ports: list[int], binary: str) -> None:
        super().__init__(root, ports)
        self.binary = binary
        self.home = root / "pm2-home"
        self.env = {**os.environ, "PM2_HOME": str(self.home)}

    def start(self) -> None:
        apps = [
            {
                "name": f"c{i:03d}",
                "script": str(self.child),
                "interpreter": sys.executable,
                "args": str(port),
                "autorestart": True,
                "out_file": str(self.root / "pm2-logs" / f"c{i:03d}.log"),
                "error_file": str(self.root / "pm2-logs" / f"c{i:03d}.err"),
            }
            for i, port in enumerate(self.ports)
        ]
        ecosystem = self.root / "ecosystem.config.js"
        ecosystem.write_text("module.exports = " + json.dumps({"apps": apps}, indent=1) + ";\n")
        self.cli = subprocess.Popen(
            [self.binary, "start", str(ecosystem)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def pid(self) -> int:
        self.cli.wait(60)
        return int((self.home / "pm2.pid").read_text().strip())

    def stop(self) -> None:
        subprocess.run(
            [self.binary, "kill"], env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
        )


def measure(subject: Subject, idle_s: float, crashes: int, figures: Figures) -> None:
    t0 = time.perf_counter()
    subject.start()
    try:
        up = wait_ports(subject.ports)
        figures.launch.append(up - t0)
        pid = subject.pid()
        time.sleep(SETTLE_S)
        cpu, rss = idle_cpu(pid, idle_s)
        figures.idle_cpu.append(cpu)
        figures.rss.append(rss)
        figures.respawn.extend(crash_respawn(subject.root, subject.ports, crashes))
    finally:
        subject.stop()
    print(
        f"  {subject.name}: launch {figures.launch[-1]:.2f} s, idle CPU {cpu:.3f} %, RSS {rss / 2**20:.0f} MiB, "
        f"respawn median {statistics.median(figures.respawn[-crashes:]) * 1000:.0f} ms",
        flush=True,
    )


def span(values: list[float], fmt: Callable[[float], str]) -> str:
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"


def table(results: dict[str, Figures]) -> None:
    print()
    print("| | launch to all children up | idle CPU (% of a core) | RSS (supervisor process only) | crash -> respawn |")
    print("|---|---|---|---|---|")
    for name, f in results.items():
        print(
            f"| {name} | {span(f.launch, lambda v: f'{v:.2f}')} s | {span(f.idle_cpu, lambda v: f'{v:.3f}')} % "
            f"| {span([r / 2**20 for r in f.rss], lambda v: f'{v:.0f}')} MiB "
            f"| {span([r * 1000 for r in f.respawn], lambda v: f'{v:.0f}')} ms |"
        )
    ours = results.get(SupervisorTui.name)
    if ours is None:
        return
    print()
    for name, f in results.items():
        if name == SupervisorTui.name:
            continue
        ratios = [
            ("launch", statistics.median(ours.launch) / statistics.median(f.launch)),
            ("respawn", statistics.median(ours.respawn) / statistics.median(f.respawn)),
            ("RSS", statistics.median(ours.rss) / statistics.median(f.rss)),
        ]
        line = ", ".join(f"{what} {ratio:.2f}" for what, ratio in ratios)
        cpu_ours, cpu_theirs = statistics.median(ours.idle_cpu), statistics.median(f.idle_cpu)
        cpu = f"{cpu_ours / cpu_theirs:.2f}" if cpu_theirs > 0 else f"{cpu_ours:.2f} % against 0"
        print(f"supervisor-tui / {name} (medians; under 1 is better): {line}, idle CPU {cpu}")


ANCHOR_DEFAULTS = {
    "supervisord": "/tmp/anchors-venv/bin/supervisord",
    "pm2": "/tmp/anchors-pm2/node_modules/.bin/pm2",
}


def find(binary: str | None, name: str) -> str | None:
    """``binary`` when given, else ``name`` on PATH, else where the docstring's install commands put it."""
    if binary:
        return binary if Path(binary).exists() else None
    return shutil.which(name) or (ANCHOR_DEFAULTS[name] if Path(ANCHOR_DEFAULTS[name]).exists() else None)


def supervisord_version(binary: str | None) -> str:
    if not binary:
        return ""
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()


def pm2_version(binary: str | None) -> str:
    """From the package next to the command (``pm2 --version`` would start a daemon)."""
    if not binary:
        return ""
    package = Path(binary).resolve().parent.parent / "package.json"
    try:
        return str(json.loads(package.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "?"


def spawn_directly(root: Path, ports: list[int], child: str = "python") -> float:
    """Seconds to start the children with no supervisor until every port accepts (what the children cost)."""
    argv = child_argv(root, child)
    t0 = time.perf_counter()
    procs = [subprocess.Popen([*argv, str(p)], stdin=subprocess.DEVNULL) for p in ports]
    try:
        return wait_ports(ports, timeout=120) - t0
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def many_plugins(root: Path, count: int, idle_s: float, child: str, source: Path | None) -> None:
    """supervisor-tui alone with ``count`` plugins: launch to all RUNNING, idle CPU and RSS of the supervisor."""
    start = free_port_block(count)
    ports = list(range(start, start + count))
    direct = spawn_directly(root, ports, child)
    subject = SupervisorTui(root, ports, source, child)
    t0 = time.perf_counter()
    subject.start()
    try:
        up = wait_ports(ports, timeout=120)
        running = subject.all_running()
        time.sleep(SETTLE_S)
        cpu, rss = idle_cpu(subject.pid(), idle_s)
        fds = psutil.Process(subject.pid()).num_fds()
    finally:
        subject.stop()
    print(
        f"supervisor-tui{' from ' + str(source) if source else ''}, {count} plugins of child {child!r} (startsecs 1):"
    )
    print(f"  baseline: the same {count} children started directly, all ports up: {direct:.2f} s")
    print(f"  launch -> all children up: {up - t0:.2f} s ({(up - t0) / direct:.2f} x the baseline)")
    print(f"  launch -> all RUNNING: {running - t0:.2f} s (goal < 5 s)")
    print(f"  idle CPU over {idle_s:g} s: {cpu:.2f} % of one core (goal < 1 %)")
    print(f"  RSS of the supervisor process (children excluded): {rss / 2**20:.0f} MiB, {fds} fds")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--children", type=int, default=20, help="children per supervisor (default 20)")
    ap.add_argument("--idle", type=float, default=20.0, help="idle window in seconds (default 20)")
    ap.add_argument("--crashes", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1, help="the three supervisors in turn, this many times")
    ap.add_argument("--plugins", type=int, default=0, help="supervisor-tui alone with this many plugins")
    ap.add_argument("--supervisord", help="path of the supervisord binary (default: on PATH)")
    ap.add_argument("--pm2", help="path of the pm2 command (default: on PATH)")
    ap.add_argument("--only", choices=("supervisor-tui", "supervisord", "PM2", BEFORE), action="append")
    ap.add_argument("--before", type=Path, help="also run the supervisor-tui of this source tree (see above)")
    ap.add_argument("--child", choices=CHILD_KINDS, default="python", help="with --plugins: the child (see above)")
    args = ap.parse_args()
    # Environments with PYTHONDONTWRITEBYTECODE would compile the project's modules on every supervisor start
    # (an editable install has no bytecode of its own); a deployed supervisor has it, so the bench makes it.
    compileall.compile_dir(REPO / "supervisor_tui", quiet=1)
    if args.before is not None:
        compileall.compile_dir(args.before / "supervisor_tui", quiet=1)
    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-anchors-") as tmp:
        if args.plugins:
            root = Path(tmp)
            write_child(root)
            many_plugins(root, args.plugins, args.idle, args.child, args.before)
            return 0
        supervisord, pm2 = find(args.supervisord, "supervisord"), find(args.pm2, "pm2")
        makers: dict[str, Callable[[Path, list[int]], Subject]] = {SupervisorTui.name: SupervisorTui}
        before = args.before
        if before is not None:
            makers[BEFORE] = lambda root, ports: SupervisorTui(root, ports, before)
        if supervisord:
            makers[Supervisord.name] = lambda root, ports: Supervisord(root, ports, supervisord)
        else:
            print("supervisord: not installed, skipped (see --help: /tmp/anchors-venv, or --supervisord PATH)")
        if pm2:
            makers[Pm2.name] = lambda root, ports: Pm2(root, ports, pm2)
        else:
            print("PM2: not installed, skipped (see --help: /tmp/anchors-pm2, or --pm2 PATH)")
        if args.only:
            makers = {k: v for k, v in makers.items() if k in args.only}
        for name, version in (("supervisord", supervisord_version(supervisord)), ("PM2", pm2_version(pm2))):
            if name in makers:
                print(f"{name} version: {version}")
        print(
            textwrap.dedent(f"""\
            {args.children} children (a tiny Python TCP server each), idle window {args.idle:g} s after
            {SETTLE_S:g} s settling, {args.crashes} crashes; CPU and RSS are the supervisor's own process only""")
        )
        results = {name: Figures() for name in makers}
        for rnd in range(args.rounds):
            print(f"round {rnd + 1}:", flush=True)
            for name, make in makers.items():
                root = Path(tmp) / f"{rnd}-{name}"
                root.mkdir()
                write_child(root)
                start = free_port_block(args.children)
                measure(make(root, list(range(start, start + args.children))), args.idle, args.crashes, results[name])
        table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
