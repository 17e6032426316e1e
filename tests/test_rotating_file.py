"""The one rotating file (plugin logs, audit log): size rotation, kept backups, 0600 files."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from supervisor_tui.core.rotating_file import RotatingFile


def _names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_rotates_before_a_line_that_would_not_fit_and_keeps_the_backups(tmp_path: Path) -> None:
    f = RotatingFile(tmp_path / "a.log", max_bytes=10, backups=2)
    for word in ("11111\n", "2222\n", "33333\n", "44444\n", "55555\n"):
        f.write(word)
    f.close()
    assert _names(tmp_path) == ["a.log", "a.log.1", "a.log.2"]  # the oldest were dropped
    assert (tmp_path / "a.log").read_text() == "55555\n"
    assert (tmp_path / "a.log.1").read_text() == "44444\n"
    assert (tmp_path / "a.log.2").read_text() == "33333\n"
    assert all(p.stat().st_size <= 10 for p in tmp_path.iterdir())


def test_a_file_fills_up_to_max_bytes_exactly(tmp_path: Path) -> None:
    f = RotatingFile(tmp_path / "a.log", max_bytes=10, backups=1)
    f.write("1234\n")
    f.write("5678\n")  # 10 bytes: still fits
    f.close()
    assert _names(tmp_path) == ["a.log"]


def test_a_line_longer_than_max_bytes_is_written_whole_without_rotating_an_empty_file(tmp_path: Path) -> None:
    f = RotatingFile(tmp_path / "a.log", max_bytes=4, backups=2)
    f.write("a long line\n")
    f.write("b\n")
    f.close()
    assert _names(tmp_path) == ["a.log", "a.log.1"]
    assert (tmp_path / "a.log.1").read_text() == "a long line\n"


def test_no_backups_starts_over_and_zero_max_bytes_never_rotates(tmp_path: Path) -> None:
    f = RotatingFile(tmp_path / "a.log", max_bytes=6, backups=0)
    f.write("1111\n")
    f.write("2222\n")
    f.close()
    g = RotatingFile(tmp_path / "b.log", max_bytes=0, backups=2)
    for _ in range(100):
        g.write("line\n")
    g.close()
    assert _names(tmp_path) == ["a.log", "b.log"]
    assert (tmp_path / "a.log").read_text() == "2222\n"
    assert (tmp_path / "b.log").stat().st_size == 500


def test_an_existing_file_is_appended_to_and_its_size_counts(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_text("12345678\n")
    f = RotatingFile(path, max_bytes=10, backups=1)
    f.write("next\n")
    f.close()
    assert (tmp_path / "a.log.1").read_text() == "12345678\n" and path.read_text() == "next\n"


def test_every_file_is_0600_under_a_022_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        f = RotatingFile(tmp_path / "a.log", max_bytes=5, backups=2)
        for _ in range(3):
            f.write("1234\n")
        f.close()
    finally:
        os.umask(old)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()} == dict.fromkeys(
        ["a.log", "a.log.1", "a.log.2"], 0o600
    )
