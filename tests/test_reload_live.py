"""Live reload: the watcher applies plugin folder changes without restarting the supervisor, routes follow, and a
reload that fails keeps the running version."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from typing import Any

import pytest
from conftest import open_supervisor, wait_until, write_plugin
from fixtures.api.harness import Api, running_api
from inprocess_support import write_inprocess

from supervisor_tui.config import Settings
from supervisor_tui.core.events import PluginFailed

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

GREETER = """
from starlette.responses import JSONResponse
from starlette.routing import Route, Router
from supervisor_tui.plugins.inprocess import PluginInterface

VERSION = {version}


class Plugin(PluginInterface):
    def __init__(self, config=None):
        super().__init__(config)
        self.routes = Router(routes=[
            Route("/hello", self.hello),
            Route("/bye", self.bye),
        ])

    async def hello(self, request):
        return JSONResponse({{"version": VERSION, "root_path": request.scope["root_path"]}})

    async def bye(self, request):
        return JSONResponse({{"bye": VERSION}})
"""


async def answer(api: Api, path: str) -> tuple[int, Any]:
    r = await api.client.get(path)
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


async def test_folders_added_changed_and_removed_are_applied_live(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings()
    assert settings.get("plugins.watch") is True  # the default
    plugins = settings.plugins_dir
    async with running_api(settings) as api:
        watcher = api.runtime.watcher
        assert watcher is not None
        # A new in-process plugin folder: loaded, started, its declared route served.
        write_inprocess(plugins, "greeter", GREETER.format(version=1), endpoints=[{"method": "GET", "path": "/hello"}])
        await wait_until(lambda: _ok(answer(api, "/api/plugins/greeter/hello"), {"version": 1}))
        _, body = await answer(api, "/api/plugins/greeter/hello")
        assert body["root_path"] == "/api/plugins/greeter"
        assert (await answer(api, "/api/plugins/greeter/bye"))[0] == 404  # not declared: not served

        # Changed source: that plugin alone reloads; a process plugin next to it keeps running (same pid).
        write_plugin(plugins, "web", "sleeper.py")
        await wait_until(lambda: _status(api, "/api/v1/plugins/web", 200))  # a new process plugin loads too
        await api.wait_state("web", "RUNNING")
        pid = (await api.plugin("web"))["pid"]
        reloads = watcher.reloads
        (plugins / "greeter" / "plugin.py").write_text(GREETER.format(version=22))
        await wait_until(lambda: _ok(answer(api, "/api/plugins/greeter/hello"), {"version": 22}))
        assert watcher.reloads == reloads + 1
        assert (await api.plugin("web"))["pid"] == pid

        # A burst of writes to a manifest is one reload; the new endpoint list is what the gateway serves.
        reloads = watcher.reloads
        manifest = json.loads((plugins / "greeter" / "manifest.json").read_text())
        for i in range(5):
            manifest["description"] = f"edit {i}"
            manifest["endpoints"] = [{"method": "GET", "path": "/hello"}, {"method": "GET", "path": "/bye"}]
            (plugins / "greeter" / "manifest.json").write_text(json.dumps(manifest))
        await wait_until(lambda: _ok(answer(api, "/api/plugins/greeter/bye"), {"bye": 22}))
        assert watcher.reloads == reloads + 1
        assert (await api.plugin("greeter"))["description"] == "edit 4"

        # A removed folder: stopped and unloaded, its routes gone.
        shutil.rmtree(plugins / "greeter")
        await wait_until(lambda: _status(api, "/api/v1/plugins/greeter", 404))
        assert (await answer(api, "/api/plugins/greeter/hello"))[0] == 404
        assert (await api.plugin("web"))["pid"] == pid


async def test_a_failed_reload_keeps_the_running_version(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    plugins = settings.plugins_dir
    write_inprocess(plugins, "greeter", GREETER.format(version=1), endpoints=[{"method": "GET", "path": "/hello"}])
    write_plugin(plugins, "web", "sleeper.py")
    async with running_api(settings) as api:
        assert (await answer(api, "/api/plugins/greeter/hello")) == (
            200,
            {"version": 1, "root_path": "/api/plugins/greeter"},
        )
        pid = (await api.plugin("web"))["pid"]

        # Python that does not import: the old version keeps serving, the reason is shown.
        (plugins / "greeter" / "plugin.py").write_text(GREETER.format(version=2) + "\ndef broken(:\n")
        await wait_until(lambda: _field(api, "greeter", "last_error", "reload failed"))
        greeter = await api.plugin("greeter")
        assert greeter["state"] == "RUNNING" and "SyntaxError" in greeter["last_error"]
        assert (await answer(api, "/api/plugins/greeter/hello"))[1]["version"] == 1

        # Code that imports but fails in initialize(): the previous version is started again.
        (plugins / "greeter" / "plugin.py").write_text(
            GREETER.format(version=3) + "\n    async def initialize(self, supervisor, config):\n"
            "        raise RuntimeError('no database')\n"
        )
        await wait_until(lambda: _field(api, "greeter", "last_error", "no database"))
        assert (await answer(api, "/api/plugins/greeter/hello"))[1]["version"] == 1
        assert (await api.plugin("greeter"))["state"] == "RUNNING"

        # A manifest that is not valid JSON: both plugins keep running as they were.
        (plugins / "web" / "manifest.json").write_text("{ not json")
        await wait_until(lambda: _field(api, "web", "last_error", "not valid JSON"))
        assert (await api.plugin("web"))["state"] == "RUNNING" and (await api.plugin("web"))["pid"] == pid

        # Fixed: the new version runs.
        (plugins / "greeter" / "plugin.py").write_text(GREETER.format(version=4))
        await wait_until(lambda: _ok(answer(api, "/api/plugins/greeter/hello"), {"version": 4}))

        # A plugin that never loaded (FATAL) loads once its code is fixed.
        write_inprocess(plugins, "late", "raise ImportError('not yet')\n")
        await wait_until(lambda: _field(api, "late", "state", "FATAL"))
        assert "not yet" in (await api.plugin("late"))["detail"]
        (plugins / "late" / "plugin.py").write_text(GREETER.format(version=5))
        await wait_until(lambda: _field(api, "late", "state", "RUNNING"))


async def _ok(response: Any, expected: dict[str, Any]) -> bool:
    status, body = await response
    return status == 200 and isinstance(body, dict) and all(body.get(k) == v for k, v in expected.items())


async def _status(api: Api, path: str, expected: int) -> bool:
    return (await api.client.get(path)).status_code == expected


async def _field(api: Api, key: str, name: str, text: str) -> bool:
    r = await api.client.get(f"/api/v1/plugins/{key}")
    return r.status_code == 200 and text in str(r.json().get(name))


async def test_a_process_plugins_failed_reload_is_plugin_reload_failed_and_plugin_failed_to_old_subscribers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(**{"plugins.watch": False})
    folder = write_plugin(settings.plugins_dir, "web", "sleeper.py")
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        await wait_until(lambda: sup.plugin("web").state == "RUNNING")
        with sup.bus.subscribe(["plugin.reload_failed"]) as dotted, sup.bus.subscribe(["plugin-failed"]) as old:
            (folder / "manifest.json").write_text("{ not json", encoding="utf-8")
            await sup.reload(keep_on_error=True)
            for sub, name in ((dotted, "plugin.reload_failed"), (old, "plugin-failed")):
                events = [e for e in await sub.get_batch(10) if isinstance(e, PluginFailed)]
                assert [(sub.topic_name(e), e.name, e.phase) for e in events] == [(name, "web", "reload")]
        assert sup.plugin("web").state == "RUNNING"
