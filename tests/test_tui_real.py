"""The TUI driving real supervisors: s/x/r on real plugin processes, quit in embedded mode, attach to headless."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import open_supervisor, wait_until
from fixtures.plugins.hostile_output import END, HOSTILE, SHOWN
from fixtures.ports import free_port
from test_tui import cell, open_palette, palette_search, screen_text, select_plugin, table, until

from supervisor_tui.config import Settings
from supervisor_tui.tui import attach
from supervisor_tui.tui.app import MainScreen, SupervisorApp
from supervisor_tui.tui.cells import PLUGIN_STATE_STYLES
from supervisor_tui.tui.client_local import InProcessClient
from supervisor_tui.tui.client_remote import RemoteClient
from supervisor_tui.tui.screens.confirm import ConfirmScreen

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

SIZE = (100, 30)


def alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_s_x_r_change_the_real_process(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    make_plugin("sleepy", "sleeper.py", autostart=False)
    async with open_supervisor(settings) as sup:
        app = SupervisorApp(InProcessClient(sup, "http://127.0.0.1:4000"), handle_signals=False)
        async with app.run_test(size=SIZE) as pilot:
            await select_plugin(pilot, app, "sleepy")
            assert sup.plugin("sleepy").state == "STOPPED"

            await pilot.press("s")
            await until(pilot, lambda: sup.plugin("sleepy").state == "RUNNING", within=20)
            first = sup.plugin("sleepy").pid
            assert alive(first)
            await until(pilot, lambda: cell(app, "plugins", "sleepy", "state") == "RUNNING")

            await pilot.press("r")
            await until(pilot, lambda: sup.plugin("sleepy").pid not in (None, first), within=20)
            await until(pilot, lambda: sup.plugin("sleepy").state == "RUNNING", within=20)
            second = sup.plugin("sleepy").pid
            assert not alive(first) and alive(second)

            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: sup.plugin("sleepy").state == "STOPPED", within=20)
            await wait_until(lambda: not alive(second), 10)
            await until(pilot, lambda: cell(app, "plugins", "sleepy", "state") == "STOPPED")


async def test_cancelled_stop_leaves_the_process_running(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    make_plugin("sleepy", "sleeper.py", autostart=True)
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        pid = sup.plugin("sleepy").pid
        app = SupervisorApp(InProcessClient(sup, "http://127.0.0.1:4000"), handle_signals=False)
        async with app.run_test(size=SIZE) as pilot:
            await select_plugin(pilot, app, "sleepy")
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, MainScreen))
            # The pane switch after it is seen: the answer before it was handled, and asked for nothing.
            await pilot.press("2")
            await until(pilot, lambda: app.main.active_pane == "consoles")
            assert not app.view.pending_actions
            assert sup.plugin("sleepy").state == "RUNNING"
            assert sup.plugin("sleepy").pid == pid and alive(pid)


async def test_a_failing_start_notifies_with_the_supervisors_reason(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("broken", "crash_at_start.py", autostart=False, startretries=0)
    async with open_supervisor(settings) as sup:
        app = SupervisorApp(InProcessClient(sup, "http://127.0.0.1:4000"), handle_signals=False)
        async with app.run_test(size=SIZE) as pilot:
            await select_plugin(pilot, app, "broken")
            await pilot.press("s")
            await until(pilot, lambda: any("start broken failed" in str(n.message) for n in app.notices), 20)
            await until(pilot, lambda: cell(app, "plugins", "broken", "state") in ("FATAL", "BACKOFF"), 20)


async def test_quit_in_embedded_mode_returns_and_the_plugins_stop(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("sleepy", "sleeper.py", autostart=True)
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        pid = sup.plugin("sleepy").pid
        app = SupervisorApp(InProcessClient(sup, "http://127.0.0.1:4000"), handle_signals=False)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "1 running plugin will be stopped (sleepy)" in app.screen.message
            await pilot.press("y")
            await until(pilot, lambda: not app.is_running)
        assert app.return_code == 0
        assert alive(pid)  # the app itself never stops plugins; the embedded runner closes the supervisor next
    assert not alive(pid)


async def test_read_only_embedded_refuses_actions(settings: Settings, make_plugin: Callable[..., Path]) -> None:
    make_plugin("sleepy", "sleeper.py", autostart=False)
    async with open_supervisor(settings) as sup:
        app = SupervisorApp(InProcessClient(sup, "http://127.0.0.1:4000", read_only=True), handle_signals=False)
        async with app.run_test(size=SIZE) as pilot:
            await select_plugin(pilot, app, "sleepy")
            await pilot.press("s", "2")
            # The pane switch after it is seen: the key before it was handled, and did nothing.
            await until(pilot, lambda: app.main.active_pane == "consoles")
            assert not app.view.pending_actions
            assert sup.plugin("sleepy").state == "STOPPED"
            assert "read-only" in screen_text(app)


def _api_url(record: dict[str, Any]) -> str | None:
    url = record.get("url")
    return str(url) if record.get("event") == "api_listening" and url else None


async def test_attach_to_a_headless_supervisor(
    headless: Any, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    make_plugin("sleepy", "sleeper.py", autostart=True)
    proc = headless()
    record = await proc.wait_for(lambda r: _api_url(r) is not None, timeout=15)
    url = _api_url(record)
    assert url is not None
    await proc.wait_state("sleepy", "RUNNING")
    token = (settings.data_dir / "admin.token").read_text().strip()

    client = RemoteClient(url, token)
    await client.connect()
    app = SupervisorApp(client, handle_signals=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await select_plugin(pilot, app, "sleepy")
            await until(pilot, lambda: cell(app, "plugins", "sleepy", "state") == "RUNNING", within=10)
            assert "attached" in screen_text(app)
            await pilot.press("x")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await until(pilot, lambda: cell(app, "plugins", "sleepy", "state") == "STOPPED", within=20)
            await pilot.press("s")
            await until(pilot, lambda: cell(app, "plugins", "sleepy", "state") == "RUNNING", within=20)
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "keep running" in app.screen.message
            await pilot.press("y")
            await until(pilot, lambda: not app.is_running)
    finally:
        await client.close()
    assert proc.proc.poll() is None  # attached quit leaves the supervisor and its plugins running


def test_attach_to_an_unreachable_url_is_one_line_and_nonzero(capsys: pytest.CaptureFixture[str]) -> None:
    args = argparse.Namespace(url="http://127.0.0.1:9", token="x", read_only=False, config=None)
    code = attach.main(args)
    err = capsys.readouterr().err
    assert code != 0
    assert err.count("\n") == 1 and "cannot reach http://127.0.0.1:9" in err
    assert "Traceback" not in err


async def test_consoles_from_the_real_console_service(settings: Settings) -> None:
    from supervisor_tui.consoles.models import decode_heartbeat, decode_registration
    from supervisor_tui.consoles.service import ConsoleService
    from supervisor_tui.tui.screens.console_detail import ConsoleDetailScreen

    async with open_supervisor(settings) as sup:
        service = ConsoleService(sup.store, sup.bus, settings, sup.logs)
        await service.start()
        sup.attach_consoles(service)
        try:
            system = b'"sistema": {"hostname": "render-07", "platform": "linux"}'
            await service.register(
                decode_registration(b'{"id": "c-one", "nombre": "Consola uno", ' + system + b"}", True)
            )
            await service.register(decode_registration(b'{"id": "c-two", "name": "console two"}', False))
            odd = b'{"id": "c-odd", "nombre": "odd [/] [b]name", "sistema": {"hostname": "h[/]st"}}'
            await service.register(decode_registration(odd, True))
            app = SupervisorApp(InProcessClient(sup, "http://127.0.0.1:4000"), handle_signals=False)
            async with app.run_test(size=SIZE) as pilot:
                await pilot.press("2")
                await until(pilot, lambda: table(app, "consoles").row_count == 3)
                # A heartbeat arrives: the row changes in place.
                body = b'{"estado": "ocupada", "videoEnProceso": "Video Historia 1 (2/5)"}'
                await service.heartbeat("c-one", decode_heartbeat(body, True))
                await until(pilot, lambda: cell(app, "consoles", "c-one", "state") == "busy", within=10)
                assert cell(app, "consoles", "c-one", "job") == "Video Historia 1 (2/5)"
                assert cell(app, "consoles", "c-one", "seen").endswith("s ago")
                await until(pilot, lambda: "1 busy" in screen_text(app), within=5)

                await pilot.press("slash", *"two")
                await until(pilot, lambda: table(app, "consoles").row_count == 1)
                await pilot.press("escape")
                await until(pilot, lambda: table(app, "consoles").row_count == 3)

                # Console-supplied text is never read as markup: table, palette, details.
                assert cell(app, "consoles", "c-odd", "name") == "odd [/] [b]name"
                await open_palette(pilot, app)
                await palette_search(pilot, app, "odd", "console odd [/] [b]name")
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, ConsoleDetailScreen))
                await until(pilot, lambda: "h[/]st" in screen_text(app))
                await pilot.press("escape")
                await until(pilot, lambda: not isinstance(app.screen, ConsoleDetailScreen))

                t = table(app, "consoles")
                t.move_cursor(row=t.get_row_index("c-one"))
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, ConsoleDetailScreen))
                await until(pilot, lambda: "render-07" in screen_text(app) and "Transitions" in screen_text(app))
                assert "Video Historia 1 (2/5)" in screen_text(app)
        finally:
            await service.stop()


async def test_plugin_output_and_stored_names_are_shown_escaped(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    from supervisor_tui.consoles.models import HeartbeatInput, RegistrationInput
    from supervisor_tui.consoles.service import ConsoleService
    from supervisor_tui.plugins.external import ExternalPlugin
    from supervisor_tui.tui.screens.console_detail import ConsoleDetailScreen
    from supervisor_tui.tui.screens.plugin_detail import PluginDetailScreen

    make_plugin("hostile", "hostile_output.py")
    # Names stored before the API refused them reach the TUI as they are: it must escape them itself.
    name, host, job = "w1\x1b]0;TITLE\x07\x1b]52;c;cHduZWQ=\x07", "host\u202elmth.exe", "job \x9b31m red"
    async with open_supervisor(settings) as sup:
        service = ConsoleService(sup.store, sup.bus, settings, sup.logs)
        await service.start()
        sup.attach_consoles(service)
        try:
            system = json.dumps({"hostname": host})
            await service.register(RegistrationInput("c-odd", name, "idle", system, host, None))
            await service.heartbeat("c-odd", HeartbeatInput("busy", system, host, None, None, job))
            await sup.start("hostile")
            sup.register(ExternalPlugin("billing", f"Bill{HOSTILE}", "1.0", "127.0.0.1", 9, (), 30.0, 5.0, 1024))
            app = SupervisorApp(InProcessClient(sup, "http://127.0.0.1:4000"), handle_signals=False)
            async with app.run_test(size=(160, 48)) as pilot:  # wide: every pane at once
                await until(pilot, lambda: END in screen_text(app), within=20)
                await until(pilot, lambda: table(app, "consoles").row_count == 1)
                await until(pilot, lambda: cell(app, "consoles", "c-odd", "state") == "busy")
                screen = screen_text(app)
                assert f"hostile-out {SHOWN} {END}" in screen and f"hostile-err {SHOWN} {END}" in screen
                assert cell(app, "plugins", "billing", "name") == f"Bill{SHOWN}"
                assert cell(app, "consoles", "c-odd", "name") == r"w1\x1b]0;TITLE\x07\x1b]52;c;cHduZWQ=\x07"
                assert cell(app, "consoles", "c-odd", "host") == r"host\u202elmth.exe"
                assert cell(app, "consoles", "c-odd", "job") == r"job \x9b31m red"
                assert not any(c in screen for c in "\x1b\x07\x9b\u202e"), screen

                app.open_console("c-odd")
                await until(pilot, lambda: isinstance(app.screen, ConsoleDetailScreen))
                await until(pilot, lambda: "Transitions" in screen_text(app))
                screen = screen_text(app)
                for shown in (r"w1\x1b]0;TITLE\x07\x1b]52;c;cHduZWQ=\x07", r"host\u202elmth.exe", r"job \x9b31m red"):
                    assert shown in screen
                assert not any(c in screen for c in "\x1b\x07\x9b\u202e"), screen
                await pilot.press("escape")
                await until(pilot, lambda: not isinstance(app.screen, ConsoleDetailScreen))

                app.open_plugin("hostile")
                await until(pilot, lambda: isinstance(app.screen, PluginDetailScreen) and END in screen_text(app))
                screen = screen_text(app)
                assert SHOWN in screen and not any(c in screen for c in "\x1b\x07\u202e"), screen
        finally:
            await service.stop()


async def test_attached_tui_shows_a_banner_when_the_supervisor_goes_and_reconnects(
    headless: Any, settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    import signal

    make_plugin("sleepy", "sleeper.py", autostart=True)
    port = free_port()
    first = headless("--port", str(port))
    await first.wait_state("sleepy", "RUNNING")
    token = (settings.data_dir / "admin.token").read_text().strip()
    client = RemoteClient(f"127.0.0.1:{port}", token)
    await client.connect()
    app = SupervisorApp(client, handle_signals=False)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: "sleepy" in screen_text(app))
            first.signal(signal.SIGTERM)
            assert await first.wait() == 0
            await until(pilot, lambda: "connection lost" in screen_text(app), within=20)
            # An action while the supervisor is away fails with a message instead of hanging.
            await select_plugin(pilot, app, "sleepy")
            await pilot.press("r")
            await until(pilot, lambda: any("restart sleepy failed" in str(n.message) for n in app.notices))
            second = headless("--port", str(port))
            await second.wait_state("sleepy", "RUNNING")
            await until(pilot, lambda: "connection lost" not in screen_text(app), within=20)
            await until(pilot, lambda: cell(app, "plugins", "sleepy", "state") == "RUNNING", within=10)
    finally:
        await client.close()


async def test_the_plugins_pane_shows_a_tasks_completed_and_failed_states(
    settings: Settings, make_plugin: Callable[..., Path]
) -> None:
    script = "import os, sys; sys.exit(int(os.environ['CODE']))\n"
    make_plugin("migrate", script, oneshot=True, env={"CODE": "0"})
    make_plugin("seed", script, oneshot=True, env={"CODE": "4"})
    async with open_supervisor(settings) as sup:
        await sup.start_all()
        await wait_until(lambda: {sup.plugin("migrate").state, sup.plugin("seed").state} == {"COMPLETED", "FAILED"})
        app = SupervisorApp(InProcessClient(sup, "http://127.0.0.1:4000"), handle_signals=False)
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: cell(app, "plugins", "migrate", "state") == "COMPLETED")
            await until(pilot, lambda: cell(app, "plugins", "seed", "state") == "FAILED")
            plugins = table(app, "plugins")
            assert str(plugins.get_cell("migrate", "state").style) == PLUGIN_STATE_STYLES["COMPLETED"]
            assert str(plugins.get_cell("seed", "state").style) == PLUGIN_STATE_STYLES["FAILED"]
            assert "1 plugin FAILED" in screen_text(app)  # the header warns about the failed task
