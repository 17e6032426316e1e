"""The log hub: one ring buffer per source, rotating files under data/logs, and LogLine events.

Plugin output is read line by line with hard bounds: a line over ``MAX_LINE`` bytes is cut (the rest of it is
skipped), invalid UTF-8 is replaced, and a writer that never sends a newline cannot grow memory.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from supervisor_tui.core.events import EventBus, LogLine
from supervisor_tui.core.private import open_private, private_dir

MAX_LINE = 64 * 1024
SUPERVISOR_SOURCE = "supervisor"
LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


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


class _RotatingFile:
    """A size-rotated text file: <name>.log, then <name>.log.1 ... <name>.log.N (oldest dropped), all 0600.

    Written unbuffered: a write that fails (full disk) leaves nothing pending that a later flush or close would
    fail on again."""

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        private_dir(path.parent)
        self.path, self._max, self._backups = path, max_bytes, backups
        self._fd = self._open()

    def _open(self) -> int:
        fd = open_private(self.path, os.O_WRONLY | os.O_APPEND)
        self._size = os.fstat(fd).st_size
        return fd

    def write(self, text: str) -> None:
        data = text.encode("utf-8", errors="replace")
        if self._max > 0 and self._size + len(data) >= self._max:
            self._rotate()
        self._size += os.write(self._fd, data)

    def _rotate(self) -> None:
        os.close(self._fd)
        for i in range(self._backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{i}")
            if older.exists():
                older.replace(self.path.with_name(f"{self.path.name}.{i + 1}"))
        if self._backups > 0:
            self.path.replace(self.path.with_name(f"{self.path.name}.1"))
        else:
            self.path.unlink(missing_ok=True)
        self._fd = self._open()

    def close(self) -> None:
        os.close(self._fd)


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
        self._files: dict[str, _RotatingFile] = {}
        self.echo = echo
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
                f = self._files[rec.source] = _RotatingFile(
                    self.logs_dir / f"{rec.source}.log", self.max_bytes, self.backups
                )
            f.write(f"{format_ts(rec.ts)} {rec.stream} {rec.message}\n")
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
            line = f"{format_ts(rec.ts)} {rec.level.upper():7} {rec.message}"
            if rec.stream != "supervisor":
                line = f"{format_ts(rec.ts)} {rec.level.upper():7} {rec.source}[{rec.stream}] {rec.message}"
        try:
            self.echo.write(line + "\n")
            self.echo.flush()
        except (OSError, ValueError):
            pass

    # -- reading plugin output ---------------------------------------------------------------------------
    async def pump(self, source: str, stream_name: str, reader: asyncio.StreamReader) -> None:
        """Read ``reader`` until EOF, one record per line, with the bounds described in the module doc."""
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
                            self._emit_raw(source, stream_name, bytes(buf[:MAX_LINE]), cut=True)
                            buf.clear()
                            skipping = True
                    break
                if skipping:
                    skipping = False
                else:
                    buf += chunk[start:nl]
                    if len(buf) > MAX_LINE:
                        self._emit_raw(source, stream_name, bytes(buf[:MAX_LINE]), cut=True)
                    else:
                        self._emit_raw(source, stream_name, bytes(buf))
                buf.clear()
                start = nl + 1
        if buf and not skipping:
            self._emit_raw(source, stream_name, bytes(buf))

    def _emit_raw(self, source: str, stream: str, raw: bytes, cut: bool = False) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if cut:
            text += " [line cut at 64 KiB]"
        self.write(source, stream, text, "error" if stream == "stderr" else "info")

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
        for f in self._files.values():
            try:
                f.close()
            except OSError:  # closing must always finish
                pass
        self._files.clear()


def stderr_line(message: str) -> None:
    """One line for the operator on stderr (CLI errors)."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
