"""Settings: defaults < supervisor.toml < env < flags; a bad value is one line naming key, value and what is allowed."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor_tui.config import FIELDS, FIELDS_BY_NAME, ConfigError, load_settings, parse_duration, parse_size
from supervisor_tui.config.render import describe, readme_table


def test_defaults_are_seed_003s_numbers(tmp_path: Path) -> None:
    s = load_settings(env={}, base_dir=tmp_path)
    assert (s.server.host, s.server.port, s.port_range) == ("127.0.0.1", 4000, (4001, 4999))
    assert s.plugins_dir == tmp_path / "plugins" and s.data_dir == tmp_path / "data"
    assert s.db_path == tmp_path / "data" / "supervisor.db" and s.logs_dir == tmp_path / "data" / "logs"
    assert all(src == "default" for src in s.sources.values()) and s.config_file is None


def test_layers_file_then_env_then_flags(tmp_path: Path) -> None:
    (tmp_path / "supervisor.toml").write_text(
        '[server]\nport = 5000\nhost = "0.0.0.0"\n[plugins]\nport_range_start = 6000\nport_range_end = 6100\n'
        '[consoles]\ninactive_after = "10m"\n[extensions.demo]\nenabled = true\n'
    )
    env = {"SUPERVISOR_TUI_SERVER_PORT": "5001", "SUPERVISOR_TUI_DATA_DIR": "/var/lib/st"}
    s = load_settings(env=env, overrides={"server.port": "5002", "plugins.dir": None}, base_dir=tmp_path)
    assert s.server.port == 5002 and s.sources["server.port"] == "flag"
    assert s.server.host == "0.0.0.0" and s.sources["server.host"] == str(tmp_path / "supervisor.toml")
    assert s.data_dir == Path("/var/lib/st") and s.sources["data.dir"] == "env SUPERVISOR_TUI_DATA_DIR"
    assert s.port_range == (6000, 6100) and s.consoles.inactive_after == 600.0
    assert s.sources["plugins.dir"] == "default"
    assert s.tables["extensions"] == {"demo": {"enabled": True}}


@pytest.mark.parametrize(
    ("env", "key", "allowed"),
    [
        ({"SUPERVISOR_TUI_SERVER_PORT": "70000"}, "server.port", "0-65535"),
        ({"SUPERVISOR_TUI_LOG_FORMAT": "xml"}, "log.format", "human or json"),
        ({"SUPERVISOR_TUI_CONSOLES_INACTIVE_AFTER": "soon"}, "consoles.inactive_after", "duration"),
        ({"SUPERVISOR_TUI_PLUGINS_PORT_RANGE_END": "10", "SUPERVISOR_TUI_PLUGINS_PORT_RANGE_START": "20"},
         "plugins.port_range_end", "port_range_start"),
    ],
)  # fmt: skip
def test_bad_values_name_key_value_and_what_is_allowed(
    tmp_path: Path, env: dict[str, str], key: str, allowed: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(env=env, base_dir=tmp_path)
    assert info.value.key == key and allowed in str(info.value)


def test_unknown_key_in_file_and_broken_toml(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match=r"server\.prot"):
        load_settings(bad, env={}, base_dir=tmp_path)
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="valid TOML"):
        load_settings(bad, env={}, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="existing TOML file"):
        load_settings(tmp_path / "missing.toml", env={}, base_dir=tmp_path)


def test_secrets_are_masked(tmp_path: Path) -> None:
    s = load_settings(env={"SUPERVISOR_TUI_AUTH_ADMIN_TOKEN": "hunter2"}, base_dir=tmp_path)
    shown = {k: v for k, v, _ in describe(s)}
    assert shown["auth.admin_token"] == "*** (set)" and "hunter2" not in repr(describe(s))


def test_durations_and_sizes() -> None:
    assert parse_duration("250ms") == 0.25 and parse_duration("1.5h") == 5400 and parse_duration(3) == 3.0
    assert parse_size("64KiB") == 65536 and parse_size("10MB") == 10_000_000 and parse_size(7) == 7
    for bad in ("-1", "x", True):
        with pytest.raises(ValueError):
            parse_duration(bad)


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "supervisor_tui", *args],
        cwd=tmp_path,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SUPERVISOR_TUI_")}, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_config_command_prints_effective_settings_and_sources(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "config", "--port", "4100", SUPERVISOR_TUI_LOG_FORMAT="json")
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if not line.startswith("#")}
    assert "4100" in rows["server.port"] and rows["server.port"].endswith("flag")
    assert "json" in rows["log.format"] and rows["log.format"].endswith("env SUPERVISOR_TUI_LOG_FORMAT")
    assert rows["server.host"].endswith("default")


def test_bad_config_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "config", "--port", "http")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "server.port" in result.stderr and "'http'" in result.stderr
    (tmp_path / "supervisor.toml").write_text("[server]\nport = -3\n")
    result = run_cli(tmp_path, "config")
    assert result.returncode == 2 and "supervisor.toml" in result.stderr and "Traceback" not in result.stderr


def test_typed_sections_carry_parsed_values_and_their_sources(tmp_path: Path) -> None:
    env = {"SUPERVISOR_TUI_GATEWAY_TIMEOUT": "250ms", "SUPERVISOR_TUI_SERVER_ALLOWED_HOSTS": "a.example, 10.0.0.0/8"}
    s = load_settings(env=env, overrides={"plugins.watch": "off"}, base_dir=tmp_path)
    assert s.gateway.timeout == 0.25 and s.sources["gateway.timeout"] == "env SUPERVISOR_TUI_GATEWAY_TIMEOUT"
    assert s.server.allowed_hosts == ("a.example", "10.0.0.0/8") and s.plugins.watch is False
    assert s.consoles.heartbeat_retention == 7 * 86400.0 and s.server.max_header_bytes == 64 * 1024  # defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.gateway.timeout = 1.0  # type: ignore[misc]  # only Settings.set changes a value, and records its source


# A value holding a password for every key that is a secret or carries one (a URL's password): a key declared
# secret or masked without an entry here fails the first assertion.
SECRET_SAMPLES = {
    "auth.admin_token": "hunter2",
    "auth.plugin_token": "hunter2",
    "consoles.enrollment_token": "hunter2",
    "redis.url": "redis://app:hunter2@127.0.0.1:6379/0",
    "consoles.store": "postgresql://app:hunter2@127.0.0.1:5432/consoles",
    "routes.caddy_admin": "http://admin:hunter2@127.0.0.1:2019",
}


def test_config_command_masks_every_secret_key(tmp_path: Path) -> None:
    assert {f.name for f in FIELDS if f.secret or f.mask is not None} == set(SECRET_SAMPLES)
    env = {FIELDS_BY_NAME[name].env: value for name, value in SECRET_SAMPLES.items()}
    result = run_cli(tmp_path, "config", **env)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if not line.startswith("#")}
    for name in SECRET_SAMPLES:
        assert rows[name].endswith(f"env {FIELDS_BY_NAME[name].env}"), rows[name]
        shown = rows[name].split()[1]
        if FIELDS_BY_NAME[name].secret:
            assert shown == "***", rows[name]
        else:
            assert ":***@" in shown, rows[name]


def _readme() -> str:
    return (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_readme_documents_every_declared_key_as_declared() -> None:
    text = _readme()
    start, end = "<!-- settings table: start -->\n", "<!-- settings table: end -->"
    table = text[text.index(start) + len(start) : text.index(end)]
    documented = {line.split("`")[1] for line in table.splitlines()[2:]}
    assert documented == {f.name for f in FIELDS}
    assert table == readme_table(), "regenerate it: python -m supervisor_tui.config.render"


def test_readme_example_settings_file_loads(tmp_path: Path) -> None:
    text = _readme()
    settings_part = text[text.index("## Settings") :]
    example = settings_part[settings_part.index("```toml\n") + 8 : settings_part.index("```\n", 8)]
    (tmp_path / "supervisor.toml").write_text(example, encoding="utf-8")
    s = load_settings(env={}, base_dir=tmp_path)
    from_file = {name for name, source in s.sources.items() if source == str(tmp_path / "supervisor.toml")}
    assert {"server.host", "consoles.store", "redis.url", "routes.caddy_server"} <= from_file


@pytest.mark.parametrize(
    ("name", "toml_value"),
    [
        ("redis.url", '"http://app:hunter2@127.0.0.1:6379"'),
        ("consoles.store", '"mysql://app:hunter2@127.0.0.1/consoles"'),
        ("routes.caddy_admin", '"ftp://admin:hunter2@127.0.0.1:2019"'),
        ("auth.admin_token", '["hunter2"]'),
        ("consoles.enrollment_token", "{ value = 'hunter2' }"),
    ],
)
def test_a_refused_secret_is_named_without_its_password(tmp_path: Path, name: str, toml_value: str) -> None:
    section, key = name.split(".")
    (tmp_path / "supervisor.toml").write_text(f"[{section}]\n{key} = {toml_value}\n", encoding="utf-8")
    result = run_cli(tmp_path, "config")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert name in result.stderr and "supervisor.toml" in result.stderr and "hunter2" not in result.stderr
