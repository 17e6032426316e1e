"""``StatusHeader``: the one-line summary at the top of the main screen (the view model writes its markup)."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget


class StatusHeader(Widget):
    """The one-line summary: plugins, consoles by state, warnings. Repaints without a layout pass."""

    DEFAULT_CSS = "StatusHeader { height: 1; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._text = Text("")
        self._markup = ""

    def set_markup(self, markup: str) -> None:
        if markup == self._markup:  # an unchanged header must not cost a repaint
            return
        self._markup = markup
        self._text = Text.from_markup(markup, overflow="ellipsis")
        self._text.no_wrap = True
        self.refresh()

    def render(self) -> Text:
        return self._text
