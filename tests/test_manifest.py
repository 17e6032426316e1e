"""Manifest validation: every problem names file, field and what is wrong; one bad plugin never hides the others."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest

from supervisor_tui.plugins.manifest import (
    ManifestError,
    discover,
    load_manifest,
    parse_manifest,
    start_order,
)
from supervisor_tui.plugins.manifest_rules import checked, diagnose, field_value
from supervisor_tui.plugins.manifest_schema import HealthSchema, ManifestSchema

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


M = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS"


@pytest.mark.parametrize(
    ("fields", "field", "problem"),
    [
        ({"key": 5}, "key", "must match ^[a-z0-9][a-z0-9_-]{0,62}$ (lowercase letters, digits, - and _), got 5"),
        (
            {"key": "install"},
            "key",
            "'install' is reserved (an admin route, POST /api/v1/plugins/install); choose another key",
        ),
        ({"id": "demo"}, "id", "give either key or id (its alias), not both"),
        ({"name": 5}, "name", "must be a string, got a number"),
        ({"version": None}, "version", "must be a string, got null"),
        ({"description": []}, "description", "must be a string, got a list"),
        ({"command": ["python", 1]}, "command", "must be a list of strings with a non-empty program first"),
        ({"command": ["", "x"]}, "command", "must be a list of strings with a non-empty program first"),
        ({"command": ["python", "a\x00"]}, "command", "must not contain NUL characters"),
        ({"env": []}, "env", 'must be an object of NAME: "value" strings, got a list'),
        ({"env": {"1X": "a"}}, "env", "'1X' is not a valid variable name"),
        ({"env": {"A": "\x00"}}, "env", "A must not contain NUL characters"),
        ({"port": "4001"}, "port", "must be an integer, got a string"),
        ({"port": 4001.0}, "port", "must be an integer, got a number"),
        ({"replicas": 0}, "replicas", "must be between 1 and 64, got 0"),
        ({"replicas": 65}, "replicas", "must be between 1 and 64, got 65"),
        ({"replicas": "2"}, "replicas", "must be an integer, got a string"),
        (
            {"replicas": 2, "port": 4001},
            "replicas",
            "must be 1 with a fixed port (each replica takes a port of the range)",
        ),
        ({"endpoints": {}}, "endpoints", "must be a list of {method, path, description}, got an object"),
        ({"endpoints": [5]}, "endpoints[0]", "must be an object {method, path, description}, got a number"),
        ({"endpoints": [{"path": "/a"}]}, "endpoints[0].method", f"must be one of {M}, got None"),
        ({"endpoints": [{"method": "GET"}]}, "endpoints[0].path", "must be a string starting with '/', got None"),
        (
            {"endpoints": [{"method": "GET", "path": "/a b"}]},
            "endpoints[0].path",
            "'/a b' has an invalid segment (use plain segments or {param})",
        ),
        (
            {"endpoints": [{"method": "GET", "path": "/a", "description": 1}]},
            "endpoints[0].description",
            "must be a string, got a number",
        ),
        (
            {"endpoints": [{"method": "GET", "path": "/a"}, {"method": "get", "path": "/a"}]},
            "endpoints[1]",
            "duplicates GET /a",
        ),
        (
            {"health": "/h"},
            "health",
            "must be an object {type, path, command, interval_s, timeout_s, failures} or null, got a string",
        ),
        ({"health": {"path": "h"}}, "health.path", "must start with '/', got 'h'"),
        ({"health": {"path": 5}}, "health.path", "must be a string, got a number"),
        (
            {"health": {"path": "/h", "interval_s": "0s"}},
            "health.interval_s",
            "must be between 0.05 and 86400 seconds, got 0",
        ),
        (
            {"health": {"path": "/h", "timeout_s": True}},
            "health.timeout_s",
            'must be a number of seconds or a duration like "5s", got a boolean',
        ),
        ({"health": {"path": "/h", "failures": 0}}, "health.failures", "must be between 1 and 1000, got 0"),
        (
            {"health": {"path": "/h", "start_timeout_s": 0}},
            "health.start_timeout_s",
            "must be between 0.1 and 86400 seconds, got 0",
        ),
        ({"health": {"path": "/h", "restart": 1}}, "health.restart", "must be true or false, got a number"),
        (
            {"liveness": "/h"},
            "liveness",
            "must be an object {type, path, command, interval_s, timeout_s, failures} or null, got a string",
        ),
        (
            {"liveness": {"type": "tcp", "interval_s": "0s"}},
            "liveness.interval_s",
            "must be between 0.05 and 86400 seconds, got 0",
        ),
        (
            {"liveness": {"type": "exec"}},
            "liveness.command",
            'is required for type "exec" (argv list, or a string run by /bin/sh -c)',
        ),
        ({"liveness": {"type": "tcp", "path": "/h"}}, "liveness.path", "is only for type \"http\", not 'tcp'"),
        ({"liveness": {"type": "tcp", "failures": 0}}, "liveness.failures", "must be between 1 and 1000, got 0"),
        ({"liveness": {"type": "tcp", "restart": "yes"}}, "liveness.restart", "must be true or false, got a string"),
        (
            {"liveness": {"type": "tcp", "start_timeout_s": 1}},
            "liveness",
            "has unknown field 'start_timeout_s' "
            "(allowed: path, type, command, interval_s, timeout_s, failures, restart)",
        ),
        (
            {"health": {"type": "tcp"}, "readiness": {"type": "tcp"}},
            "readiness",
            "give either health or readiness (its alias), not both",
        ),
        ({"readiness": {"path": 5}}, "readiness.path", "must be a string, got a number"),
        ({"restart": 1}, "restart", "must be one of on-failure, always, never, got 1"),
        ({"startsecs": 3601}, "startsecs", "must be between 0 and 3600 seconds, got 3601"),
        ({"startretries": 1.5}, "startretries", "must be an integer, got a number"),
        ({"backoff_max_s": "2d"}, "backoff_max_s", "must be between 0 and 86400 seconds, got 172800"),
        ({"stopsignal": 15}, "stopsignal", 'must be a signal name like "TERM" or "INT", got a number'),
        (
            {"stopsignal": "SIGNOPE"},
            "stopsignal",
            "must be a signal name like TERM, INT, QUIT, HUP, USR1 (not KILL/STOP), got 'SIGNOPE'",
        ),
        ({"stopwaitsecs": -1}, "stopwaitsecs", 'must be a number of seconds or a duration like "5s", got -1'),
        (
            {"depends_on": ["db", 1]},
            "depends_on[1]",
            "must be a plugin key or an object {key, condition}, got a number",
        ),
        ({"depends_on": ["Bad"]}, "depends_on", "'Bad' is not a valid plugin key"),
        (
            {"group": "Web Tier"},
            "group",
            "must match ^[a-z0-9][a-z0-9_-]{0,62}$ (lowercase letters, digits, - and _), got 'Web Tier'",
        ),
        ({"group": 3}, "group", "must match ^[a-z0-9][a-z0-9_-]{0,62}$ (lowercase letters, digits, - and _), got 3"),
        ({"env_file": ""}, "env_file", "must be a non-empty path without NUL characters, got ''"),
        ({"env_file": ["a"]}, "env_file", "must be a path (a string), got a list"),
        ({"working_dir": "a\x00b"}, "working_dir", "must be a non-empty path without NUL characters, got 'a\\x00b'"),
        ({"user": "root; rm"}, "user", "must be a user name like \"www-data\" or a numeric uid, got 'root; rm'"),
        ({"timeout": 0}, "timeout", "must be between 0.001 and 86400 seconds, got 0"),
        ({"max_body": 1.5}, "max_body", 'must be a size like 10485760 or "10MiB", got a number'),
        ({"max_body": "lots"}, "max_body", "must be a size like 10485760 or \"10MiB\", got 'lots'"),
        (
            {"colour": "red"},
            "colour",
            "unknown field (allowed: key, name, version, description, command, env, port, replicas, "
            "endpoints, health, liveness, ready_log_line, autostart, oneshot, restart, startsecs, startretries, "
            "backoff_max_s, stopsignal, stopwaitsecs, depends_on, group, env_file, working_dir, user, timeout, "
            "max_body, module, config)",
        ),
    ],
)
def test_each_field_rule_words_its_problem(fields: dict[str, Any], field: str, problem: str) -> None:
    err = error(**fields)
    assert (err.field, err.problem) == (field, problem)


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        (["key"], "", "must be a JSON object, got a list"),
        ({"key": "s", "module": None}, "module", 'must name a module and a class like "plugin:StatsPlugin", got None'),
        ({"key": "s", "module": "plugin:P", "config": "x"}, "config", "must be an object, got a string"),
    ],
)
def test_whole_manifest_rules_word_their_problem(data: Any, field: str, problem: str) -> None:
    with pytest.raises(ManifestError) as info:
        parse_manifest(data, PATH)
    assert (info.value.field, info.value.problem) == (field, problem)


def test_the_first_problem_in_file_order_is_the_one_named() -> None:
    assert error(startsecs="soon", port="x").field == "startsecs"
    assert error(port="x", startsecs="soon").field == "port"


def test_a_file_that_cannot_be_read_or_decoded_says_so(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="file not found"):
        load_manifest(tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.json").write_bytes(b'{"key": "\xff"}')
    with pytest.raises(ManifestError, match="cannot be read: 'utf-8' codec can't decode"):
        load_manifest(tmp_path / "bad")
    write(tmp_path, "nan", '{"key": "nan", "command": ["true"], "startsecs": NaN}')
    with pytest.raises(ManifestError, match="startsecs: must be between 0 and 3600 seconds, got nan"):
        load_manifest(tmp_path / "nan")
    write(tmp_path, "alias", {"id": "alias", "command": ["true"]})
    assert load_manifest(tmp_path / "alias").key == "alias"


def test_the_schema_checks_normalise_what_it_decoded() -> None:
    schema = msgspec.json.decode(
        b'{"key": "a", "command": ["x"], "startsecs": "500ms", "stopsignal": "sigint", "max_body": "1KiB",'
        b' "endpoints": [{"method": "post", "path": "/p"}], "health": {"path": "/h", "interval_s": "1m"}}',
        type=ManifestSchema,
    )
    values = checked(schema)
    assert values["startsecs"] == 0.5 and values["stopsignal"] == "INT" and values["max_body"] == 1024
    assert values["endpoints"][0].method == "POST" and values["health"] == HealthSchema(
        path="/h", type="http", interval_s=60.0
    )
    assert values["command"] == ("x",) and values["depends_on"] == [] and values["port"] is None


def test_the_schema_words_one_field_or_the_first_problem_of_an_object() -> None:
    assert field_value(ManifestSchema, "timeout", "2s") == 2.0
    with pytest.raises(ValueError) as port:
        field_value(ManifestSchema, "port", "80")
    assert str(port.value) == "must be an integer, got a string"
    with pytest.raises(ValueError) as health:
        diagnose({"path": "/h", "interval_s": 0, "failures": 0}, HealthSchema)
    assert str(health.value) == ".interval_s must be between 0.05 and 86400 seconds, got 0"
    assert diagnose({"path": "/h"}, HealthSchema)["failures"] == 3


def test_readiness_is_healths_alias_and_liveness_its_own_probe() -> None:
    m = parse(
        readiness={"path": "/ready", "failures": 2},
        liveness={"command": "test -e alive", "interval_s": "500ms", "timeout_s": 1},
    )
    assert m.health is not None and m.health.path == "/ready" and m.health.failures == 2
    assert m.liveness is not None and m.liveness.type == "exec" and m.liveness.command == "test -e alive"
    assert (m.liveness.interval_s, m.liveness.timeout_s, m.liveness.failures, m.liveness.restart) == (0.5, 1.0, 3, True)
    assert parse().liveness is None
