"""A terminal driver that survives the terminal going away (SSH dropped, tmux killed, stdin at EOF) or stalling.

Textual's Linux driver loops on a readable-at-EOF stdin (100 % CPU) and its writer thread dies on the first
EIO, after which rendering blocks forever. Here EOF and read/write errors ask the app to leave instead
(``SupervisorApp.hangup``), and writes to a dead terminal are dropped.

A terminal that stops reading (an SSH session whose network stalls, a suspended terminal emulator) must not stop
the supervisor: Textual's writer thread takes at most 30 writes, after which every frame blocks the event loop.
``TerminalWriter`` never blocks: past ``MAX_QUEUED_BYTES`` whole frames are dropped until the terminal has read
what was queued, then the app repaints the full screen (nothing a dropped frame drew is left out). Leaving the
app waits at most ``STOP_TIMEOUT`` seconds for the terminal.
"""

from __future__ import annotations

import os
import selectors
from codecs import getincrementaldecoder
from collections.abc import Callable
from typing import IO, Any

from textual._parser import ParseError
from textual._xterm_parser import XTermParser
from textual.drivers.linux_driver import LinuxDriver

from supervisor_tui.core.logs import QueuedWriter

MAX_QUEUED_BYTES = 256 * 1024  # some full frames: more would be stale by the time a stalled terminal reads it
CONTROL_MAX = 64  # writes this short are mode switches and sync markers, kept while frames are dropped...
CONTROL_RESERVE = 64 * 1024  # ...within this much more
STOP_TIMEOUT = 2.0


class TerminalWriter(QueuedWriter):
    """Writes to the terminal from a daemon thread; ``write`` never blocks, whatever the terminal does.

    Past ``MAX_QUEUED_BYTES`` queued, writes are dropped (short control writes within a reserve are kept) until
    the queue has drained; then ``on_drained`` is called from the thread. After a write error everything is
    dropped and ``on_error`` is called once.
    """

    def __init__(self, stream: IO[str], on_error: Callable[[str], None], on_drained: Callable[[], None]) -> None:
        super().__init__(stream, "terminal-writer")
        self._errors = getattr(stream, "errors", None) or "replace"
        self._on_error, self._on_drained = on_error, on_drained
        self._dropping = False

    def write(self, text: str) -> None:
        data = text.encode(self._encoding, self._errors)
        control = len(data) <= CONTROL_MAX
        with self._cond:
            if self._closed or self._broken or not data:
                return
            room = MAX_QUEUED_BYTES + (CONTROL_RESERVE if control else 0) - self._queued_bytes
            if self._queue and (len(data) > room or (self._dropping and not control)):
                self._dropping = True
                return
            self._put(data)

    def flush(self) -> None:
        """Nothing to do: the thread writes as soon as it can."""

    def isatty(self) -> bool:
        return True

    def fileno(self) -> int:
        assert self._fd is not None
        return self._fd

    def stop(self) -> None:
        """Write what is queued, waiting at most ``STOP_TIMEOUT`` seconds for a stalled terminal."""
        self.close(STOP_TIMEOUT)

    def _written(self, ok: bool) -> None:
        if not ok:
            self._on_error("terminal write failed")
        elif self._dropping and not self._queue:
            self._dropping = False
            if not self._closed:
                self._on_drained()


class HangupSafeDriver(LinuxDriver):
    """LinuxDriver that turns a hung-up terminal into a clean app exit and never blocks on a stalled one."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._hung = False
        self._terminal: TerminalWriter | None = None

    def start_application_mode(self) -> None:
        """LinuxDriver's, with every write going to a ``TerminalWriter`` instead of Textual's writer thread."""
        assert self._file is not None
        self._terminal = TerminalWriter(self._file, self._hung_up, self._repaint)
        super().start_application_mode()
        textual_writer = self._writer_thread
        self._writer_thread = self._terminal  # type: ignore[assignment]  # close() stops ours
        if textual_writer is not None and textual_writer is not self._writer_thread:
            textual_writer.stop()  # it never got a write: write() below goes to ours

    def write(self, data: str) -> None:
        if self._terminal is not None:
            self._terminal.write(data)

    def _repaint(self) -> None:
        """The terminal reads again after frames were dropped: draw the whole screen (from the writer thread)."""
        try:
            self._loop.call_soon_threadsafe(self._app.refresh)
        except RuntimeError:  # the loop is already closed: nothing left to draw
            pass

    def _hung_up(self, reason: str) -> None:
        if self._hung:
            return
        self._hung = True
        hangup = getattr(self._app, "hangup", None)
        if hangup is None:
            return
        try:
            self._loop.call_soon_threadsafe(hangup, reason)
        except RuntimeError:  # the loop is already closed: nothing left to stop
            pass

    def run_input_thread(self) -> None:
        """Like LinuxDriver's loop, but EOF or a read error (hangup) ends input and tells the app."""
        selector = selectors.SelectSelector()
        selector.register(self.fileno, selectors.EVENT_READ)
        parser = XTermParser(self._debug)
        decode = getincrementaldecoder("utf-8")().decode
        try:
            while not self.exit_event.is_set():
                for _key, mask in selector.select(0.1):
                    if not mask & selectors.EVENT_READ:
                        continue
                    try:
                        data = os.read(self.fileno, 4096)
                    except OSError:
                        data = b""
                    if not data:
                        self._hung_up("stdin closed")
                        return
                    for event in parser.feed(decode(data)):
                        self.process_message(event)
                for event in parser.tick():
                    self.process_message(event)
        finally:
            selector.close()
            try:
                for _event in parser.feed(""):
                    pass
            except (EOFError, ParseError):
                pass
