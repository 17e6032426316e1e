"""The pure parts: dependency levels (missing dependencies, cycles), the mermaid block's safety, log search's
bounds, and the TUI's filter words (group:NAME, re:PATTERN)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from supervisor_tui.core.graph import MISSING, DependencyGraph, render_mermaid, render_text
from supervisor_tui.core.log_search import (
    MAX_PATTERN,
    LogSearchError,
    PatternTooSlow,
    compile_pattern,
    filter_matching,
    grep,
)
from supervisor_tui.plugins.model import PluginSnapshot
from supervisor_tui.tui.view_model import parse_plugin_filter, plugin_matches
from supervisor_tui.tui.widgets.logs_pane import logs_title, split_pattern


def test_levels_missing_dependencies_and_a_cycle_cut_where_it_closes() -> None:
    graph = DependencyGraph.build(
        [
            ("web", "RUNNING", "front", ["api", "ghost"]),
            ("api", "RUNNING", "front", ["db"]),
            ("db", "RUNNING", None, []),
            ("a", "INVALID", None, ["b"]),
            ("b", "INVALID", None, ["a"]),
        ]
    )
    levels = {n.key: n.level for n in graph.nodes.values()}
    assert levels["db"] == 0 and levels["ghost"] == 0 and levels["api"] == 1 and levels["web"] == 2
    assert graph.nodes["ghost"].state == MISSING
    assert {levels["a"], levels["b"]} == {0, 1}  # a finite answer, not a recursion error
    assert render_text(DependencyGraph.build([])) == ["no plugins"]
    assert DependencyGraph.from_dict(graph.to_dict()).to_dict() == graph.to_dict()


def test_mermaid_labels_hold_nothing_that_breaks_the_block() -> None:
    """A remote supervisor's answer (GET /api/v1/graph) is not trusted to hold only keys and states."""
    graph = DependencyGraph.from_dict(
        {"nodes": [{"key": 'x"] --> evil["', "state": "RUN]NING", "group": "g\nend", "depends_on": []}]}
    )
    lines = render_mermaid(graph)
    assert lines[0] == "graph TD"
    assert lines[1:4] == ['  subgraph g0["group g?end"]', '    p0["x???--??evil?? (RUN?NING)"]', "  end"]
    assert all(line.count('"') in (0, 2) for line in lines)


@dataclass(frozen=True)
class Line:
    message: str


def test_search_newest_matches_first_limits_and_bad_patterns() -> None:
    lines = [Line(f"request {i} {'ok' if i % 3 else 'failed'}") for i in range(30)]
    pattern = compile_pattern(r"request \d+ failed$")
    assert [r.message for r in grep(lines, pattern, 2)] == ["request 24 failed", "request 27 failed"]
    assert len(filter_matching(lines, pattern)) == 10
    assert grep(lines, pattern, 0) == []
    for text, problem in [
        ("", "the pattern is empty"),
        ("(", "not a valid regular expression"),
        ("x" * (MAX_PATTERN + 1), f"longer than {MAX_PATTERN} characters"),
    ]:
        with pytest.raises(LogSearchError, match=problem.replace("(", r"\(")) as caught:
            compile_pattern(text)
        assert caught.value.code == "bad_pattern"


def test_a_catastrophic_pattern_is_stopped_on_a_line_and_a_search_within_its_budget() -> None:
    evil = compile_pattern("(a|aa)+$")
    with pytest.raises(PatternTooSlow) as caught:
        grep([Line("a" * 5000 + "!")], evil, 10)
    assert caught.value.code == "pattern_too_slow" and "takes too long on a log line" in str(caught.value)
    # many lines each just under the line's time: the search as a whole stops at its budget
    with pytest.raises(PatternTooSlow, match=r"took longer than 0\.2s"):
        grep([Line("a" * 18 + "!")] * 100_000, compile_pattern("(a|aa)+$"), 10, budget=0.2)


def test_tui_filter_words() -> None:
    assert parse_plugin_filter("group:Front api") == ("front", "api")
    assert parse_plugin_filter("group: api") == (None, "group: api")
    web = PluginSnapshot(key="web", group="front")
    tools = PluginSnapshot(key="tools")
    assert plugin_matches(web, "group:front") and not plugin_matches(tools, "group:front")
    assert plugin_matches(web, "fro")  # the group is text the plain filter matches too
    assert split_pattern("source:api re:HTTP/1.1 5\\d\\d  ") == ("source:api", "HTTP/1.1 5\\d\\d  ")
    assert split_pattern("timeout") == ("timeout", None)
    assert logs_title("api", "", "5\\d\\d") == "Logs of api matching /5\\d\\d/"
