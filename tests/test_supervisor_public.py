"""The Supervisor's public methods that the in-process plugin host, the runtime and the gateway use: desired state,
ensure-running, the API URL plugins are given, the console service beside it, in-process plugins' ASGI apps."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from conftest import open_supervisor, wait_until
from inprocess_support import write_inprocess

from supervisor_tui.config import Settings
from supervisor_tui.consoles.service import ConsoleService
from supervisor_tui.core.supervisor import PluginActionError, Supervisor

URL_DUMP = """\
import json, os, time
with open("url.json.tmp", "w") as f:
    json.dump(os.environ.get("SUPERVISOR_URL"), f)
os.replace("url.json.tmp", "url.json")
while True:
    time.sleep(3600)
"""

HELLO = """
from starlette.responses import PlainTextResponse
from supervisor_tui.plugins.inprocess import PluginInterface


class Plugin(PluginInterface):
    async def routes(self, scope, receive, send):
        await PlainTextResponse("hello")(scope, receive, send)
"""


async def test_desired_state_is_what_the_operator_last_asked_and_survives_a_restart(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("web", "sleeper.py", autostart=False)
    async with open_supervisor(settings) as sup:
        assert sup.desired_state("web") is None  # never asked: the manifest's autostart decides
        await sup.start("web")
        assert sup.desired_state("web") == "running"
        await sup.stop("web")
        assert sup.desired_state("web") == "stopped"
        assert sup.desired_state("nope") is None
    async with open_supervisor(settings) as sup:
        assert sup.desired_state("web") == "stopped"


async def test_ensure_running_starts_dependencies_first_and_is_a_no_op_when_running(
    supervisor: Supervisor, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("db", "sleeper.py", autostart=False)
    make_plugin("app", "sleeper.py", autostart=False, depends_on=["db"])
    await supervisor.reload()
    await supervisor.ensure_running("app", "needed by a test")
    assert supervisor.plugin("db").state == "RUNNING" and supervisor.plugin("app").state == "RUNNING"
    pid = supervisor.plugin("app").pid
    await supervisor.ensure_running("app", "again")
    assert supervisor.plugin("app").pid == pid
    # It starts; it does not change what the operator asked for.
    assert supervisor.desired_state("app") is None


async def test_ensure_running_refuses_an_invalid_plugin_with_its_reason(
    supervisor: Supervisor, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("broken", "sleeper.py", restart="sometimes")
    await supervisor.reload()
    try:
        await supervisor.ensure_running("broken", "a test")
    except PluginActionError as exc:
        assert "cannot start an INVALID plugin" in exc.message and "restart" in exc.message
    else:
        raise AssertionError("an INVALID plugin started")


async def test_plugins_get_the_api_url_the_runtime_gives(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    folder = make_plugin("envy", URL_DUMP, autostart=False)
    async with open_supervisor(settings) as sup:
        sup.set_api_url("http://127.0.0.1:4321")
        await sup.start("envy")
        url = await wait_until(lambda: (folder / "url.json").exists() and json.loads((folder / "url.json").read_text()))
        assert url == "http://127.0.0.1:4321"


async def test_consoles_is_the_attached_console_service(settings: Settings) -> None:
    async with open_supervisor(settings) as sup:
        assert sup.consoles is None
        service = ConsoleService(sup.store, sup.bus, settings, sup.logs)
        await service.start()
        try:
            sup.attach_consoles(service)
            assert sup.consoles is service
        finally:
            await service.stop()


async def test_asgi_app_is_an_in_process_plugins_app_while_it_runs(
    supervisor: Supervisor, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    write_inprocess(settings.plugins_dir, "hello", HELLO, autostart=False)
    make_plugin("web", "sleeper.py", autostart=False)
    await supervisor.reload()
    assert supervisor.asgi_app("hello") is None  # not running
    await supervisor.start("hello")
    assert callable(supervisor.asgi_app("hello"))
    await supervisor.start("web")
    assert supervisor.asgi_app("web") is None  # a process plugin is reached over HTTP
    assert supervisor.asgi_app("nope") is None
