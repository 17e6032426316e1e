"""core.printable: what a terminal would obey or reorder becomes a visible escape; everything else is kept."""

from __future__ import annotations

import pytest

from supervisor_tui.core.printable import printable, printable_problem


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("w1\x1b]0;TITLE\x07", "w1\\x1b]0;TITLE\\x07"),  # OSC 0: the window title
        ("\x1b]52;c;cHduZWQ=\x07", "\\x1b]52;c;cHduZWQ=\\x07"),  # OSC 52: the clipboard
        ("\x9b31mred", "\\x9b31mred"),  # C1 CSI, the 8-bit ESC [
        ("a\x00b\x7fc\rd\ne", "a\\x00b\\x7fc\\rd\\ne"),
        ("invoice\u202efdp.exe", "invoice\\u202efdp.exe"),  # right-to-left override
        ("\u2066x\u2069 \u200e\u200f\u061c", "\\u2066x\\u2069 \\u200e\\u200f\\u061c"),
        ("one\u2028two", "one\\u2028two"),
        ("col1\tcol2", "col1 col2"),  # a tab is a space
    ],
)
def test_control_and_bidi_characters_become_visible_escapes(text: str, shown: str) -> None:
    assert printable(text) == shown
    assert printable_problem(text) is not None


@pytest.mark.parametrize(
    "text", ["", "plain ascii [b]markup[/b]", "Ünïcödé € 日本語", "👩‍👩‍👧 zwj emoji", "a\u00a0b", "C:\\x1b"]
)
def test_text_that_shows_as_it_is_is_kept(text: str) -> None:
    assert printable(text) == text
    assert printable_problem(text) is None


def test_the_problem_names_the_first_character_escaped() -> None:
    assert printable_problem("ok\u202e\x1b") == (
        "must not contain control or bidirectional formatting characters (found \\u202e)"
    )
    assert printable_problem("a\tb") is not None and "found \\t" in str(printable_problem("a\tb"))
