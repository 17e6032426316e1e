"""Manifest validation: every problem names file, field and what is wrong; one bad plugin never hides the others."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from supervisor_tui.plugins.manifest import (
    ManifestError,
    discover,
    load_manifest,
    parse_manifest,
    start_order,
)

REPO = Path(__file__).resolve().parent.parent
PATH = Path("/srv/plugins/demo/manifest.json")


def parse(**fields: Any) -> Any:
    data = {"key": "demo", "command": ["python", "server.py"], **fields}
    return parse_manifest(data, PATH)


def error(**fields: Any) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        parse(**fields)
    return info.value


def write(plugins: Path, folder: str, data: Any) -> Path:
    (plugins / folder).mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (plugins / folder / "manifest.json").write_text(text)
    return plugins / folder


def test_defaults_for_everything_but_key_and_command() -> None:
    m = parse()
    assert m.key == "demo" and m.name == "demo" and m.command == ("python", "server.py")
    assert m.port is None and m.health is None and m.endpoints == () and m.depends_on == ()
    assert m.autostart is True and m.restart == "on-failure" and m.startretries == 3 and m.startsecs == 1.0
    assert m.stopsignal == "TERM" and m.stopwaitsecs == 10.0 and m.backoff_max_s == 30.0
    assert m.folder == PATH.parent


def test_full_manifest_and_seed_003_id_alias() -> None:
    m = parse_manifest(
        {
            "id": "crypto-service",
            "name": "Crypto Service",
            "version": "1.0.0",
            "description": "Cryptographic operations",
            "command": ["python", "server.py"],
            "env": {"MODE": "fast"},
            "port": 4001,
            "endpoints": [
                {"method": "post", "path": "/hash", "description": "Hash data"},
                {"method": "GET", "path": "/x/{id}"},
            ],
            "health": {"path": "/health", "interval_s": "5s", "timeout_s": 1, "failures": 2, "restart": True},
            "autostart": False,
            "restart": "always",
            "startsecs": 0.5,
            "startretries": 5,
            "backoff_max_s": 10,
            "stopsignal": "SIGINT",
            "stopwaitsecs": 3,
            "depends_on": ["db"],
            "timeout": "2s",
            "max_body": "1MiB",
        },
        PATH,
    )
    assert m.key == "crypto-service" and m.port == 4001 and m.env == {"MODE": "fast"}
    assert m.endpoints[0].method == "POST" and m.endpoints[1].path == "/x/{id}"
    assert m.health is not None and m.health.interval_s == 5.0 and m.health.restart is True
    assert m.stopsignal == "INT" and m.depends_on == ("db",) and m.timeout == 2.0 and m.max_body == 1024**2


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"key": "Bad Key"}, "key", "must match"),
        ({"key": None}, "key", "is required"),
        ({"key": "supervisor"}, "key", "reserved"),
        ({"command": []}, "command", "non-empty list"),
        ({"command": "python server.py"}, "command", "list"),
        ({"colour": "red"}, "colour", "unknown field"),
        ({"startsecs": "soon"}, "startsecs", "duration"),
        ({"startretries": -1}, "startretries", "between"),
        ({"autostart": "yes"}, "autostart", "true or false"),
        ({"port": 70000}, "port", "between"),
        ({"restart": "sometimes"}, "restart", "on-failure"),
        ({"stopsignal": "KILL"}, "stopsignal", "not KILL"),
        ({"env": {"PORT": "1"}}, "env", "set by the supervisor"),
        ({"env": {"A": 1}}, "env", "must be a string"),
        ({"endpoints": [{"method": "FETCH", "path": "/a"}]}, "endpoints[0].method", "must be one of"),
        ({"endpoints": [{"method": "GET", "path": "a"}]}, "endpoints[0].path", "starting with '/'"),
        ({"endpoints": [{"method": "GET", "path": "/a", "x": 1}]}, "endpoints[0]", "unknown field"),
        ({"health": {"interval_s": 1}}, "health.path", "required"),
        ({"health": {"path": "/h", "every": 1}}, "health", "unknown field 'every'"),
        ({"depends_on": "db"}, "depends_on", "list"),
        ({"depends_on": ["demo"]}, "depends_on", "itself"),
    ],
)
def test_each_problem_names_the_file_the_field_and_what_is_wrong(
    fields: dict[str, Any], field: str, words: str
) -> None:
    err = error(**fields)
    assert err.field == field, str(err)
    assert words in err.problem, str(err)
    assert str(PATH) in str(err)


def test_python_command_runs_with_the_supervisors_interpreter() -> None:
    assert parse(command=["python3", "-u", "x.py"]).argv() == [sys.executable, "-u", "x.py"]
    assert parse(command=["./run.sh"]).argv() == ["./run.sh"]


def test_discover_isolates_invalid_plugins(tmp_path: Path) -> None:
    write(tmp_path, "good", {"key": "good", "command": ["true"]})
    write(tmp_path, "broken-json", "{not json")
    write(tmp_path, "wrong-type", {"key": "wrong-type", "command": ["true"], "startsecs": "x"})
    write(tmp_path, "dup", {"key": "good", "command": ["true"]})
    write(tmp_path, "needs-ghost", {"key": "needs-ghost", "command": ["true"], "depends_on": ["ghost"]})
    write(tmp_path, "on-invalid", {"key": "on-invalid", "command": ["true"], "depends_on": ["wrong-type"]})
    (tmp_path / "not-a-plugin").mkdir()
    found = discover(tmp_path)
    assert set(found.manifests) == {"good"}
    assert set(found.invalid) == {"broken-json", "wrong-type", "dup", "needs-ghost", "on-invalid"}
    assert "not valid JSON" in str(found.invalid["broken-json"])
    assert found.invalid["dup"].field == "key" and "already used" in found.invalid["dup"].problem
    assert "unknown plugin 'ghost'" in str(found.invalid["needs-ghost"])
    assert found.invalid["on-invalid"].field == "depends_on"


def test_dependency_cycle_rejects_every_plugin_in_it(tmp_path: Path) -> None:
    write(tmp_path, "a", {"key": "a", "command": ["true"], "depends_on": ["b"]})
    write(tmp_path, "b", {"key": "b", "command": ["true"], "depends_on": ["c"]})
    write(tmp_path, "c", {"key": "c", "command": ["true"], "depends_on": ["a"]})
    write(tmp_path, "d", {"key": "d", "command": ["true"], "depends_on": ["a"]})
    write(tmp_path, "e", {"key": "e", "command": ["true"]})
    found = discover(tmp_path)
    assert set(found.manifests) == {"e"}
    for key in "abc":
        assert "dependency cycle" in found.invalid[key].problem
    assert found.invalid["d"].field == "depends_on"


def test_start_order_puts_dependencies_first(tmp_path: Path) -> None:
    write(tmp_path, "web", {"key": "web", "command": ["true"], "depends_on": ["api", "cache"]})
    write(tmp_path, "api", {"key": "api", "command": ["true"], "depends_on": ["db"]})
    write(tmp_path, "db", {"key": "db", "command": ["true"]})
    write(tmp_path, "cache", {"key": "cache", "command": ["true"]})
    order = start_order(discover(tmp_path).manifests)
    assert order.index("db") < order.index("api") < order.index("web")
    assert order.index("cache") < order.index("web")


def test_shipped_example_plugins_are_valid() -> None:
    found = discover(REPO / "plugins")
    assert {"echo", "hasher"} <= set(found.manifests)
    assert not found.invalid
    echo = load_manifest(REPO / "plugins" / "echo")
    assert echo.health is not None and echo.health.path == "/health"


def test_a_rejected_folder_never_takes_a_valid_plugins_key(tmp_path: Path) -> None:
    write(tmp_path, "folder-a", {"key": "b", "command": ["true"]})
    write(tmp_path, "b", "{broken")  # folder named like the valid plugin's key
    write(tmp_path, "supervisor", "{broken")
    found = discover(tmp_path)
    assert set(found.manifests) == {"b"}
    assert set(found.invalid) == {"b-2", "supervisor-2"}


def test_a_duration_no_float_can_hold_makes_only_its_plugin_invalid(tmp_path: Path) -> None:
    write(tmp_path, "good", {"key": "good", "command": ["true"]})
    write(tmp_path, "huge", '{"key": "huge", "command": ["true"], "startsecs": 1' + "0" * 400 + "}")
    found = discover(tmp_path)
    assert set(found.manifests) == {"good"}
    assert found.invalid["huge"].field == "startsecs"
    assert found.invalid["huge"].problem == "must be between 0 and 3600 seconds, got a larger number"


def test_a_number_with_too_many_digits_makes_only_its_plugin_invalid(tmp_path: Path) -> None:
    write(tmp_path, "good", {"key": "good", "command": ["true"]})
    write(tmp_path, "long", '{"key": "long", "command": ["true"], "port": ' + "1" * 5000 + "}")
    found = discover(tmp_path)
    assert set(found.manifests) == {"good"}
    limit = sys.get_int_max_str_digits()
    assert found.invalid["long"].problem == f"is not valid JSON: a number has more than {limit} digits"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"key": "demo\n", "command": ["true"]}, "key"),
        ({"key": "demo", "command": ["true"], "env": {"MODE\n": "x"}}, "env"),
        ({"key": "demo", "command": ["true"], "depends_on": ["db\n"]}, "depends_on"),
        ({"key": "demo", "module": "plugin:P\n"}, "module"),
    ],
)
def test_a_trailing_newline_is_no_part_of_a_name(data: dict[str, Any], field: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, PATH)
    assert info.value.field == field, str(info.value)
