"""The merged log view: renders only the visible lines of a bounded buffer, follows the tail, can be paused.

Memory is bounded (``max_lines`` entries). Scrolling up stops the view from following; lines dropped off the
front of the buffer shift the scroll position with them, so what the operator reads never jumps. Plugin output
is shown with its control and bidi characters as visible escapes (a tab as a space), never passed to the
terminal.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from collections.abc import Iterable

from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.cache import LRUCache
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from supervisor_tui.core.log_search import LogPattern, PatternTooSlow, filter_matching
from supervisor_tui.core.printable import printable
from supervisor_tui.plugins.model import LogEntry

# Colours for source tags, picked by a stable hash of the source name so a source keeps its colour.
SOURCE_COLOURS = (
    "#5fafff",
    "#87d787",
    "#d7af5f",
    "#d787d7",
    "#5fd7d7",
    "#ff8787",
    "#afaf5f",
    "#87afd7",
    "#d7875f",
    "#af87ff",
)
SUPERVISOR_COLOUR = "#ffffff"
PATTERN_BUDGET = 0.5  # seconds a re: filter may take over the whole buffer (the UI waits for it)
LEVEL_STYLES = {"error": Style(color="#ff6b6b"), "warning": Style(color="#ffd75f")}
TS_STYLE = Style(color="#808080")


def source_colour(source: str) -> str:
    """The colour of a source's tag (stable across runs)."""
    if source == "supervisor":
        return SUPERVISOR_COLOUR
    return SOURCE_COLOURS[zlib.crc32(source.encode()) % len(SOURCE_COLOURS)]


class LogView(ScrollView, can_focus=True):
    """All log sources merged, one line per entry: time, source tag, message."""

    BINDINGS = [
        Binding("up,k", "scroll_up", "Up", show=False),
        Binding("down,j", "scroll_down", "Down", show=False),
        Binding("pageup", "page_up", "Page up", show=False),
        Binding("pagedown", "page_down", "Page down", show=False),
        Binding("home", "scroll_home", "Top", show=False),
        Binding("end", "scroll_end", "End", show=False),
    ]

    DEFAULT_CSS = """
    LogView {
        background: $surface;
        scrollbar-size-vertical: 1;
        overflow-x: hidden;
    }
    """

    class StatusChanged(Message):
        """Paused/following/pending counts changed (the pane title shows them)."""

    def __init__(self, max_lines: int = 10_000, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.max_lines = max_lines
        self._all: deque[tuple[int, LogEntry]] = deque(maxlen=max_lines)
        self._view: deque[tuple[int, LogEntry]] = deque()
        self._seq = 0
        self._cache: LRUCache[tuple[int, int], Strip] = LRUCache(1024)
        self.paused = False
        self.pending = 0  # lines that arrived while paused
        self.text_filter = ""
        self.source_filter: str | None = None
        self.pattern_filter: LogPattern | None = None
        self._tag_width = 10
        self._follow = True  # stick to the tail until the operator scrolls up

    # -- state -----------------------------------------------------------------------------------------
    @property
    def line_count(self) -> int:
        return len(self._view)

    @property
    def following(self) -> bool:
        return not self.paused and self._follow

    def watch_scroll_y(self, old_value: float, new_value: float) -> None:
        super().watch_scroll_y(old_value, new_value)
        # Scrolling up stops following; getting back to the end (end key, scrolling down) resumes it.
        follow = new_value >= self.max_scroll_y - 1
        if follow != self._follow:
            self._follow = follow
            self.post_message(self.StatusChanged())

    def filtered_entries(self) -> list[LogEntry]:
        """Every entry that passes the filter, oldest first: the lines scrolling the view shows."""
        return [e for _, e in self._view]

    def visible_entries(self) -> list[LogEntry]:
        """The entries on screen now (top to bottom)."""
        start = int(self.scroll_y)
        return [e for _, e in list(self._view)[start : start + self.size.height]]

    def _matches(self, entry: LogEntry) -> bool:
        if not self._plain_matches(entry):
            return False
        if self.pattern_filter is not None:
            try:
                return self.pattern_filter.matches(entry.message)
            except PatternTooSlow:  # one new line the pattern cannot decide in time: not shown
                return False
        return True

    def _plain_matches(self, entry: LogEntry) -> bool:
        if self.source_filter is not None and entry.source != self.source_filter:
            return False
        if self.text_filter:
            needle = self.text_filter
            return needle in entry.message.lower() or needle in entry.source.lower()
        return True

    # -- feeding ---------------------------------------------------------------------------------------
    def append(self, entries: Iterable[LogEntry]) -> None:
        """Add entries at the end (call inside ``app.batch_update()`` when adding many)."""
        added = 0
        dropped = 0
        for entry in entries:
            self._seq += 1
            item = (self._seq, entry)
            if len(self._all) == self.max_lines and self._view and self._view[0] is self._all[0]:
                # The oldest entry leaves the buffer; it leaves the view too.
                self._view.popleft()
                dropped += 1
            self._all.append(item)
            if len(entry.source) + 2 > self._tag_width:
                self._tag_width = min(24, len(entry.source) + 2)
                self._cache.clear()
            if self.paused:
                if self._matches(entry):
                    self.pending += 1
                continue
            if self._matches(entry):
                self._view.append(item)
                added += 1
        if self.paused and not added and not dropped:
            self.post_message(self.StatusChanged())
            return
        if not added and not dropped:
            return
        self._apply_growth(added, dropped)

    def _apply_growth(self, added: int, dropped: int) -> None:
        self.virtual_size = Size(0, len(self._view))
        if not self.paused and self._follow:
            self.scroll_end(animate=False, immediate=True, x_axis=False, force=True)
        elif dropped:
            # Keep the lines the operator is reading in place.
            self.scroll_to(y=max(0, self.scroll_y - dropped), animate=False, immediate=True, force=True)
        self.refresh()
        self.post_message(self.StatusChanged())

    def set_filter(
        self, text: str | None = None, source: str | bool | None = False, pattern: LogPattern | bool | None = False
    ) -> None:
        """Change the text, source and/or pattern filters (``source=None`` shows all sources, ``pattern=None`` drops
        the pattern). A pattern too slow on the lines held raises PatternTooSlow and changes nothing."""
        before = (self.text_filter, self.source_filter, self.pattern_filter)
        if text is not None:
            self.text_filter = text.strip().lower()
        if source is not False:
            self.source_filter = source if isinstance(source, str) else None
        if pattern is not False:
            self.pattern_filter = pattern if isinstance(pattern, LogPattern) else None
        try:
            view = self._filtered()
        except PatternTooSlow:
            if pattern is not False:  # a new pattern: refused, the filters stay as they were
                self.text_filter, self.source_filter, self.pattern_filter = before
                raise
            self.pattern_filter = None  # the pattern in force got too slow on what the view holds now
            view = self._filtered()
        self._rebuild(view)

    def _filtered(self) -> deque[tuple[int, LogEntry]]:
        """The buffer through the filters; the pattern within one search's time (core.log_search)."""
        items = [item for item in self._all if self._plain_matches(item[1])]
        if self.pattern_filter is not None:
            kept = {id(e) for e in filter_matching([e for _, e in items], self.pattern_filter, PATTERN_BUDGET)}
            items = [item for item in items if id(item[1]) in kept]
        return deque(items)

    def _rebuild(self, view: deque[tuple[int, LogEntry]] | None = None) -> None:
        if view is None:
            try:
                view = self._filtered()
            except PatternTooSlow:  # resuming with a pattern that got slow on new lines: drop the pattern
                self.pattern_filter = None
                view = self._filtered()
        self._view = view
        self.pending = 0
        self.virtual_size = Size(0, len(self._view))
        self._cache.clear()
        self._follow = True
        self.scroll_end(animate=False, immediate=True, x_axis=False, force=True)
        self.refresh()
        self.post_message(self.StatusChanged())

    def toggle_pause(self) -> bool:
        """Pause or resume; resuming shows what arrived meanwhile and follows the tail again."""
        self.paused = not self.paused
        if not self.paused:
            self._rebuild()
        else:
            self.pending = 0
            self.post_message(self.StatusChanged())
        return self.paused

    def clear(self) -> None:
        self._all.clear()
        self._view.clear()
        self._cache.clear()
        self.pending = 0
        self.virtual_size = Size(0, 0)
        self.refresh()

    # -- rendering -------------------------------------------------------------------------------------
    def on_resize(self) -> None:
        self._cache.clear()
        self.virtual_size = Size(0, len(self._view))
        if self._follow and not self.paused:
            self.scroll_end(animate=False, x_axis=False, force=True)

    def render_line(self, y: int) -> Strip:
        index = int(self.scroll_y) + y
        width = self.scrollable_content_region.width
        if index >= len(self._view) or index < 0:
            return Strip.blank(width, self.rich_style)
        seq, entry = self._view[index]
        key = (seq, width)
        strip = self._cache.get(key)
        if strip is None:
            strip = self._render_entry(entry, width)
            self._cache[key] = strip
        return strip

    def _render_entry(self, entry: LogEntry, width: int) -> Strip:
        base = self.rich_style
        ts = time.strftime("%H:%M:%S", time.gmtime(entry.ts))
        tag = printable(entry.source)[: self._tag_width - 1].ljust(self._tag_width)
        msg_style = LEVEL_STYLES.get(entry.level, Style())
        message = printable(entry.message)
        segments = [
            Segment(ts + " ", base + TS_STYLE),
            Segment(tag, base + Style(color=source_colour(entry.source), bold=entry.source == "supervisor")),
            Segment(message, base + msg_style),
        ]
        return Strip(segments).crop_extend(0, width, base)
