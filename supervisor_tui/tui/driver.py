"""A terminal driver that survives the terminal going away (SSH dropped, tmux killed, stdin at EOF).

Textual's Linux driver loops on a readable-at-EOF stdin (100 % CPU) and its writer thread dies on the first
EIO, after which rendering blocks forever. Here EOF and read/write errors ask the app to leave instead
(``SupervisorApp.hangup``), and writes to a dead terminal are dropped.
"""

from __future__ import annotations

import os
import selectors
from codecs import getincrementaldecoder
from typing import IO, Any

from textual._parser import ParseError
from textual._xterm_parser import XTermParser
from textual.drivers.linux_driver import LinuxDriver


class _HangupSafeFile:
    """Wraps the terminal stream: after the first write error every write is dropped."""

    def __init__(self, stream: IO[str], on_error: Any) -> None:
        self._stream = stream
        self._on_error = on_error
        self.dead = False

    def write(self, text: str) -> int:
        if self.dead:
            return len(text)
        try:
            return self._stream.write(text)
        except (OSError, ValueError):
            self.dead = True
            self._on_error("terminal write failed")
            return len(text)

    def flush(self) -> None:
        if self.dead:
            return
        try:
            self._stream.flush()
        except (OSError, ValueError):
            self.dead = True
            self._on_error("terminal write failed")

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class HangupSafeDriver(LinuxDriver):
    """LinuxDriver that turns a hung-up terminal into a clean app exit."""

    def __init__(self, app: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        assert self._file is not None
        self._file = _HangupSafeFile(self._file, self._hung_up)  # type: ignore[assignment]
        self._hung = False

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
