"""The manifest's task, dependency-condition and probe fields: what they become, and each problem's exact words
(file, field, problem), on the fast path (a file decoded at once) and on the walk of a rejected one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from supervisor_tui.plugins.manifest import ManifestError, discover, load_manifest

BASE = {"key": "demo", "command": ["python", "server.py"]}


def load(tmp_path: Path, **fields: Any) -> Any:
    folder = tmp_path / "demo"
    folder.mkdir(exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({**BASE, **fields}))
    return load_manifest(folder)


def problem(tmp_path: Path, **fields: Any) -> tuple[str, str]:
    with pytest.raises(ManifestError) as info:
        load(tmp_path, **fields)
    assert info.value.path == str(tmp_path / "demo" / "manifest.json")
    return info.value.field, info.value.problem


def test_a_oneshot_task_defaults_to_no_restart_and_a_service_to_on_failure(tmp_path: Path) -> None:
    assert load(tmp_path).oneshot is False and load(tmp_path).restart == "on-failure"
    task = load(tmp_path, oneshot=True)
    assert task.oneshot is True and task.restart == "never"
    assert load(tmp_path, oneshot=True, restart="on-failure").restart == "on-failure"


def test_depends_on_takes_keys_and_objects_with_conditions(tmp_path: Path) -> None:
    m = load(tmp_path, depends_on=["db", {"key": "migrate", "condition": "completed_successfully"}, {"key": "cache"}])
    assert m.depends_on == ("db", "migrate", "cache")
    assert [m.condition(k) for k in m.depends_on] == ["healthy", "completed_successfully", "healthy"]
    assert load(tmp_path, depends_on=["db", "db"]).depends_on == ("db",)


def test_health_types_and_their_fields(tmp_path: Path) -> None:
    http = load(tmp_path, health={"path": "/health"}).health
    assert (http.type, http.path, http.command) == ("http", "/health", None)
    tcp = load(tmp_path, health={"type": "tcp"}).health
    assert (tcp.type, tcp.path, tcp.command) == ("tcp", None, None)
    argv = load(tmp_path, health={"command": ["python", "check.py"]}).health
    assert (argv.type, argv.command) == ("exec", ("python", "check.py"))
    shell = load(tmp_path, health={"type": "exec", "command": "curl -fs localhost:$PORT"}).health
    assert shell.command == "curl -fs localhost:$PORT"
    assert load(tmp_path, ready_log_line=r"listening on \d+").ready_log_line == r"listening on \d+"


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"oneshot": "yes"}, "oneshot", "must be true or false"),
        (
            {"depends_on": [{"key": "db", "condition": "ready"}]},
            "depends_on[0].condition",
            "must be one of started, healthy, completed, completed_successfully, got 'ready'",
        ),
        ({"depends_on": [{"condition": "started"}]}, "depends_on[0].key", "is required (the dependency's key)"),
        (
            {"depends_on": [{"key": "db", "when": 1}]},
            "depends_on[0]",
            "has unknown field 'when' (allowed: key, condition)",
        ),
        ({"depends_on": [{"key": "Bad"}]}, "depends_on", "'Bad' is not a valid plugin key"),
        (
            {"depends_on": ["db", 2]},
            "depends_on[1]",
            "must be a plugin key or an object {key, condition}, got a number",
        ),
        (
            {"depends_on": ["db", {"key": "db", "condition": "started"}]},
            "depends_on",
            "'db' is listed twice, with conditions healthy and started",
        ),
        ({"depends_on": [{"key": "demo", "condition": "started"}]}, "depends_on", "demo cannot depend on itself"),
        (
            {"health": {"type": "ping"}},
            "health.type",
            "must be one of http, tcp, exec, got 'ping'",
        ),
        ({"health": {"interval_s": 1}}, "health.path", 'is required (e.g. "/health"), or a type "tcp" or "exec"'),
        (
            {"health": {"type": "exec"}},
            "health.command",
            'is required for type "exec" (argv list, or a string run by /bin/sh -c)',
        ),
        ({"health": {"type": "tcp", "path": "/h"}}, "health.path", "is only for type \"http\", not 'tcp'"),
        ({"health": {"path": "/h", "command": "true"}}, "health.command", "is only for type \"exec\", not 'http'"),
        (
            {"health": {"command": []}},
            "health.command",
            'must be a non-empty list of strings (argv), e.g. ["python", "server.py"]',
        ),
        (
            {"health": {"command": "  "}},
            "health.command",
            "must be a non-empty list of strings (argv) or a string (run by /bin/sh -c), got an empty string",
        ),
        ({"ready_log_line": "(unclosed"}, "ready_log_line", "is not a valid regular expression: "),
        ({"ready_log_line": ""}, "ready_log_line", "must be a regular expression of 1 to 1000 characters"),
        ({"ready_log_line": 5}, "ready_log_line", "must be a string (a regular expression), got a number"),
    ],
)
def test_each_problem_names_the_file_the_field_and_what_is_wrong(
    tmp_path: Path, fields: dict[str, Any], field: str, words: str
) -> None:
    got_field, got_problem = problem(tmp_path, **fields)
    assert got_field == field and got_problem.startswith(words), (got_field, got_problem)


def test_unknown_dependencies_and_cycles_through_condition_objects(tmp_path: Path) -> None:
    def write(key: str, depends_on: list[Any]) -> None:
        (tmp_path / key).mkdir()
        (tmp_path / key / "manifest.json").write_text(json.dumps({**BASE, "key": key, "depends_on": depends_on}))

    write("app", [{"key": "migrate", "condition": "completed_successfully"}])
    write("migrate", [{"key": "app", "condition": "started"}])
    write("lonely", [{"key": "ghost", "condition": "completed"}])
    write("fine", [])
    found = discover(tmp_path)
    assert set(found.manifests) == {"fine"}
    assert (
        str(found.invalid["app"])
        == f"{tmp_path / 'app' / 'manifest.json'}: depends_on: dependency cycle: app -> migrate -> app"
    )
    assert found.invalid["lonely"].field == "depends_on"
    assert found.invalid["lonely"].problem == "unknown plugin 'ghost'"
