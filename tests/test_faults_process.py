"""Process supervision under faults, with a real headless supervisor: no plugins folder, signals at awkward
moments, slow orphans of a killed supervisor, plugins that escape their process group (with cgroups where they
are writable here, and without), few file descriptors."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import HeadlessProcess, cgroup_tree, spawns, wait_until

from supervisor_tui.config import Settings
from supervisor_tui.plugins.cgroups import CgroupTree, PluginCgroup

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

Headless = Callable[..., HeadlessProcess]

# Takes TERM_DELAY seconds to die after SIGTERM (and says so in ./terminating), like a plugin that flushes state.
SLOW_TO_DIE = """\
import os, signal, sys, time
with open(os.environ["SPAWN_LOG"], "a") as f:
    f.write(f"{os.getpid()}\\n")
def on_term(*_):
    with open("terminating", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(float(os.environ["TERM_DELAY"]))
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
while True:
    time.sleep(3600)
"""
SLOW_PLUGINS = 6
TERM_DELAY = 5.0  # a serial cleanup takes SLOW_PLUGINS * TERM_DELAY = 30 s

FD_PLUGINS = 40
FD_LIMIT = 150  # descriptors for the supervisor: enough to start, not for 40 plugins' pipes, logs and probes

ENV_DUMP = """\
import json, os, time
with open("env.json.tmp", "w") as f:
    json.dump(dict(os.environ), f)
os.replace("env.json.tmp", "env.json")
while True:
    time.sleep(3600)
"""


async def test_sigterm_without_a_plugins_folder_exits_0(
    headless: Headless, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = make_settings(plugins_dir=str(tmp_path / "no-such-folder"))
    proc = headless(settings_=settings)
    await proc.wait_for(lambda r: r.get("event") == "api_listening")
    proc.signal(signal.SIGTERM)
    assert await proc.wait(timeout=20) == 0
    assert not (tmp_path / "no-such-folder").exists()


async def test_plugins_do_not_inherit_the_supervisors_settings(
    headless: Headless, make_plugin: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    secrets = {
        "SUPERVISOR_TUI_AUTH_ADMIN_TOKEN": "admin-secret-1234567890",
        "SUPERVISOR_TUI_AUTH_PLUGIN_TOKEN": "plugin-secret-1234567890",
        "SUPERVISOR_TUI_CONSOLES_ENROLLMENT_TOKEN": "enroll-secret-1234567890",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("UNRELATED_VARIABLE", "kept")
    folder = make_plugin("envy", ENV_DUMP, env={"FROM_MANIFEST": "yes"})
    proc = headless()
    await proc.wait_state("envy", "RUNNING")
    env = await wait_until(lambda: (folder / "env.json").exists() and json.loads((folder / "env.json").read_text()))
    assert not [k for k in env if k.startswith("SUPERVISOR_TUI_")]
    assert not [k for k, v in env.items() if any(secret in v for secret in secrets.values())]
    assert env["UNRELATED_VARIABLE"] == "kept" and env["FROM_MANIFEST"] == "yes"
    assert env["SUPERVISOR_URL"].startswith("http://127.0.0.1:") and env["PLUGIN_KEY"] == "envy" and env["PORT"]
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


def living(pids: list[int]) -> list[int]:
    """Those of ``pids`` still running (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                out.append(pid)
        except psutil.Error:
            continue
    return out


async def orphans_of_a_killed_supervisor(headless: Headless, make_plugin: Callable[..., Path]) -> list[Path]:
    """SLOW_PLUGINS slow-to-die plugins, RUNNING under a headless supervisor that is then SIGKILLed."""
    folders = [
        make_plugin(f"slow{i}", SLOW_TO_DIE, env={"TERM_DELAY": str(TERM_DELAY)}, stopwaitsecs=TERM_DELAY * 2)
        for i in range(SLOW_PLUGINS)
    ]
    first = headless()
    for i in range(SLOW_PLUGINS):
        await first.wait_state(f"slow{i}", "RUNNING")
    os.kill(first.pid, signal.SIGKILL)
    await first.wait()
    return folders


async def test_after_a_crash_the_api_answers_while_orphans_are_cleaned_in_parallel(
    headless: Headless, make_plugin: Callable[..., Path]
) -> None:
    folders = await orphans_of_a_killed_supervisor(headless, make_plugin)
    orphans = [spawns(f)[0] for f in folders]
    assert len(living(orphans)) == SLOW_PLUGINS
    proc = headless()
    url = str((await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"])
    async with httpx.AsyncClient(base_url=url) as client:
        r = await client.get("/ready")
        assert living(orphans), "the API should answer while the orphans are still being stopped"
        assert r.status_code == 503 and "previous run" in r.json()["detail"]
        # All at once: every orphan got SIGTERM before any of them could have died of it.
        await wait_until(lambda: all((f / "terminating").exists() for f in folders), timeout=TERM_DELAY - 1)
        await wait_until(lambda: not living(orphans), timeout=30)
        await wait_until(lambda: _ready(client), timeout=30)
    assert all(len(spawns(f)) == 2 for f in folders)
    proc.signal(signal.SIGTERM)
    assert await proc.wait(timeout=60) == 0


async def test_sigterm_during_the_orphan_cleanup_exits_at_once(
    headless: Headless, make_plugin: Callable[..., Path]
) -> None:
    folders = await orphans_of_a_killed_supervisor(headless, make_plugin)
    orphans = [spawns(f)[0] for f in folders]
    proc = headless()
    restarted = time.monotonic()
    await wait_until(lambda: any((f / "terminating").exists() for f in folders), timeout=60)
    assert living(orphans)  # the cleanup is under way
    proc.signal(signal.SIGTERM)
    # A serial cleanup could not be over before SLOW_PLUGINS * TERM_DELAY seconds (plus starting every plugin).
    left = SLOW_PLUGINS * TERM_DELAY - (time.monotonic() - restarted)
    assert await proc.wait(timeout=left - TERM_DELAY) == 0
    assert not living(orphans)
    assert all(len(spawns(f)) == 1 for f in folders)  # nothing was started again


async def _ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/ready")).status_code == 200


async def test_ready_while_one_plugin_crash_loops(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings
) -> None:
    make_plugin("fine", "sleeper.py")
    make_plugin("looping", "crash_at_start.py", startretries=1000)
    make_plugin("needs-looping", "sleeper.py", depends_on=["looping"])
    proc = headless()
    url = str((await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"])
    token = (settings.data_dir / "admin.token").read_text().strip()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        await wait_until(lambda: _ready(client), timeout=15)
        plugins = {p["key"]: p for p in (await client.get("/api/v1/plugins")).json()["plugins"]}
    assert plugins["fine"]["state"] == "RUNNING"
    assert plugins["looping"]["state"] in ("STARTING", "BACKOFF") and plugins["needs-looping"]["state"] == "STOPPED"
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


def _loaded(pid: int, library: str) -> bool:
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
        return library in f.read()


async def test_sighup_from_the_first_moments_of_startup_is_survived(
    headless: Headless, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("alpha", "sleeper.py")
    proc = headless()
    # From the moment the supervisor's own modules load (the sqlite3 extension shows in its memory map, a
    # quarter of a second before the event loop runs), hangups rain on it until its API answers.
    await wait_until(lambda: _loaded(proc.pid, "_sqlite3"), timeout=30, interval=0.001)
    sent = 0
    while not proc.find(lambda r: r.get("event") == "api_listening"):
        assert proc.proc.poll() is None, f"killed by a hangup during startup (after {sent}): {proc.proc.returncode}"
        proc.signal(signal.SIGHUP)
        sent += 1
        await asyncio.sleep(0.005)  # pacing the hangups, not waiting for anything
    await proc.wait_state("alpha", "RUNNING")
    url = str(proc.find(lambda r: r.get("event") == "api_listening")[0]["url"])
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await client.get("/health")).status_code == 200
    assert proc.proc.poll() is None and sent > 1
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


# Double-forks a daemon that leaves the session (setsid), the folder (chdir /) and the environment (an exec
# with none): neither the process group, nor the marker, nor the working directory lead to it.
ESCAPER = """\
import os, sys, time
with open(os.environ["SPAWN_LOG"], "a") as f:
    f.write(f"{os.getpid()}\\n")
pidfile = os.path.abspath("daemon.pid")
daemon = "import os, sys, time\\nopen(sys.argv[1] + '.tmp', 'w').write(str(os.getpid()))\\n" \\
    "os.replace(sys.argv[1] + '.tmp', sys.argv[1])\\nwhile True: time.sleep(3600)"
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.chdir("/")
        os.execve(sys.executable, [sys.executable, "-c", daemon, pidfile], {})
    os._exit(0)
os.wait()
while True:
    time.sleep(3600)
"""


async def test_a_double_forked_daemon_dies_with_its_plugin_and_with_the_supervisor(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings
) -> None:
    folder = make_plugin("escaper", ESCAPER)
    pidfile = folder / "daemon.pid"
    daemons: list[int] = []
    proc = headless()
    try:
        url = str((await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"])
        token = (settings.data_dir / "admin.token").read_text().strip()
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            await proc.wait_state("escaper", "RUNNING")
            daemons.append(int(await wait_until(lambda: pidfile.exists() and pidfile.read_text())))
            daemon = psutil.Process(daemons[-1])
            assert daemon.environ() == {} and os.getsid(daemon.pid) != os.getsid(proc.pid)
            assert (await client.post("/api/v1/plugins/escaper/stop")).status_code == 200
            await wait_until(lambda: not living(daemons), timeout=15)
            pidfile.unlink()
            assert (await client.post("/api/v1/plugins/escaper/start")).status_code == 200
            daemons.append(int(await wait_until(lambda: pidfile.exists() and pidfile.read_text())))
        proc.signal(signal.SIGTERM)
        assert await proc.wait() == 0
        assert not living(daemons)
    finally:
        for pid in living(daemons):  # before the fix they outlived everything: do not leave them to the machine
            os.kill(pid, signal.SIGKILL)


async def test_sigterm_while_the_supervisor_loads_exits_0(headless: Headless, make_plugin: Callable[..., Path]) -> None:
    make_plugin("alpha", "sleeper.py")
    proc = headless()
    await wait_until(lambda: _loaded(proc.pid, "_sqlite3"), timeout=30, interval=0.001)
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0


def _last_states(proc: HeadlessProcess, keys: list[str]) -> dict[str, dict[str, object]]:
    last: dict[str, dict[str, object]] = {}
    for r in proc.find(lambda r: r.get("event") == "plugin_state"):
        last[str(r["plugin"])] = r
    return {k: last[k] for k in keys if k in last}


async def test_out_of_file_descriptors_nothing_is_running_unsupervised(
    headless: Headless, make_plugin: Callable[..., Path]
) -> None:
    keys = [f"p{i:02d}" for i in range(FD_PLUGINS)]
    for key in keys:
        make_plugin(key, "http_server.py", health={"path": "/health", "start_timeout_s": 2}, startretries=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, hard))  # the headless supervisor inherits it
    try:
        proc = headless()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    def settled() -> bool:
        assert proc.proc.poll() is None, f"the supervisor died: {proc.stderr}"
        states = _last_states(proc, keys)
        return len(states) == len(keys) and {s["to"] for s in states.values()} <= {"RUNNING", "FATAL"}

    await wait_until(settled, timeout=90)
    states = _last_states(proc, keys)
    running = {k: s for k, s in states.items() if s["to"] == "RUNNING"}
    assert running and len(running) < len(keys)  # the limit bites, and some fit under it
    async with httpx.AsyncClient() as client:
        for key, state in running.items():
            assert living([int(str(state["pid"]))]), f"{key} shown RUNNING without its process"
            answer = await client.get(f"http://127.0.0.1:{state['port']}/health")
            assert answer.status_code == 200, f"{key} shown RUNNING but not answering"
    fatal = {k: str(s["reason"]) for k, s in states.items() if k not in running}
    assert all(fatal.values()), fatal
    assert any("file descriptors: the supervisor's limit of" in reason for reason in fatal.values()), fatal
    proc.signal(signal.SIGTERM)
    assert await proc.wait(timeout=120) == 0


# Spawns with uvloop (the headless event loop) while only ``free`` descriptors are left, for every ``free`` from
# none to plenty; prints what the operator is told for each failed spawn.
SPAWN_WITH_FEW_DESCRIPTORS = """\
import asyncio, os, resource, sys, uvloop
from supervisor_tui.plugins.process_spawn import describe_os_error
async def spawn(free):
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    for _ in range(free):
        os.close(held.pop())
    try:
        proc = await asyncio.create_subprocess_exec(
            "true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, preexec_fn=lambda: None
        )
        await proc.wait()
    except OSError as exc:
        print(f"{free} {exc.errno}: {describe_os_error(exc)}", flush=True)
    finally:
        for fd in held:
            os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
for free in range(12):
    uvloop.run(spawn(free))
"""


def test_a_spawn_out_of_descriptors_says_so_however_the_event_loop_reports_it(tmp_path: Path) -> None:
    # uvloop reports EMFILE in the parent as EMFILE, but a child that runs out re-creating its event loop as
    # OSError(-1, "Unknown error -1"): both must name the limit to raise.
    out = subprocess.run(
        [sys.executable, "-c", SPAWN_WITH_FEW_DESCRIPTORS], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    failures = [line for line in out.stdout.splitlines() if line]
    errnos = {line.split(":")[0].split()[1] for line in failures}
    assert "24" in errnos and "-1" in errnos, out.stdout + out.stderr  # both ways happened
    assert all("out of file descriptors: the supervisor's limit of 64" in line for line in failures), failures


def _cgroups_unusable() -> str:
    """Why this machine cannot give plugins cgroups ("" when it can)."""
    tree, why = CgroupTree.open(f"test-{os.getpid()}")
    if tree is not None:
        tree.clear()
    return why


CGROUPS_UNUSABLE = _cgroups_unusable()
needs_cgroups = pytest.mark.skipif(bool(CGROUPS_UNUSABLE), reason=f"cgroup v2 not writable: {CGROUPS_UNUSABLE}")


@pytest.fixture
def cgroups_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default (plugins.cgroups = true), whatever the environment the tests run in says."""
    monkeypatch.delenv("SUPERVISOR_TUI_PLUGINS_CGROUPS", raising=False)


def _cgroup_of(tree: CgroupTree, key: str) -> PluginCgroup:
    """The cgroup of ``key``'s current run."""
    (cgroup,) = [c for c in tree.plugin_cgroups() if c.key == key]
    return cgroup


async def _escaped_daemon(proc: HeadlessProcess, folder: Path) -> int:
    await proc.wait_state(folder.name, "RUNNING")
    pidfile = folder / "daemon.pid"
    return int(await wait_until(lambda: pidfile.exists() and pidfile.read_text()))


@needs_cgroups
@pytest.mark.usefixtures("cgroups_on")
async def test_with_cgroups_the_next_start_kills_a_daemon_whose_plugin_died_with_the_supervisor(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings
) -> None:
    folder = make_plugin("escaper", ESCAPER)
    first = headless()
    daemon = await _escaped_daemon(first, folder)
    try:
        tree = cgroup_tree(settings)
        previous = _cgroup_of(tree, "escaper") if tree is not None else None
        assert previous is not None and daemon in previous.pids()
        os.kill(first.pid, signal.SIGKILL)
        await first.wait()
        main = spawns(folder)[0]
        os.kill(main, signal.SIGKILL)  # now no group, marker, recorded pid or parent leads to the daemon
        await wait_until(lambda: not living([main]))
        assert living([daemon])
        second = headless()
        killed = await second.wait_for(lambda r: r.get("event") == "orphans_killed" and daemon in r.get("pids", []))
        assert killed["plugin"] == "escaper"
        await wait_until(lambda: not living([daemon]), timeout=15)
        await wait_until(lambda: not previous.path.exists())  # removed by the cleanup
        await second.wait_state("escaper", "RUNNING")
        second.signal(signal.SIGTERM)
        assert await second.wait() == 0
        assert not tree.path.exists()  # a clean exit leaves no cgroup behind
    finally:
        if living([daemon]):  # before cgroups nothing found it: do not leave it to the machine
            os.kill(daemon, signal.SIGKILL)


@needs_cgroups
@pytest.mark.usefixtures("cgroups_on")
async def test_with_cgroups_stop_kills_the_plugins_cgroup_and_removes_it(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings
) -> None:
    folder = make_plugin("escaper", ESCAPER)
    proc = headless()
    tracking = await proc.wait_for(lambda r: r.get("event") == "process_tracking")
    tree = cgroup_tree(settings)
    assert tree is not None and tracking["cgroup"] == str(tree.path)
    daemon = await _escaped_daemon(proc, folder)
    cgroup = _cgroup_of(tree, "escaper")
    assert set(cgroup.pids()) == {spawns(folder)[0], daemon}
    url = str((await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"])
    token = (settings.data_dir / "admin.token").read_text().strip()
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
        assert (await client.post("/api/v1/plugins/escaper/stop")).status_code == 200
    assert not living([daemon]) and not cgroup.path.exists()
    assert tree.path.exists()  # the supervisor's own, until it exits
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert not tree.path.exists()


async def test_without_cgroups_a_double_forked_daemon_still_dies_with_its_plugin(
    headless: Headless, make_plugin: Callable[..., Path], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SUPERVISOR_TUI_PLUGINS_CGROUPS", "false")
    folder = make_plugin("escaper", ESCAPER)
    proc = headless()
    tracking = await proc.wait_for(lambda r: r.get("event") == "process_tracking")
    assert "plugins.cgroups = false" in str(tracking["message"]) and tracking["cgroup"] is None
    daemon = await _escaped_daemon(proc, folder)
    tree = cgroup_tree(settings)
    assert tree is None or not tree.path.exists()
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
    assert not living([daemon])
