"""The log hub: one ring buffer per source, rotating files under data/logs, and LogLine events.

Plugin output is read line by line with hard bounds: a line over ``MAX_LINE`` bytes is cut (the rest of it is
skipped), invalid UTF-8 is replaced, and a writer that never sends a newline cannot grow memory.

Lines echoed to a stream (headless: stdout) go through an ``EchoWriter``: a bounded queue drained by a daemon
thread, so a reader that stops reading (a stalled journald, ``| less``, a blocked docker log driver) never blocks
supervision. While the queue is full, lines are dropped and counted; once it has drained, one line says how many
were dropped. ``LogHub.close()`` waits at most ``ECHO_FLUSH_TIMEOUT`` seconds for what is still queued. Files
under data/logs are written in the caller's thread and keep every line.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from supervisor_tui.core.events import EventBus, LogLine
from supervisor_tui.core.printable import printable
from supervisor_tui.core.private import private_dir
from supervisor_tui.core.rotating_file import RotatingFile

MAX_LINE = 64 * 1024
SUPERVISOR_SOURCE = "supervisor"
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
# Echo queue bounds: what a stalled reader may hold back before lines are dropped (files keep them all).
ECHO_MAX_LINES = 10_000
ECHO_MAX_BYTES = 2 * 1024**2
ECHO_FLUSH_TIMEOUT = 2.0  # seconds close() waits for queued lines: exit never hangs on a stalled stdout


@dataclass(slots=True)
class LogRecord:
    """One line of output or one supervisor message."""

    ts: float
    source: str
    stream: str
    level: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "source": self.source,
            "stream": self.stream,
            "level": self.level,
            "message": self.message,
            **self.fields,
        }


def format_ts(ts: float) -> str:
    """ISO-8601 UTC with milliseconds."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


class QueuedWriter:
    """Writes queued bytes to a stream from a daemon thread: whoever queues never waits for the reader.

    Subclasses decide what gets queued (``_put``, with the lock held) and what follows each write (``_written``).
    ``close(timeout)`` waits at most ``timeout`` seconds; a thread still blocked on a stalled reader is left behind
    (it is a daemon).
    """

    def __init__(self, stream: IO[str], name: str) -> None:
        self._stream = stream
        self._fd = _fileno(stream)
        self._encoding = getattr(stream, "encoding", None) or "utf-8"
        self._name = name
        self._queue: deque[bytes] = deque()
        self._queued_bytes = 0
        self._writing = False  # the thread holds bytes it has taken off the queue
        self._closed = False
        self._broken = False  # a write failed (stream closed, EPIPE, EIO): everything after is discarded
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def _put(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued_bytes += len(data)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
        self._cond.notify()

    def _written(self, ok: bool) -> None:
        """After each write, with the lock held; ``ok`` is False once the stream is gone."""

    def close(self, timeout: float) -> bool:
        """Stop taking more and wait up to ``timeout`` seconds for what is queued; False if it was not all written."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            while (self._queue or self._writing) and not self._broken:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return not self._broken

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if not self._queue:
                    return
                data = self._queue.popleft()
                self._queued_bytes -= len(data)
                self._writing = True
            ok = self._send(data)
            with self._cond:
                self._writing = False
                if not ok:
                    self._broken = True
                    self._queue.clear()
                    self._queued_bytes = 0
                self._written(ok)
                self._cond.notify_all()
                if not ok:
                    return

    def _send(self, data: bytes) -> bool:
        """Blocking write (only this thread waits on the reader); False once the stream is gone."""
        try:
            if self._fd is None:
                self._stream.write(data.decode(self._encoding))
                self._stream.flush()
                return True
            view = memoryview(data)
            while view:
                try:
                    view = view[os.write(self._fd, view) :]
                except BlockingIOError:  # a non-blocking descriptor (shared with another process): wait here
                    select.select([], [self._fd], [])
            return True
        except (OSError, ValueError):
            return False


class EchoWriter(QueuedWriter):
    """Echoed log lines, never blocking the caller: at most ``max_lines`` lines and ``max_bytes`` bytes wait.

    Past that, lines are dropped and counted until the queue has drained to half of both bounds; then
    ``notice(count)`` is written where the lines are missing.
    """

    def __init__(
        self,
        stream: IO[str],
        notice: Callable[[int], str],
        max_lines: int = ECHO_MAX_LINES,
        max_bytes: int = ECHO_MAX_BYTES,
    ) -> None:
        super().__init__(stream, "log-echo")
        self._notice = notice
        self._max_lines, self._max_bytes = max_lines, max_bytes
        self._dropped = 0

    def write(self, line: str) -> None:
        """Queue one line (without its newline), or count it as dropped when the queue is full."""
        data = (line + "\n").encode(self._encoding, errors="replace")
        with self._cond:
            if self._closed or self._broken:
                return
            full = len(self._queue) >= self._max_lines or self._queued_bytes + len(data) > self._max_bytes
            if self._dropped or (full and self._queue):
                self._dropped += 1
                return
            self._put(data)

    def close(self, timeout: float = ECHO_FLUSH_TIMEOUT) -> bool:
        return super().close(timeout)

    def _written(self, ok: bool) -> None:
        drained = len(self._queue) <= self._max_lines // 2 and self._queued_bytes <= self._max_bytes // 2
        if ok and self._dropped and drained:
            self._put((self._notice(self._dropped) + "\n").encode(self._encoding, errors="replace"))
            self._dropped = 0


def _fileno(stream: IO[str]) -> int | None:
    """The stream's descriptor, written to directly: a thread blocked inside a buffered stream holds its lock,
    and the interpreter aborts at exit when it cannot flush a stream locked by a daemon thread."""
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


class LogHub:
    """Collects every line from plugins and the supervisor; keeps the tail in memory and everything on disk."""

    def __init__(
        self,
        bus: EventBus,
        logs_dir: Path | None,
        ring_lines: int = 10_000,
        max_bytes: int = 10 * 1024**2,
        backups: int = 3,
        echo: TextIO | None = None,
        echo_format: str = "human",
        echo_level: str = "info",
    ) -> None:
        self.bus = bus
        self.logs_dir = logs_dir
        self.ring_lines = ring_lines
        self.max_bytes = max_bytes
        self.backups = backups
        self._rings: dict[str, deque[LogRecord]] = {}
        self._files: dict[str, RotatingFile] = {}
        self.echo = echo
        self._echo_writer: EchoWriter | None = None
        self.echo_format = echo_format
        self.echo_level = LEVELS.get(echo_level, 20)
        self.echo_output = False  # also echo plugin output lines (headless: everything goes to stdout)
        self.secrets: list[str] = []  # values that must never be written anywhere
        self.on_record: list[Callable[[LogRecord], None]] = []
        self._failing: set[str] = set()  # sources whose file cannot be written (warned about once)

    # -- writing -----------------------------------------------------------------------------------------
    def write(self, source: str, stream: str, message: str, level: str = "info", **fields: Any) -> LogRecord:
        for secret in self.secrets:
            if secret and secret in message:
                message = message.replace(secret, "***")
        rec = LogRecord(time.time(), source, stream, level, message, fields)
        ring = self._rings.get(source)
        if ring is None:
            ring = self._rings[source] = deque(maxlen=self.ring_lines)
        ring.append(rec)
        self._to_file(rec)
        if (
            self.echo is not None
            and (stream == "supervisor" or self.echo_output)
            and LEVELS.get(level, 20) >= self.echo_level
        ):
            self._echo(rec)
        self.bus.publish(LogLine(source=source, stream=stream, level=level, message=message, ts=rec.ts))
        for callback in self.on_record:
            callback(rec)
        return rec

    def info(self, message: str, event: str = "message", **fields: Any) -> LogRecord:
        """A supervisor message at level info; ``event`` names what happened (for JSON logs)."""
        return self.write(SUPERVISOR_SOURCE, "supervisor", message, "info", event=event, **fields)

    def warning(self, message: str, event: str = "message", **fields: Any) -> LogRecord:
        return self.write(SUPERVISOR_SOURCE, "supervisor", message, "warning", event=event, **fields)

    def error(self, message: str, event: str = "message", **fields: Any) -> LogRecord:
        return self.write(SUPERVISOR_SOURCE, "supervisor", message, "error", event=event, **fields)

    def _to_file(self, rec: LogRecord) -> None:
        if self.logs_dir is None:
            return
        try:
            f = self._files.get(rec.source)
            if f is None:
                private_dir(self.logs_dir)
                f = self._files[rec.source] = RotatingFile(
                    self.logs_dir / f"{rec.source}.log", self.max_bytes, self.backups
                )
            # Human lines end up on terminals (tail, less): control characters shown, not obeyed.
            f.write(f"{format_ts(rec.ts)} {rec.stream} {printable(rec.message)}\n")
        except OSError as exc:  # a full disk or an unwritable logs/ must not stop supervision
            self._file_failed(rec.source, exc)
        else:
            self._failing.discard(rec.source)

    def _file_failed(self, source: str, exc: OSError) -> None:
        """Say once per source (until its file works again) that its lines now live in the ring only."""
        if source in self._failing:
            return
        self._failing.add(source)
        self.warning(
            f"cannot write log files in {self.logs_dir} ({source}.log: {exc.strerror or exc}): its lines are kept "
            f"in memory only (the last {self.ring_lines})",
            event="log_file_failed",
            file=f"{source}.log",
            directory=str(self.logs_dir),
            error=str(exc.strerror or exc),
        )

    def _echo(self, rec: LogRecord) -> None:
        assert self.echo is not None
        if self._echo_writer is None:
            self._echo_writer = EchoWriter(self.echo, self._dropped_line)
        self._echo_writer.write(self._echo_line(rec))

    def _dropped_line(self, count: int) -> str:
        """The line that stands for ``count`` lines dropped from the echo (written from the echo thread)."""
        name = str(getattr(self.echo, "name", "the log output")).strip("<>")
        message = f"{count} log lines dropped: {name} was not being read"
        fields = {"event": "log_lines_dropped", "dropped": count}
        return self._echo_line(LogRecord(time.time(), SUPERVISOR_SOURCE, "supervisor", "warning", message, fields))

    def _echo_line(self, rec: LogRecord) -> str:
        if self.echo_format == "json":
            d: dict[str, Any] = {
                "ts": format_ts(rec.ts),
                "level": rec.level,
                "source": rec.fields.get("plugin", rec.source),
                "event": rec.fields.get("event", "message" if rec.stream == "supervisor" else "output"),
                "message": rec.message,
            }
            if rec.stream != "supervisor":
                d["stream"] = rec.stream
            for k, v in rec.fields.items():
                if k not in d:
                    d[k] = v
            line = json.dumps(d, default=str)
        else:
            line = f"{format_ts(rec.ts)} {rec.level.upper():7} {printable(rec.message)}"
            if rec.stream != "supervisor":
                line = f"{format_ts(rec.ts)} {rec.level.upper():7} {rec.source}[{rec.stream}] {printable(rec.message)}"
        return line

    # -- reading plugin output ---------------------------------------------------------------------------
    async def pump(
        self,
        source: str,
        stream_name: str,
        reader: asyncio.StreamReader,
        on_line: Callable[[str], None] | None = None,
    ) -> None:
        """Read ``reader`` until EOF, one record per line, with the bounds described in the module doc;
        ``on_line`` sees each line's text as it is recorded (a plugin's ready line is watched this way)."""
        buf = bytearray()
        skipping = False
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                break
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    if not skipping:
                        buf += chunk[start:]
                        if len(buf) > MAX_LINE:
                            self._emit_raw(source, stream_name, bytes(buf[:MAX_LINE]), on_line, cut=True)
                            buf.clear()
                            skipping = True
                    break
                if skipping:
                    skipping = False
                else:
                    buf += chunk[start:nl]
                    if len(buf) > MAX_LINE:
                        self._emit_raw(source, stream_name, bytes(buf[:MAX_LINE]), on_line, cut=True)
                    else:
                        self._emit_raw(source, stream_name, bytes(buf), on_line)
                buf.clear()
                start = nl + 1
        if buf and not skipping:
            self._emit_raw(source, stream_name, bytes(buf), on_line)

    def _emit_raw(
        self, source: str, stream: str, raw: bytes, on_line: Callable[[str], None] | None, cut: bool = False
    ) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if cut:
            text += " [line cut at 64 KiB]"
        self.write(source, stream, text, "error" if stream == "stderr" else "info")
        if on_line is not None:
            on_line(text)

    # -- reading -----------------------------------------------------------------------------------------
    def tail(self, source: str | None = None, lines: int = 100) -> list[LogRecord]:
        """The last ``lines`` records of one source, or of all sources merged by time."""
        if lines <= 0:
            return []
        if source is not None:
            ring = self._rings.get(source)
            return list(ring)[-lines:] if ring else []
        merged: list[LogRecord] = []
        for ring in self._rings.values():
            merged.extend(list(ring)[-lines:])
        merged.sort(key=lambda r: r.ts)
        return merged[-lines:]

    def sources(self) -> list[str]:
        return sorted(self._rings)

    def close(self) -> None:
        """Close the files and flush the echo, waiting at most ``ECHO_FLUSH_TIMEOUT`` seconds for it."""
        for f in self._files.values():
            try:
                f.close()
            except OSError:  # closing must always finish
                pass
        self._files.clear()
        if self._echo_writer is not None:
            self._echo_writer.close()
            self._echo_writer = None


def stderr_line(message: str) -> None:
    """One line for the operator on stderr (CLI errors)."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
