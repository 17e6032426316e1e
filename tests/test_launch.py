"""env_file, working_dir and user with real plugin processes: what the process sees, and starts refused at once."""

from __future__ import annotations

import json
import os
import pwd
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from conftest import HeadlessProcess, open_supervisor, spawns, wait_until

from supervisor_tui.config import Settings
from supervisor_tui.core.supervisor import PluginActionError
from supervisor_tui.plugins.launch import LaunchRefused, resolve_user

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

# Writes what the process sees (its environment, its directory, its uid) to $OUT, then sleeps until stopped.
SEER = """\
import json, os, sys, time
sys.path.insert(0, os.environ["FIXTURES"])
from _record import record_spawn
record_spawn()
seen = {"env": dict(os.environ), "cwd": os.getcwd(), "uid": os.getuid()}
with open(os.environ["OUT"] + ".tmp", "w") as f:
    json.dump(seen, f)
os.replace(os.environ["OUT"] + ".tmp", os.environ["OUT"])
print("seer up", flush=True)
time.sleep(3600)
"""
FIXTURES = str(Path(__file__).resolve().parent / "fixtures" / "plugins")
SECRET = "s3cr3t-Value-9f2"


def seer(make_plugin: Callable[..., Path], key: str, **fields: Any) -> tuple[Path, Path]:
    """A plugin folder running SEER, and the file it writes."""
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"seen-{os.getpid()}-{key}-{id(fields)}.json"
    env = {"OUT": str(out), "FIXTURES": FIXTURES, **fields.pop("env", {})}
    folder = make_plugin(key, SEER, env=env, startretries=3, **fields)
    return folder, out


async def seen(out: Path) -> dict[str, Any]:
    await wait_until(out.exists)
    return take(out)


def take(out: Path) -> dict[str, Any]:
    """What the plugin wrote, removed so that the next start writes it again."""
    data: dict[str, Any] = json.loads(out.read_text())
    out.unlink()
    return data


async def test_env_file_values_reach_the_plugin_and_the_manifest_env_wins(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    folder, out = seer(make_plugin, "envy", env_file="conf/app.env", env={"MODE": "from-manifest"})
    (folder / "conf").mkdir()
    (folder / "conf" / "app.env").write_text(
        f"# the app's secrets\n\nexport API_TOKEN='{SECRET}'\nMODE=from-file\nGREETING=\"hello\\tworld\" # tab\n",
        encoding="utf-8",
    )
    async with open_supervisor(settings) as sup:
        snap = await sup.start("envy")
        assert snap.state == "RUNNING"
        env = (await seen(out))["env"]
        assert env["API_TOKEN"] == SECRET and env["GREETING"] == "hello\tworld"
        assert env["MODE"] == "from-manifest"
        # the file is read at each start: an edit shows at the next restart
        (folder / "conf" / "app.env").write_text("API_TOKEN=rotated\n", encoding="utf-8")
        await sup.restart("envy")
        assert (await seen(out))["env"]["API_TOKEN"] == "rotated"
        # the values are secrets: not in the snapshot views read, nor in any log line
        assert SECRET not in json.dumps(sup.plugin("envy").to_dict())
        assert all(SECRET not in r.message for r in sup.logs.tail(None, 10_000))
    assert all(SECRET not in p.read_text() for p in (settings.data_dir / "logs").glob("*.log"))


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "env_file {folder}/.env: file not found"),
        (f"OK=1\n# fine so far\nAPI_TOKEN {SECRET}\n", "env_file {folder}/.env: line 3: expected NAME=value"),
        (f"API_TOKEN='{SECRET}\n", "env_file {folder}/.env: line 1: API_TOKEN: the single quote is not closed"),
    ],
)
async def test_a_missing_or_bad_env_file_is_fatal_at_once_naming_file_and_line(
    settings: Settings, make_plugin: Callable[..., Path], content: str | None, problem: str
) -> None:
    folder, _ = seer(make_plugin, "broken", env_file=".env")
    if content is not None:
        (folder / ".env").write_text(content, encoding="utf-8")
    async with open_supervisor(settings) as sup:
        with pytest.raises(PluginActionError) as caught:
            await sup.start("broken")
        snap = sup.plugin("broken")
        expected = problem.format(folder=folder)
        assert snap.state == "FATAL" and snap.detail.startswith(expected), snap.detail
        assert expected in caught.value.message
        assert snap.restarts == 0 and spawns(folder) == []  # refused before anything ran, not retried
        assert SECRET not in snap.detail and all(SECRET not in r.message for r in sup.logs.tail(None, 10_000))
        # fixed, an operator start runs it
        (folder / ".env").write_text("API_TOKEN=ok\n", encoding="utf-8")
        assert (await sup.start("broken")).state == "RUNNING"


async def test_working_dir_is_where_the_command_runs_and_must_exist(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    folder, out = seer(make_plugin, "worker", working_dir="var/run")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["command"] = ["python", "../../plugin.py"]  # relative to working_dir, as in a shell
    (folder / "manifest.json").write_text(json.dumps(manifest))
    async with open_supervisor(settings) as sup:
        with pytest.raises(PluginActionError):
            await sup.start("worker")
        snap = sup.plugin("worker")
        assert snap.state == "FATAL" and snap.detail == f"working_dir {folder}/var/run: does not exist"
        assert spawns(folder) == []
        (folder / "var" / "run").mkdir(parents=True)
        assert (await sup.start("worker")).state == "RUNNING"
        assert (await seen(out))["cwd"] == str((folder / "var" / "run").resolve())


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="running a plugin as another user needs root")


@root_only
async def test_user_runs_the_plugin_as_that_user(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    nobody = pwd.getpwnam("nobody")
    folder = make_plugin("lowly", "sleeper.py", user="nobody")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["command"] = ["/bin/sh", "-c", 'echo "uid $(id -u) home $HOME user $USER"; exec sleep 3600']
    (folder / "manifest.json").write_text(json.dumps(manifest))
    async with open_supervisor(settings) as sup:
        snap = await sup.start("lowly")
        assert snap.state == "RUNNING" and snap.pid is not None
        uids = psutil.Process(snap.pid).uids()
        assert (uids.real, uids.effective) == (nobody.pw_uid, nobody.pw_uid)
        assert psutil.Process(snap.pid).gids().real == nobody.pw_gid
        line = f"uid {nobody.pw_uid} home {nobody.pw_dir} user nobody"
        await wait_until(lambda: any(r.message == line for r in sup.logs.tail("lowly", 50)))
        await sup.stop("lowly")
        assert not psutil.pid_exists(snap.pid) or psutil.Process(snap.pid).status() == psutil.STATUS_ZOMBIE


@root_only
async def test_an_unknown_user_is_fatal_at_once(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    folder = make_plugin("ghostly", "sleeper.py", user="no-such-user-here")
    async with open_supervisor(settings) as sup:
        with pytest.raises(PluginActionError):
            await sup.start("ghostly")
        snap = sup.plugin("ghostly")
        assert snap.state == "FATAL" and snap.detail == "user 'no-such-user-here': no such user on this machine"
        assert spawns(folder) == []


@root_only
def test_another_user_is_refused_when_the_supervisor_is_not_root() -> None:
    """The check itself, in a real process that gave up root (as a supervisor run by a normal user)."""
    nobody = pwd.getpwnam("nobody")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: become nobody, then ask for root and for nobody itself
        try:
            os.close(read)
            os.setgid(nobody.pw_gid)
            os.setuid(nobody.pw_uid)
            answers = []
            for user in ("root", "nobody"):
                try:
                    answers.append(f"ok {resolve_user(user).uid}")
                except LaunchRefused as exc:
                    answers.append(str(exc))
            os.write(write, json.dumps(answers).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        answers = json.loads(f.read())
    os.waitpid(pid, 0)
    assert answers == [
        "user 'root': running a plugin as another user needs the supervisor to run as root (it runs as nobody)",
        f"ok {nobody.pw_uid}",  # its own user needs no root
    ]


@root_only
async def test_user_in_a_headless_supervisor(
    headless: Callable[..., HeadlessProcess], settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    """Headless runs on uvloop, whose subprocess calls take no user= argument: the switch happens in the child."""
    nobody = pwd.getpwnam("nobody")
    # working_dir "/": the test's plugin folder is under pytest's 0700 directory, which nobody cannot enter
    folder = make_plugin("lowly", "sleeper.py", user=str(nobody.pw_uid), working_dir="/")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["command"] = ["/bin/sleep", "3600"]
    (folder / "manifest.json").write_text(json.dumps(manifest))
    proc = headless()
    record = await proc.wait_state("lowly", "RUNNING")
    url = str((await proc.wait_for(lambda r: r.get("event") == "api_listening"))["url"])
    token = (settings.data_dir / "admin.token").read_text().strip()
    async with httpx.AsyncClient() as client:
        body = (await client.get(f"{url}/api/v1/plugins/lowly", headers={"Authorization": f"Bearer {token}"})).json()
    assert record["to"] == "RUNNING" and psutil.Process(body["pid"]).uids().real == nobody.pw_uid
    proc.signal(signal.SIGTERM)
    assert await proc.wait() == 0
