"""Untrusted text made safe to show on a terminal: ``printable(text)``, and ``printable_problem(text)`` to refuse it.

Plugins, consoles and registrations send strings the operator's terminal must never interpret: an ESC starts
an escape sequence (OSC 0 sets the window title, OSC 52 writes the clipboard), C1 controls do the same in
8-bit form, and the bidirectional formatting characters reorder what is shown so a line reads unlike its
bytes. ``printable`` replaces each of them with a visible escape in Python's notation (``\\x1b``, ``\\x9b``,
``\\n``, ``\\u202e``) so the operator sees that they were there; a tab becomes one space. A backslash is left
as it is, so ``\\x1b`` in the output is either an escaped ESC or those four characters sent as such; the JSON
logs keep the exact text.

Covered: C0 controls (U+0000-U+001F), DEL and the C1 controls (U+007F-U+009F), U+061C, U+200E, U+200F,
U+202A-U+202E, U+2066-U+2069, and the line and paragraph separators U+2028, U+2029 (they break lines).

Plugin output passes through here line by line, so text with nothing to escape costs one ``str.isprintable``
scan (every covered character is non-printable to Python) and comes back as the same object.
"""

from __future__ import annotations

import re

_UNSAFE_CODES = (
    *range(0x00, 0x20),
    *range(0x7F, 0xA0),
    0x061C,
    0x200E,
    0x200F,
    *range(0x202A, 0x202F),
    *range(0x2066, 0x206A),
    0x2028,
    0x2029,
)
_UNSAFE = re.compile("[" + "".join(re.escape(chr(c)) for c in _UNSAFE_CODES) + "]")


# repr() escapes exactly these characters (none is printable to Python): \n, \x1b, \x9b, \u202e.
_ESCAPED = {chr(c): repr(chr(c))[1:-1] for c in _UNSAFE_CODES}
_VISIBLE = {**_ESCAPED, "\t": " "}


def printable(text: str) -> str:
    """``text`` with every control and bidi formatting character shown as an escape (a tab as a space)."""
    if text.isprintable():
        return text
    return _UNSAFE.sub(lambda m: _VISIBLE[m.group()], text)


def printable_problem(text: str) -> str | None:
    """Why ``text`` cannot be shown as it is, worded for a validation error (naming the first such character,
    escaped), or None when it can: for the fields that are refused rather than escaped."""
    if text.isprintable():
        return None
    m = _UNSAFE.search(text)
    if m is None:
        return None
    return f"must not contain control or bidirectional formatting characters (found {_ESCAPED[m.group()]})"
