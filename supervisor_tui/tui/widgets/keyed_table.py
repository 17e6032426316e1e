"""A DataTable updated by keyed reconcile: stale rows removed, changed cells updated, new rows added.

A fenced hack: its cell rendering and row ordering use DataTable's private state (``_render_cell``,
``_row_locations``, ``_cell_render_cache``, ``_update_count``, ``textual._two_way_dict``), kept because it was
measured: 16 rows of 7 columns render in 5 ms against DataTable's 20 ms, with identical output (``bench/tui_load.py``;
bench/README.md, "TUI under console load"). scripts/test_pins.sh runs the TUI tests at both ends of pyproject.toml's
textual pin, so a Textual release that moves these internals fails the test command.

Rows are never cleared and refilled, so the cursor and scroll position survive every update, and each
update touches only what changed (every DataTable mutation invalidates its row caches, so fewer is faster).
Cell text is shown with control and bidi characters as visible escapes (names and jobs come from plugins
and consoles).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual._two_way_dict import TwoWayDict
from textual.binding import Binding
from textual.widgets import DataTable

from supervisor_tui.core.printable import printable

# A cell as the panes describe it: (text, style). Compared as plain tuples, turned into Text only on change.
Cell = tuple[str, str]


class KeyedTable(DataTable[Text]):
    """DataTable whose rows are identified by domain keys (plugin key, console id)."""

    BINDINGS = [
        # Shown in the footer; same id as the screen's binding so remapping "details" moves both.
        Binding("enter", "select_cursor", "Open", id="details", tooltip="Open the selected plugin or console"),
        Binding("j", "cursor_down", "Down", show=False, id="down"),
        Binding("k", "cursor_up", "Up", show=False, id="up"),
    ]

    def __init__(self, columns: Sequence[tuple[str, str, int | None]], *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)
        self._all_columns = list(columns)
        self._column_spec = list(columns)
        self._shown: list[int] = list(range(len(columns)))
        self._cells: dict[str, tuple[Cell, ...]] = {}
        self.order: list[str] = []

    def on_mount(self) -> None:
        self._add_columns()

    def _add_columns(self) -> None:
        for key, label, width in self._column_spec:
            self.add_column(label, key=key, width=width)

    def show_columns(self, columns: Sequence[tuple[str, str, int | None]]) -> None:
        """Show only these columns (keys from the full set, widths may differ); rows come back on reconcile."""
        wanted = list(columns)
        if wanted == self._column_spec:
            return
        index = {key: i for i, (key, _, _) in enumerate(self._all_columns)}
        self._column_spec = wanted
        self._shown = [index[key] for key, _, _ in wanted]
        self.clear(columns=True)
        self._cells.clear()
        self.order = []
        self._add_columns()

    @property
    def column_keys(self) -> list[str]:
        return [key for key, _, _ in self._column_spec]

    @property
    def selected_key(self) -> str | None:
        """The key of the row under the cursor."""
        if not self.row_count:
            return None
        try:
            row_key, _ = self.coordinate_to_cell_key(self.cursor_coordinate)
        except Exception:  # the cursor is outside the table while rows are being replaced
            return None
        return str(row_key.value) if row_key.value is not None else None

    def reconcile(self, rows: Mapping[str, Sequence[Cell]], order: Sequence[str] | None = None) -> int:
        """Make the table show ``rows`` (in ``order`` if given); returns how many cells changed.

        Each row holds a cell for every column of the full set; hidden columns are skipped.

        Call inside ``app.batch_update()``.
        """
        selected = self.selected_key
        changes = 0
        for stale in [k for k in self._cells if k not in rows]:
            self.remove_row(stale)
            del self._cells[stale]
            changes += 1
        columns = self.column_keys
        added = False
        shown = self._shown
        for key, cells in rows.items():
            new = tuple(cells[i] for i in shown)
            old = self._cells.get(key)
            if old is None:
                self.add_row(*(Text(printable(t), style=s) for t, s in new), key=key)
                added = True
                changes += len(new)
            elif old != new:
                for col, before, after in zip(columns, old, new, strict=False):
                    if before != after:
                        self.update_cell(key, col, Text(printable(after[0]), style=after[1]))
                        changes += 1
            self._cells[key] = new
        wanted = list(order) if order is not None else list(rows)
        if wanted != self.order and (added or order is not None):
            self._apply_order(wanted)
        if selected is not None and selected in self._cells:
            self._keep_cursor_on(selected)
        return changes

    def _apply_order(self, wanted: list[str]) -> None:
        current = [str(r.key.value) for r in self.ordered_rows]
        if current != wanted:
            rank = {k: i for i, k in enumerate(wanted)}
            ordered = sorted(self._row_locations, key=lambda rk: rank.get(str(rk.value), len(rank)))
            # DataTable.sort only hands row data to its key function; ordering by row key means
            # rebuilding the location map the same way it does.
            self._row_locations = TwoWayDict({rk: i for i, rk in enumerate(ordered)})
            self._update_count += 1
            self.refresh()
        self.order = wanted

    def _render_cell(
        self,
        row_index: int,
        column_index: int,
        base_style: Style,
        width: int,
        cursor: bool = False,
        hover: bool = False,
    ) -> list[list[Segment]]:
        """DataTable's cell rendering, with a fast path for the one-line, one-style cells the panes use.

        DataTable renders every cell through Rich's layout machinery (Padding, Styled, render_lines), about
        0.2 ms a cell; each update invalidates every cached cell, so a table whose ages tick every second
        re-renders all its visible cells every second. Building the same segments directly costs a few
        microseconds. Anything else (headers, markup, several lines) goes the original way.
        """
        if row_index < 0 or column_index < 0 or self.fixed_rows or self.fixed_columns:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        row_key = self._row_locations.get_key(row_index)
        column_key = self._column_locations.get_key(column_index)
        if row_key is None or column_key is None:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        cache_key = (
            row_key,
            column_key,
            base_style,
            cursor,
            hover,
            self._show_hover_cursor,
            self._update_count,
            self._pseudo_class_state,
        )
        cached = self._cell_render_cache.get(cache_key)
        if cached is not None:
            return cached
        value = self._data.get(row_key, {}).get(column_key)
        row = self.rows.get(row_key)
        if not isinstance(value, Text) or value.spans or row is None or row.height != 1 or "\n" in value.plain:
            return super()._render_cell(row_index, column_index, base_style, width, cursor, hover)
        component_style, post_style = self._get_styles_to_render_cell(
            False,
            False,
            False,
            hover,
            cursor,
            self.show_cursor,
            self._show_hover_cursor,
            self.cursor_foreground_priority == "css",
            self.cursor_background_priority == "css",
        )
        pre = base_style + Style.from_meta({"row": row_index, "column": column_index}) + component_style
        own = Style.parse(value.style) if isinstance(value.style, str) else value.style
        pad = self.cell_padding
        inner = max(0, width - 2 * pad)
        content = value.plain
        if cell_len(content) > inner:
            content = set_cell_size(content, inner)
        fill = inner - cell_len(content)
        segments = [
            Segment(" " * pad, pre + post_style),
            Segment(content, pre + own + post_style),
            Segment(" " * (fill + pad), pre + post_style),
        ]
        lines = [[segment for segment in segments if segment.text]]
        self._cell_render_cache[cache_key] = lines
        return lines

    def _keep_cursor_on(self, key: str) -> None:
        try:
            index = self.get_row_index(key)
        except Exception:
            return
        if index != self.cursor_row:
            self.move_cursor(row=index, animate=False, scroll=False)
