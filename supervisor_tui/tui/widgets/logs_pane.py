"""``LogsPane``: the merged log with its filter field; its title names the filter, its subtitle the follow mode.

The filter is text plus an optional ``source:NAME`` word (``parse_log_filter``), then an optional ``re:PATTERN``
that takes the rest of the field (``split_pattern``): a regular expression over the lines the view holds, its time
bounded (core.log_search): one that is not valid keeps the filter as it was (said once the field is submitted, not
at every key of a pattern being typed), one too slow is said at once. ``show_source`` narrows to one plugin's lines
(the ``l`` key). The title follows the log view's ``StatusChanged`` messages.
"""

from __future__ import annotations

from textual import on

from supervisor_tui.core.log_search import LogSearchError, PatternTooSlow, compile_pattern
from supervisor_tui.core.printable import printable
from supervisor_tui.tui.cells import escape
from supervisor_tui.tui.widgets.log_view import LogView
from supervisor_tui.tui.widgets.pane_box import PaneBox

LOG_LINES = 10_000


def parse_log_filter(text: str) -> tuple[str, str | bool | None]:
    """The logs filter as (text, source): ``source:NAME`` picks a source, a bare ``source:`` every source,
    and False leaves the source as it is."""
    source: str | bool | None = False
    words = []
    for w in text.split():
        if w.startswith("source:"):
            source = w[7:] or None
        else:
            words.append(w)
    return " ".join(words), source


def split_pattern(text: str) -> tuple[str, str | None]:
    """(the rest of the filter, the regular expression after ``re:`` or None): ``re:`` takes the rest of the
    field, spaces included, so it comes last."""
    words = text.split(" ")
    for i, word in enumerate(words):
        if word.startswith("re:"):
            return " ".join(words[:i]), " ".join([word[3:], *words[i + 1 :]])
    return text, None


def logs_title(source: str | None, text: str, pattern: str | None = None) -> str:
    """The logs pane's title: whose lines, matching what."""
    title = "Logs"
    if source:
        title += f" of {escape(source)}"
    if text:
        title += f" matching “{escape(text)}”"
    if pattern:
        title += f" matching /{escape(pattern)}/"
    return title


def logs_subtitle(paused: bool, pending: int, following: bool) -> str:
    """Paused (with how many lines wait), following the tail, or scrolled back."""
    if paused:
        extra = f" — {pending} new" if pending else ""
        return f"[bold black on #ffaf00] PAUSED{extra} [/] space resumes"
    if following:
        return "following"
    return "scrolled back — end follows"


class LogsPane(PaneBox):
    """The logs pane."""

    def __init__(self) -> None:
        view = LogView(LOG_LINES, id="log-view")
        super().__init__("logs", "Logs", view, "filter logs: text, source:NAME, then re:PATTERN")
        self.view = view

    @on(LogView.StatusChanged)
    def _status_changed(self) -> None:
        self.update_title()

    def update_title(self) -> None:
        view = self.view
        pattern = view.pattern_filter.text if view.pattern_filter is not None else None
        self.border_title = logs_title(view.source_filter, view.text_filter, pattern)
        self.border_subtitle = logs_subtitle(view.paused, view.pending, view.following)

    def set_filter(self, text: str, submitted: bool = False) -> bool:
        """Filter the lines by what the operator typed; False (and said) when a ``re:`` pattern is refused."""
        try:
            self.apply_filter(text)
        except PatternTooSlow as exc:
            self.notify(printable(str(exc)), title="Log filter", severity="error", timeout=8, markup=False)
            return False
        except LogSearchError as exc:
            if submitted:
                self.notify(printable(str(exc)), title="Log filter", severity="error", timeout=8, markup=False)
            return False
        self.filter_text = text
        return True

    def apply_filter(self, text: str) -> None:
        """Filter by what the operator typed into the field. A ``re:`` pattern that is not valid (LogSearchError)
        or too slow on the lines held (PatternTooSlow) raises, and the filter stays as it was."""
        rest, pattern_text = split_pattern(text)
        pattern = compile_pattern(pattern_text) if pattern_text else None
        words, source = parse_log_filter(rest)
        self.view.set_filter(words, source, pattern)
        self.update_title()

    def show_source(self, source: str | None) -> None:
        """Only the lines of ``source`` (every source when None)."""
        self.view.set_filter(source=source)
        self.update_title()

    def clear_source(self) -> None:
        if self.view.source_filter is not None:
            self.show_source(None)

    def toggle_pause(self) -> bool:
        """Pause or resume following; whether it is paused now."""
        paused = self.view.toggle_pause()
        self.update_title()
        return paused
