"""Every key binding of the main screen in one place: id (the name used in ``[keys]``), default keys, help.

Binding ids are what operators remap in ``supervisor.toml``::

    [keys]
    start = "S"
    stop = "X"

The footer, the ``?`` help screen and the command palette all read this table, so they never disagree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from textual.binding import Binding


@dataclass(frozen=True)
class KeySpec:
    """One remappable binding."""

    id: str
    keys: str
    action: str
    description: str
    tooltip: str
    group: str
    show: bool = True
    changes_state: bool = False


KEYS: tuple[KeySpec, ...] = (
    KeySpec("start", "s", "start", "Start", "Start the selected plugin, wait until ready", "Plugins", True, True),
    KeySpec("stop", "x", "stop", "Stop", "Stop the selected plugin (asks first)", "Plugins", True, True),
    KeySpec("restart", "r", "restart", "Restart", "Restart the selected plugin", "Plugins", True, True),
    KeySpec(
        "scale_up",
        "plus",
        "scale(1)",
        "+Replica",
        "Run one more replica of the selected plugin",
        "Plugins",
        False,
        True,
    ),
    KeySpec(
        "scale_down",
        "minus",
        "scale(-1)",
        "-Replica",
        "Stop the highest replica of the selected plugin",
        "Plugins",
        False,
        True,
    ),
    KeySpec(
        "group",
        "G",
        "group",
        "Group",
        "Start, stop or restart every plugin of the selected plugin's group (asks which)",
        "Plugins",
        False,
        True,
    ),
    KeySpec("details", "enter", "details", "Open", "Open the selected plugin or console", "Plugins"),
    KeySpec("plugin_logs", "l", "plugin_logs", "Logs", "Show only the selected plugin's logs", "Plugins"),
    KeySpec("filter", "slash", "filter", "Filter", "Filter the focused table or log as you type (esc clears)", "Views"),
    KeySpec(
        "graph", "g", "graph", "Graph", "The plugins' dependency graph, level by level (esc returns)", "Views", False
    ),
    KeySpec("next_pane", "tab", "next_pane", "Pane", "Switch to the next pane", "Views", False),
    KeySpec("pane_plugins", "1", "show_pane('plugins')", "Plugins", "Show the plugins pane", "Views", False),
    KeySpec("pane_consoles", "2", "show_pane('consoles')", "Consoles", "Show the consoles pane", "Views", False),
    KeySpec("pane_logs", "3", "show_pane('logs')", "Logs", "Show the logs pane", "Views", False),
    KeySpec("fleet", "4", "fleet", "Fleet", "Show the fleet's nodes: status, last seen, counts", "Views", False),
    KeySpec("pause", "space", "toggle_pause", "Pause", "Pause or resume the log (follow mode)", "Logs"),
    KeySpec("help", "question_mark", "help", "Help", "Every key and what it does", "App"),
    KeySpec("quit", "q", "request_quit", "Quit", "Quit (asks first, says what happens to plugins)", "App"),
)

KEYS_BY_ID = {spec.id: spec for spec in KEYS}

# Keys that are not remappable through [keys] but belong in the help screen.
FIXED_KEYS: tuple[tuple[str, str, str], ...] = (
    ("ctrl+p", "Command palette: start/stop/restart a plugin by name, jump to a console, switch pane", "App"),
    ("j / k, up / down", "Move in tables and the log (vim keys)", "Views"),
    ("esc", "Clear the filter / close a dialog or detail screen", "Views"),
    ("home / end", "Top of the log / back to following the tail", "Logs"),
)


def main_bindings() -> list[Binding]:
    """The main screen's bindings, each with an id so ``App.set_keymap`` can remap it."""
    return [
        Binding(s.keys, s.action, s.description, show=s.show, id=s.id, tooltip=s.tooltip)
        for s in KEYS
        if s.id != "help"
    ]


def effective_keys(keymap: Mapping[str, str]) -> dict[str, str]:
    """Binding id -> the keys in force (remapped or default), for help and palette display."""
    return {spec.id: keymap.get(spec.id, spec.keys) for spec in KEYS}


def display_key(keys: str) -> str:
    """How a key string reads to a person: "question_mark" -> "?", "slash" -> "/"."""
    names = {
        "question_mark": "?",
        "slash": "/",
        "plus": "+",
        "minus": "-",
        "space": "space",
        "enter": "enter",
        "tab": "tab",
    }
    return ", ".join(names.get(k.strip(), k.strip()) for k in keys.split(","))


def validate_keymap(keymap: Mapping[str, object]) -> tuple[dict[str, str], list[str]]:
    """The usable part of a ``[keys]`` table and one problem per unusable entry."""
    good: dict[str, str] = {}
    problems: list[str] = []
    for name, value in keymap.items():
        if name not in KEYS_BY_ID:
            problems.append(f"[keys] {name}: unknown action (known: {', '.join(KEYS_BY_ID)})")
        elif not isinstance(value, str) or not value.strip():
            problems.append(f'[keys] {name}: expected a key like "S" or "ctrl+s"')
        else:
            good[name] = value.strip()
    return good, problems
