"""docs/manifest.md's field tables match the declared schema: every field documented with its default, no others."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from supervisor_tui.plugins.manifest_rules import fields_of
from supervisor_tui.plugins.manifest_schema import (
    EndpointSchema,
    HealthSchema,
    LivenessSchema,
    ManifestSchema,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "manifest.md"


def tables(text: str) -> dict[str, dict[str, dict[str, str]]]:
    """Each Markdown table whose first column is ``field``, by the line introducing it: field name -> cells."""
    found: dict[str, dict[str, dict[str, str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("| field |"):
            continue
        header = [c.strip() for c in line.strip("|").split("|")]
        intro = next(prev for prev in reversed(lines[:i]) if prev.strip())
        rows: dict[str, dict[str, str]] = {}
        for row in lines[i + 2 :]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            assert len(cells) == len(header), f"{DOC}: a row of the {intro!r} table has {len(cells)} cells: {row}"
            rows[cells[0].strip("`")] = dict(zip(header, cells, strict=True))
        found[intro] = rows
    return found


def documented_default(default: Any, doc_default: str | None) -> str:
    """The default as the docs write it: the rule's own words, "required", or the JSON value in backticks."""
    if doc_default is not None:
        return doc_default
    if default is msgspec.NODEFAULT:
        return "required"
    if isinstance(default, float):
        return f"`{default:g}`"
    return f"`{json.dumps(default)}`"


SCHEMAS: dict[str, type[msgspec.Struct]] = {
    "## Fields": ManifestSchema,
    "`health`:": HealthSchema,
    "`liveness`:": LivenessSchema,
}


def drift(text: str) -> list[str]:
    """Where the tables of ``text`` and the schemas disagree: a field missing, unknown, or with another default."""
    problems: list[str] = []
    documented = tables(text)
    for intro, schema in SCHEMAS.items():
        rows, fields = documented[intro], fields_of(schema)
        problems += [f"{intro}: {name} is not documented" for name in fields if name not in rows]
        problems += [f"{intro}: {name} is no field of {schema.__name__}" for name in rows if name not in fields]
        for name in rows.keys() & fields.keys():
            want = documented_default(fields[name].default, fields[name].rule.doc_default)
            if rows[name]["default"] != want:
                problems.append(f"{intro}: {name} defaults to {want}, documented {rows[name]['default']}")
    endpoint = "{" + ", ".join(fields_of(EndpointSchema)) + "}"
    if endpoint not in documented["## Fields"]["endpoints"]["meaning"]:
        problems.append(f"## Fields: endpoints does not say {endpoint}")
    return problems


def test_every_field_is_documented_with_its_default_and_every_documented_field_exists() -> None:
    assert drift(DOC.read_text(encoding="utf-8")) == [], DOC


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        (
            "| `startsecs` | seconds | `1` |",
            "| `startsecs` | seconds | `2` |",
            "startsecs defaults to `1`, documented `2`",
        ),
        ("| `config` |", '| `colour` | string | `""` | |\n| `config` |', "colour is no field of ManifestSchema"),
        ("| `restart` | `false` | restart the plugin when it turns unhealthy |\n", "", "restart is not documented"),
    ],
)
def test_a_table_that_drifts_from_the_schema_is_caught(old: str, new: str, problem: str) -> None:
    text = DOC.read_text(encoding="utf-8")
    assert old in text
    assert any(problem in p for p in drift(text.replace(old, new)))
