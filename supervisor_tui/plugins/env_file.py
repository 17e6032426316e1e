"""A plugin's ``env_file``: ``.env`` lines (``KEY=value``) read into an environment mapping at each start.

The format is the one the console agent uses and most tools read: ``KEY=value`` lines, blank lines and ``#``
comments, an optional ``export`` prefix, values bare (trimmed, `` #`` starts a comment), in single quotes (taken
as they are) or in double quotes (``\\n``, ``\\t``, ``\\"`` and ``\\\\`` escapes). A value is one line.

The values are secrets (passwords, tokens): a problem names the file, the line and what is wrong, never a value.
"""

from __future__ import annotations

from pathlib import Path

from supervisor_tui.plugins.manifest_schema import ENV_NAME, RESERVED_ENV

MAX_BYTES = 1024 * 1024  # a .env file is a handful of lines; this bounds what a start reads
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\", "$": "$"}


class EnvFileError(Exception):
    """An env file that cannot be used: which file, which line (0: the whole file), what is wrong."""

    def __init__(self, path: Path | str, line: int, problem: str) -> None:
        self.path, self.line, self.problem = str(path), line, problem
        where = f"{self.path}: line {line}" if line else self.path
        super().__init__(f"env_file {where}: {problem}")


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of the file at ``path``; EnvFileError when it is missing, too large or has a bad line."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise EnvFileError(path, 0, "file not found") from None
    except IsADirectoryError:
        raise EnvFileError(path, 0, "is a directory, not a file") from None
    except OSError as exc:
        raise EnvFileError(path, 0, f"cannot be read: {exc.strerror or exc}") from None
    if len(raw) > MAX_BYTES:
        raise EnvFileError(path, 0, f"is larger than {MAX_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise EnvFileError(path, line, "is not UTF-8 text") from None
    return parse_env_file(text, path)


def parse_env_file(text: str, path: Path | str = ".env") -> dict[str, str]:
    """The variables of an env file's text (``path`` names it in problems); a later line wins over an earlier."""
    out: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            name, value = _assignment(stripped)
        except ValueError as exc:
            raise EnvFileError(path, number, str(exc)) from None
        out[name] = value
    return out


def _assignment(line: str) -> tuple[str, str]:
    if line.startswith("export ") or line.startswith("export\t"):
        line = line[7:].lstrip()
    name, sep, rest = line.partition("=")
    name = name.rstrip()
    if not sep:
        shown = name if ENV_NAME.fullmatch(name) else "this line"
        raise ValueError(f"expected NAME=value, {shown} has no '='")
    if not ENV_NAME.fullmatch(name):
        raise ValueError("the name before '=' is not a valid variable name (letters, digits and _)")
    if name in RESERVED_ENV:
        raise ValueError(f"{name} is set by the supervisor and cannot be overridden")
    value = _value(name, rest.lstrip())
    if "\x00" in value:
        raise ValueError(f"{name} must not contain NUL characters")
    return name, value


def _value(name: str, rest: str) -> str:
    if not rest:
        return ""
    quote = rest[0]
    if quote == "'":
        end = rest.find("'", 1)
        if end < 0:
            raise ValueError(f"{name}: the single quote is not closed on this line")
        _only_comment_after(name, rest[end + 1 :])
        return rest[1:end]
    if quote == '"':
        out: list[str] = []
        i = 1
        while i < len(rest):
            c = rest[i]
            if c == "\\" and i + 1 < len(rest):
                nxt = rest[i + 1]
                out.append(_ESCAPES.get(nxt, "\\" + nxt))
                i += 2
                continue
            if c == '"':
                _only_comment_after(name, rest[i + 1 :])
                return "".join(out)
            out.append(c)
            i += 1
        raise ValueError(f"{name}: the double quote is not closed on this line")
    # bare: a " #" starts a comment, like in a shell
    for i, c in enumerate(rest):
        if c == "#" and i > 0 and rest[i - 1] in " \t":
            return rest[:i].rstrip()
    return rest.rstrip()


def _only_comment_after(name: str, tail: str) -> None:
    tail = tail.strip()
    if tail and not tail.startswith("#"):
        raise ValueError(f"{name}: unexpected text after the closing quote")
