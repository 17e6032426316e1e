"""The names in-process plugins had before ("extensions") keep working as deprecated aliases: the ``[extensions]``
section, the ``supervisor_tui.extensions.*`` module paths and ``GET /api/v1/extensions``, each said once in the log."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_test_settings
from fixtures.api.harness import Api, running_api

from supervisor_tui.plugins.inprocess_settings import InProcessSection

pytestmark = pytest.mark.usefixtures("no_plugin_leftovers")

OLD_CONFIG = """
[extensions]
hook_timeout = "2s"

[extensions.audit-log]
module = "supervisor_tui.extensions.audit_log:AuditLog"
"""

NEW_CONFIG = """
[inprocess]
hook_timeout = "2s"

[inprocess.audit-log]
module = "supervisor_tui.inprocess_plugins.audit_log:AuditLog"
"""


def deprecation_lines(api: Api) -> list[str]:
    assert api.runtime is not None
    return [r.message for r in api.runtime.sup.logs.tail(None, 1000) if r.fields.get("event") == "deprecated_name"]


async def test_a_config_file_with_the_old_names_runs_as_before_and_says_so_once(tmp_path: Path) -> None:
    (tmp_path / "supervisor.toml").write_text(OLD_CONFIG, encoding="utf-8")
    settings = make_test_settings(tmp_path, **{"plugins.watch": False})
    async with running_api(settings) as api:
        body = (await api.client.get("/api/v1/inprocess-plugins")).json()
        assert body["loaded"] == ["audit-log"]
        assert body["settings"]["hook_timeout"] == 2.0
        assert [(p["key"], p["module"], p["state"]) for p in body["plugins"]] == [
            ("audit-log", "supervisor_tui.inprocess_plugins.audit_log:AuditLog", "RUNNING")
        ]
        (startup,) = deprecation_lines(api)
        assert "[extensions] is now [inprocess]" in startup
        assert (
            "module supervisor_tui.extensions.audit_log:AuditLog is now"
            " supervisor_tui.inprocess_plugins.audit_log:AuditLog" in startup
        )

        old = await api.client.get("/api/v1/extensions")
        assert old.status_code == 200 and old.headers["deprecation"] == "true"
        assert "/api/v1/inprocess-plugins" in old.headers["link"]
        assert old.json()["loaded"] == ["audit-log"] and old.json()["plugins"][0]["key"] == "audit-log"
        await api.client.get("/api/v1/extensions")
        lines = deprecation_lines(api)
        assert len(lines) == 2 and "GET /api/v1/extensions is deprecated" in lines[1]  # once, not per request
        assert (await api.client.get("/api/v1/extensions", headers={"Authorization": "Bearer no"})).status_code == 401


async def test_the_new_names_say_nothing_about_deprecation(tmp_path: Path) -> None:
    (tmp_path / "supervisor.toml").write_text(NEW_CONFIG, encoding="utf-8")
    settings = make_test_settings(tmp_path, **{"plugins.watch": False})
    async with running_api(settings) as api:
        body = (await api.client.get("/api/v1/inprocess-plugins")).json()
        assert body["loaded"] == ["audit-log"] and body["settings"]["hook_timeout"] == 2.0
        assert deprecation_lines(api) == []


def test_a_key_in_both_sections_is_read_from_the_new_one() -> None:
    section = InProcessSection.read(
        {
            "extensions": {"hook_timeout": "5s", "a": {"module": "supervisor_tui.extensions.x:X"}, "b": {}},
            "inprocess": {"hook_timeout": "7s", "a": {"module": "pkg.mod:A"}},
        }
    )
    assert section.settings.hook_timeout == 7.0
    assert section.tables["a"] == {"module": "pkg.mod:A"} and section.tables["b"] == {}
    assert section.deprecated == ["[extensions] is now [inprocess]"]
    assert InProcessSection.read({"inprocess": {"a": {"module": "pkg.mod:A"}}}).deprecation_warning() == ""
