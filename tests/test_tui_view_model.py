"""The TUI's view model and the panes' titles and filters, without an app: plain data in, what the panes show out."""

from __future__ import annotations

import subprocess
import sys

from supervisor_tui.core.events import (
    ConsoleHeartbeats,
    EventsDropped,
    LogLine,
    MetricsSample,
    PluginStateChanged,
    RedisLinkChanged,
)
from supervisor_tui.plugins.model import LogEntry, PluginSnapshot, PluginState
from supervisor_tui.tui.client import ConnectionChange, ConsoleInfo, ConsolePage
from supervisor_tui.tui.view_model import ViewModel, parse_console_filter
from supervisor_tui.tui.widgets.consoles_pane import consoles_title
from supervisor_tui.tui.widgets.logs_pane import logs_subtitle, logs_title, parse_log_filter
from supervisor_tui.tui.widgets.plugins_pane import plugins_title

NOW = 1_767_225_600.0


def plugins() -> list[PluginSnapshot]:
    return [
        PluginSnapshot(key="echo", name="Echo", state=PluginState.RUNNING, pid=10),
        PluginSnapshot(key="thumbnailer", name="Thumbnailer", state=PluginState.RUNNING, pid=11),
        PluginSnapshot(key="billing", name="Billing", state=PluginState.FATAL),
        PluginSnapshot(key="search", name="Search", state=PluginState.STOPPED),
    ]


def model() -> ViewModel:
    view = ViewModel()
    view.set_plugins(plugins())
    return view


def test_rows_follow_the_supervisors_order_and_the_filter() -> None:
    view = model()
    assert list(view.plugin_rows(NOW, 0.0, 0)) == ["echo", "thumbnailer", "billing", "search"]
    assert list(view.plugin_rows(NOW, 0.0, 0, "  TH ")) == ["thumbnailer"]
    assert list(view.plugin_rows(NOW, 0.0, 0, "fatal")) == ["billing"]  # states match too
    assert view.plugin_counts() == (2, 4)


def test_live_metrics_survive_a_snapshot_without_them() -> None:
    view = model()
    view.fold([MetricsSample("echo", cpu_percent=12.5, rss=4096, threads=2, fds=9, processes=1, ts=NOW)], NOW)
    assert view.plugins_by_key["echo"].cpu_percent == 12.5
    view.set_plugins(plugins())
    assert view.plugins_by_key["echo"].cpu_percent == 12.5
    assert view.plugins_by_key["echo"].rss == 4096
    assert len(view.metrics_history["echo"]) == 1
    # A new process (another pid) starts without the old one's figures.
    view.set_plugins([PluginSnapshot(key="echo", state=PluginState.RUNNING, pid=99)])
    assert view.plugins_by_key["echo"].cpu_percent is None


def test_request_rates_come_from_the_difference_of_counts() -> None:
    view = model()
    view.fold_counts({"echo": 100}, 10.0, NOW)
    assert view.request_rates.get("echo") is None  # one reading is no rate yet
    view.fold_counts({"echo": 150}, 12.0, NOW + 2)
    assert view.request_rates["echo"] == 25.0
    view.fold_counts({"echo": 10}, 14.0, NOW + 4)  # a restarted gateway counts from 0 again
    assert view.request_rates["echo"] == 0.0
    assert [rate for _, rate in view.rate_history["echo"]] == [25.0, 0.0]
    # Plugins that are not in the table yet keep their history for when they are.
    view.fold_counts({"new": 1}, 10.0, NOW)
    view.fold_counts({"new": 3}, 11.0, NOW)
    assert [rate for _, rate in view.rate_history["new"]] == [2.0]


def test_events_mark_what_to_fetch_and_record_state_changes() -> None:
    view = model()
    view.dirty_consoles = False
    event = PluginStateChanged("search", "STOPPED", "STARTING", "operator", ts=NOW)
    assert view.fold([event], NOW) == []
    assert view.dirty_plugins and not view.dirty_consoles
    assert list(view.state_history["search"]) == [(NOW, "STOPPED", "STARTING", "operator")]
    view.fold([ConsoleHeartbeats(1, ("c-1",))], NOW)
    assert view.dirty_consoles
    view.fold([RedisLinkChanged(False, "connection refused")], NOW)
    assert view.redis == "down" and "Redis down" in view.header_markup(wide=True)
    view.dirty_plugins = view.dirty_consoles = False
    view.fold([EventsDropped(12)], NOW)  # what the panes show may be stale: fetch both again
    assert view.dirty_plugins and view.dirty_consoles


def test_log_lines_up_to_the_horizon_are_shown_once() -> None:
    view = model()
    view.add_logs([LogEntry(2.0, "echo", "stdout", "info", "b"), LogEntry(1.0, "echo", "stdout", "info", "a")])
    view.fold([LogLine("echo", "stdout", "info", "b", ts=2.0)], NOW)  # already in the snapshot
    view.fold([LogLine("echo", "stdout", "info", "c", ts=3.0)], NOW)
    assert [e.message for e in view.take_logs()] == ["a", "b", "c"]
    assert view.take_logs() == []
    view.add_logs([LogEntry(3.0, "echo", "stdout", "info", "c"), LogEntry(4.0, "echo", "stdout", "info", "d")])
    assert [e.message for e in view.take_logs()] == ["d"]


def test_connection_events_are_answered_and_a_reconnect_refetches_everything() -> None:
    view = model()
    view.dirty_consoles = False
    lost = view.fold([ConnectionChange(False, "EOF")], NOW)
    assert lost == [ConnectionChange(False, "EOF")]
    assert not view.connected
    assert "disconnected" in view.header_markup(wide=True)
    back = view.fold([ConnectionChange(True, "reconnected")], NOW)
    assert back == [ConnectionChange(True, "reconnected")]
    assert view.connected and view.dirty_plugins and view.dirty_consoles


def test_an_action_in_progress_shows_in_its_row_and_refuses_a_second_one() -> None:
    view = model()
    assert view.begin_action("search", "start", 100.0) is None
    assert view.begin_action("search", "stop", 101.0) == "start…"
    state = view.plugin_rows(NOW, 103.0, 0)["search"][3][0]
    assert "start… 3s" in state
    view.set_plugin(PluginSnapshot(key="search", state=PluginState.RUNNING, pid=12))
    view.end_action("search")
    assert view.plugin_rows(NOW, 104.0, 0)["search"][3][0] == "RUNNING"
    assert view.dirty_plugins


def test_the_header_counts_plugins_and_consoles_and_warns() -> None:
    view = model()
    view.set_consoles(ConsolePage([], 7), {"active": 3, "error": 2, "inactive": 2})
    wide = view.header_markup(wide=True)
    assert "[#5fd75f]2[/]/4" in wide
    assert "consoles[/b] 7" in wide
    assert "1 plugin FATAL" in wide
    assert "2 error[/]" in wide and "2 inactive[/]" in wide
    narrow = view.header_markup(wide=False)
    assert "3 act[/]" in narrow and "2 inactive[/]" not in narrow


def test_quit_says_what_happens_to_running_plugins() -> None:
    view = model()
    assert "its 2 running plugins keep running" in view.quit_message("attached", "http://h:4000")
    embedded = view.quit_message("embedded", "http://h:4000")
    assert "2 running plugins will be stopped (echo, thumbnailer)." in embedded
    assert view.stop_detail("echo") == " (pid 10, RUNNING)"
    assert view.stop_detail("search") == " (STOPPED)"
    assert view.stop_detail("gone") == ""


def test_console_filter_picks_a_state_word() -> None:
    assert parse_console_filter("Error render") == ("error", "render")
    assert parse_console_filter("state:busy gpu") == ("busy", "gpu")
    assert parse_console_filter("idle busy") == ("idle", "busy")
    assert parse_console_filter("inactive render-07") == ("inactive", "render-07")


def test_the_consoles_are_fetched_once_a_second_unless_forced() -> None:
    view = model()
    assert view.consoles_due(100.0, 1.0) and not view.dirty_consoles
    assert not view.consoles_due(100.5, 1.0)
    assert view.consoles_due(100.6, 1.0, force=True)  # a new filter, the pane shown
    assert not view.consoles_due(101.5, 1.0) and view.consoles_due(101.6, 1.0)


def test_the_header_warnings_change_only_when_a_problem_does() -> None:
    view = model()
    assert not view.set_problems("", "")
    assert view.set_problems("caddy unreachable", "") and "caddy unreachable" in view.header_markup(True)
    assert not view.set_problems("caddy unreachable", "")
    assert view.set_problems("", "") and "caddy" not in view.header_markup(True)


def test_console_rows_are_the_window_in_its_order() -> None:
    view = model()
    page = ConsolePage([ConsoleInfo(id="b" * 12, name="b"), ConsoleInfo(id="a" * 12, name="a")], 2)
    view.set_consoles(page, {"idle": 2})
    assert view.consoles_changed
    assert list(view.console_rows(NOW, 600.0)) == ["b" * 12, "a" * 12]


def test_pane_titles_say_what_is_shown() -> None:
    assert plugins_title(3, 6, "", 6) == "Plugins 3/6 running"
    assert plugins_title(3, 6, "th[", 2) == "Plugins 3/6 running — filter: th\\[ (2 shown)"
    assert consoles_title(40, "", 40) == "Consoles 40"
    assert consoles_title(10_000, "", 500) == "Consoles 10,000 — showing 500, / to narrow"
    assert consoles_title(12, "error", 12) == "Consoles 12 matching “error”"
    assert logs_title(None, "") == "Logs"
    assert logs_title("echo", "get") == "Logs of echo matching “get”"
    assert logs_subtitle(True, 3, False) == "[bold black on #ffaf00] PAUSED — 3 new [/] space resumes"
    assert logs_subtitle(False, 0, True) == "following"
    assert logs_subtitle(False, 0, False) == "scrolled back — end follows"


def test_log_filter_takes_a_source_word() -> None:
    assert parse_log_filter("GET source:echo 500") == ("GET 500", "echo")
    assert parse_log_filter("source: timeout") == ("timeout", None)
    assert parse_log_filter("timeout") == ("timeout", False)


def test_the_view_model_runs_without_textual() -> None:
    code = "import sys, supervisor_tui.tui.view_model; sys.exit('textual' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr or "importing the view model imported textual"
