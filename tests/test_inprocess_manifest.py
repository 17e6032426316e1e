"""Manifests of in-process plugins: `module` instead of `command`, `config`, and what is refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor_tui.plugins.manifest import ManifestError, parse_manifest

PATH = Path("/plugins/stats/manifest.json")


def test_a_module_manifest_needs_no_command() -> None:
    m = parse_manifest({"key": "stats", "module": "plugin:StatsPlugin", "config": {"a": 1}}, PATH)
    assert m.module == "plugin:StatsPlugin" and m.config == {"a": 1} and m.command == ()
    assert parse_manifest({"key": "s", "module": "pkg.sub:Cls"}, PATH).module == "pkg.sub:Cls"


@pytest.mark.parametrize(
    ("data", "field", "problem"),
    [
        ({"key": "s", "module": "plugin:P", "command": ["python", "x.py"]}, "command", "not both"),
        ({"key": "s", "module": "plugin.py"}, "module", 'like "plugin:StatsPlugin"'),
        ({"key": "s", "module": "plugin:P", "config": []}, "config", "must be an object"),
        ({"key": "s"}, "command", "is required"),
    ],
)
def test_bad_in_process_manifests_name_the_field(data: dict[str, object], field: str, problem: str) -> None:
    with pytest.raises(ManifestError) as err:
        parse_manifest(data, PATH)
    assert err.value.field == field and problem in err.value.problem
