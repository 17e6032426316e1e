"""A plugin's env_file: seed 004's .env format read line by line, problems naming file and line, never a value."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor_tui.plugins.env_file import MAX_BYTES, EnvFileError, parse_env_file, read_env_file

SEED_004 = """\
# =============================================================================
# CONFIGURACIÓN DE CONSOLA (HEARTBEAT)
# =============================================================================

# URL base del API de gestión de consolas
API_BASE_URL=http://localhost:3000/api

# ID único de esta consola (dejar vacío para auto-generar)
CONSOLE_ID=

HEARTBEAT_INTERVAL_MINUTES=5
"""


def test_the_seed_004_file_reads_as_its_console_does() -> None:
    assert parse_env_file(SEED_004) == {
        "API_BASE_URL": "http://localhost:3000/api",
        "CONSOLE_ID": "",
        "HEARTBEAT_INTERVAL_MINUTES": "5",
    }


def test_quotes_export_comments_and_escapes() -> None:
    text = "\n".join(
        [
            "export DB_URL=postgres://app@db/app",
            "  SPACED = trimmed value   ",
            "BARE=a#b # a comment after a space",
            "SINGLE='  kept as is, \\n and # too '",
            'DOUBLE="line\\nbreak \\"quoted\\" tab\\tend" # comment',
            "EMPTY_QUOTES=''",
            "EQUALS=a=b=c",
            "\texport\tTABBED=1",
            "REPEATED=first",
            "REPEATED=second",
        ]
    )
    assert parse_env_file(text) == {
        "DB_URL": "postgres://app@db/app",
        "SPACED": "trimmed value",
        "BARE": "a#b",
        "SINGLE": "  kept as is, \\n and # too ",
        "DOUBLE": 'line\nbreak "quoted" tab\tend',
        "EMPTY_QUOTES": "",
        "EQUALS": "a=b=c",
        "TABBED": "1",
        "REPEATED": "second",
    }


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("PASSWORD hunter2", "expected NAME=value, this line has no '='"),
        ("PASSWORD", "expected NAME=value, PASSWORD has no '='"),
        ("2FA=hunter2", "the name before '=' is not a valid variable name (letters, digits and _)"),
        ("MY-PASS=hunter2", "the name before '=' is not a valid variable name (letters, digits and _)"),
        ("PASSWORD='hunter2", "PASSWORD: the single quote is not closed on this line"),
        ('PASSWORD="hunter2', "PASSWORD: the double quote is not closed on this line"),
        ("PASSWORD='hunter2' extra", "PASSWORD: unexpected text after the closing quote"),
        ("PORT=8080", "PORT is set by the supervisor and cannot be overridden"),
        ("PLUGIN_KEY=other", "PLUGIN_KEY is set by the supervisor and cannot be overridden"),
        ("PASSWORD=hun\x00ter2", "PASSWORD must not contain NUL characters"),
    ],
)
def test_a_bad_line_names_file_and_line_and_never_the_value(line: str, problem: str) -> None:
    text = f"# secrets\nGOOD=1\n{line}\nLATER=2\n"
    with pytest.raises(EnvFileError) as caught:
        parse_env_file(text, "plugins/api/.env")
    err = caught.value
    assert (err.path, err.line, err.problem) == ("plugins/api/.env", 3, problem)
    assert str(err) == f"env_file plugins/api/.env: line 3: {problem}"
    assert "hunter2" not in str(err)


def test_reading_the_file_missing_a_directory_too_large_not_utf8(tmp_path: Path) -> None:
    good = tmp_path / "good.env"
    good.write_text("A=1\nexport B='two'\n", encoding="utf-8")
    assert read_env_file(good) == {"A": "1", "B": "two"}

    cases = {
        tmp_path / "absent.env": "file not found",
        tmp_path: "is a directory, not a file",
    }
    big = tmp_path / "big.env"
    big.write_bytes(b"A=" + b"x" * MAX_BYTES + b"\n")
    cases[big] = f"is larger than {MAX_BYTES // 1024} KiB"
    for path, problem in cases.items():
        with pytest.raises(EnvFileError) as caught:
            read_env_file(path)
        assert caught.value.problem == problem and caught.value.line == 0
        assert str(caught.value) == f"env_file {path}: {problem}"

    latin = tmp_path / "latin.env"
    latin.write_bytes(b"A=1\nB=caf\xe9\n")
    with pytest.raises(EnvFileError) as caught:
        read_env_file(latin)
    assert (caught.value.line, caught.value.problem) == (2, "is not UTF-8 text")
