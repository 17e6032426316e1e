"""What ``supervisor-tui config`` prints (every key, its value with secrets masked, its source) and the README's
table of every key (``python -m supervisor_tui.config.render`` prints it; a test keeps the README equal to it)."""

from __future__ import annotations

from supervisor_tui.config.declaration import FIELDS, Field
from supervisor_tui.config.settings import Settings
from supervisor_tui.config.urls import masked_url

SECRET_SET = "*** (set)"


def shown_value(f: Field, value: object) -> str:
    """``value`` of ``f`` as the operator may see it: a secret as set or not, a URL without its password."""
    if f.secret and value:
        return SECRET_SET
    if f.mask is not None:
        return f.mask(str(value))
    if isinstance(value, tuple):
        return ", ".join(value)
    # Any other string that could carry credentials still goes out without them.
    return masked_url(value) if isinstance(value, str) and "@" in value else str(value)


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """(key, shown value, source) for every setting, in declaration order."""
    return [(f.name, shown_value(f, f.value_in(settings)), settings.sources[f.name]) for f in FIELDS]


def config_lines(settings: Settings) -> list[str]:
    """``supervisor-tui config``'s output: the settings file, then one aligned line per key."""
    rows = describe(settings)
    width = max(len(k) for k, _, _ in rows)
    vwidth = min(40, max(len(v) for _, v, _ in rows))
    source = settings.config_file or "none (./supervisor.toml not found)"
    return [f"# settings file: {source}"] + [
        f"{key:<{width}}  {value:<{vwidth}}  {where}" for key, value, where in rows
    ]


def readme_table() -> str:
    """The Markdown table of every key: name, default as written in TOML, what is allowed, what it does."""
    lines = ["| key | default | allowed | what it does |", "|---|---|---|---|"]
    for f in FIELDS:
        default = f.toml_default if f.declared.shown_default is not None else f"`{f.toml_default}`"
        note = " (secret: never shown)" if f.secret else " (its password is never shown)" if f.mask else ""
        cells = (f"`{f.name}`", default, f.allowed, f.help + note)
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(readme_table(), end="")
