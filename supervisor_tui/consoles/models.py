"""Console payloads in both dialects (the Spanish console API, and English), the state vocabulary, and timestamps.

Both dialects decode into the same ``HeartbeatInput`` / ``RegistrationInput``; everything after decoding
speaks English. Timestamps arrive as ISO-8601 strings ("2025-12-03T10:30:00.000Z"), are stored as Unix
floats, and are answered as ISO-8601 UTC. An id, name, host (``system.hostname``) or current job holding a
control or bidi formatting character is refused (InvalidField naming it): they end up on operators' terminals.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import msgspec

from supervisor_tui.core.logs import format_ts
from supervisor_tui.core.printable import printable_problem


class ConsoleState(StrEnum):
    """A console's state; the first four are reported by the console, INACTIVE is decided by the server."""

    ACTIVE = "active"
    BUSY = "busy"
    IDLE = "idle"
    ERROR = "error"
    INACTIVE = "inactive"


REPORTED_STATES: tuple[str, ...] = ("active", "busy", "idle", "error")
ALL_STATES: tuple[str, ...] = (*REPORTED_STATES, "inactive")
SPANISH_TO_ENGLISH: dict[str, str] = {
    "activa": "active",
    "ocupada": "busy",
    "esperando": "idle",
    "error": "error",
    "inactiva": "inactive",
}
ENGLISH_TO_SPANISH: dict[str, str] = {v: k for k, v in SPANISH_TO_ENGLISH.items()}
SPANISH_REPORTED_STATES: tuple[str, ...] = ("activa", "ocupada", "esperando", "error")

CONSOLE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
_CONSOLE_ID = re.compile(CONSOLE_ID_PATTERN)
MAX_NAME = 255  # the Spanish API: nombre VARCHAR(255)
MAX_JOB = 500  # the Spanish API: video_en_proceso VARCHAR(500)
MAX_HOST = 255  # longer hostnames are cut, not refused
MAX_TIMESTAMP = 253402300799.0  # 9999-12-31T23:59:59Z


class InvalidField(Exception):
    """A payload field has a value that is not allowed; ``field`` is its name in the client's dialect."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def valid_console_id(console_id: str) -> bool:
    return _CONSOLE_ID.fullmatch(console_id) is not None  # match() would let a trailing newline through "$"


MIN_TIMESTAMP = -62135596800.0  # 0001-01-01T00:00:00Z
_LEAP_SECOND = re.compile(r"(T\d\d:\d\d):60")
# Valid timestamp strings already parsed: a console repeats its last activity until it does something new, so
# most heartbeats carry a string seen before (parsing one costs about 2 us on the event loop).
_PARSED: dict[str, float] = {}
_PARSED_MAX = 4096


def parse_timestamp(value: str | float | int | None, field: str) -> float | None:
    """Unix seconds from an ISO-8601/RFC 3339 string (Z or an offset; none means UTC) or a number."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidField(field, f"`{field}` must be an ISO-8601 timestamp like 2025-12-03T10:30:00.000Z")
    if isinstance(value, int | float):
        ts = float(value)
    else:
        known = _PARSED.get(value)
        if known is not None:
            return known
        # RFC 3339 allows a lower-case t/z and a leap second, which datetime does not read.
        text = _LEAP_SECOND.sub(r"\1:59", value.strip().upper())
        try:
            dt = datetime.fromisoformat(text)
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)
            ts = dt.timestamp()
        except (ValueError, OverflowError):
            raise InvalidField(
                field, f"`{field}` must be an ISO-8601 timestamp like 2025-12-03T10:30:00.000Z, got {value[:64]!r}"
            ) from None
    if not MIN_TIMESTAMP <= ts <= MAX_TIMESTAMP:
        raise InvalidField(field, f"`{field}` must be a timestamp between years 1 and 9999")
    if isinstance(value, str):
        if len(_PARSED) >= _PARSED_MAX:
            _PARSED.clear()
        _PARSED[value] = ts
    return ts


def iso(ts: float | None) -> str | None:
    """ISO-8601 UTC with milliseconds ("2025-12-03T10:30:00.000Z"), or None."""
    if ts is None:
        return None
    if 0 <= ts < 32503680000:  # 1970-3000: the common case, the log hub's formatter
        return format_ts(ts)
    dt = datetime.fromtimestamp(ts, UTC)
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
        f".{dt.microsecond // 1000:03d}Z"
    )


# -- wire formats --------------------------------------------------------------------------------------------
# Loose types where clients differ (numbers or strings for timestamps, a string or an object for the error);
# unknown fields are ignored so newer clients keep working.

# The ``extra_json_schema`` annotations only document (the checks below give the messages clients see).
Timestamp = (
    Annotated[
        str,
        msgspec.Meta(
            description="ISO-8601 timestamp like 2025-12-03T10:30:00.000Z (no offset = UTC), or Unix seconds",
            extra_json_schema={"format": "date-time", "example": "2025-12-03T10:30:00.000Z"},
        ),
    ]
    | float
    | None
)
SpanishState = Annotated[str, msgspec.Meta(extra_json_schema={"enum": list(SPANISH_REPORTED_STATES)})]
EnglishState = Annotated[str, msgspec.Meta(extra_json_schema={"enum": list(REPORTED_STATES)})]
NewConsoleId = Annotated[str, msgspec.Meta(extra_json_schema={"pattern": CONSOLE_ID_PATTERN})]
ConsoleName = Annotated[str, msgspec.Meta(extra_json_schema={"minLength": 1, "maxLength": MAX_NAME})]
CurrentJob = Annotated[str, msgspec.Meta(extra_json_schema={"maxLength": MAX_JOB})] | None
System = Annotated[
    dict[str, Any] | None,
    msgspec.Meta(
        description="system information (free-form; hostname is used for search)",
        extra_json_schema={"example": {"hostname": "worker-1", "platform": "linux", "arch": "x64", "cpus": 8}},
    ),
]
LastError = Annotated[
    str | dict[str, Any] | None, msgspec.Meta(description="the last error: a string, an object or null")
]


class HeartbeatES(msgspec.Struct):
    """The Spanish console API's heartbeat body."""

    estado: SpanishState
    sistema: System = None
    ultimaActividad: Timestamp = None
    ultimoError: LastError = None
    videoEnProceso: CurrentJob = None


class RegistrationES(msgspec.Struct):
    """The Spanish console API's registration body."""

    id: NewConsoleId
    nombre: ConsoleName
    estado: SpanishState = "esperando"
    sistema: System = None
    ultimaActividad: Timestamp = None


class HeartbeatEN(msgspec.Struct):
    """The English heartbeat body."""

    state: EnglishState
    system: System = None
    last_activity: Timestamp = None
    last_error: LastError = None
    current_job: CurrentJob = None


class RegistrationEN(msgspec.Struct):
    """The English registration body."""

    id: NewConsoleId
    name: ConsoleName
    state: EnglishState = "idle"
    system: System = None
    last_activity: Timestamp = None


@dataclass(slots=True)
class HeartbeatInput:
    """A validated heartbeat, in English, whatever dialect it came in."""

    state: str
    system_json: str | None
    hostname: str | None
    last_activity: float | None
    last_error_json: str | None
    current_job: str | None


@dataclass(slots=True)
class RegistrationInput:
    """A validated registration, in English."""

    id: str
    name: str
    state: str
    system_json: str | None
    hostname: str | None
    last_activity: float | None


_json_encoder = msgspec.json.Encoder()
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in (HeartbeatES, RegistrationES, HeartbeatEN, RegistrationEN)
}


def _check_state(value: str, spanish: bool, field: str) -> str:
    if spanish:
        english = SPANISH_TO_ENGLISH.get(value)
        if english is None or english == "inactive":
            raise InvalidField(
                field, f"`{field}` must be one of {', '.join(SPANISH_REPORTED_STATES)}; got {value[:64]!r}"
            )
        return english
    if value not in REPORTED_STATES or value == "inactive":
        raise InvalidField(field, f"`{field}` must be one of {', '.join(REPORTED_STATES)}; got {value[:64]!r}")
    return value


def _check_text(value: str | None, limit: int, field: str) -> str | None:
    """``value`` if it is at most ``limit`` characters and shows as it is on a terminal."""
    if value is None:
        return None
    if len(value) > limit:
        raise InvalidField(field, f"`{field}` is longer than {limit} characters")
    problem = printable_problem(value)
    if problem is not None:
        raise InvalidField(field, f"`{field}` {problem}")
    return value


def _system(system: dict[str, Any] | None, field: str) -> tuple[str | None, str | None]:
    """(the ``system`` object as JSON, its hostname); ``field`` is the object's name in the client's dialect."""
    if system is None:
        return None, None
    host = system.get("hostname")
    hostname = _check_text(str(host)[:MAX_HOST], MAX_HOST, f"{field}.hostname") if host is not None else None
    return _without_nul(_json_encoder.encode(system).decode(), field), hostname


def _error_json(value: str | dict[str, Any] | None, field: str) -> str | None:
    return None if value is None else _without_nul(_json_encoder.encode(value).decode(), field)


# U+0000 as the JSON encoder writes it: a backslash that is not itself escaped, then u0000.
_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def _without_nul(text: str, field: str) -> str:
    """``text`` (JSON) unless it holds U+0000: PostgreSQL's jsonb cannot store it, and the store would refuse the
    whole write batch it is in (every console in it answered 503). Refused on both stores, so they answer alike."""
    if "u0000" in text and _NUL.search(text):
        raise InvalidField(field, f"`{field}` may not hold the NUL character (U+0000)")
    return text


def _decode(kind: type, body: bytes) -> Any:
    """Decode or raise: msgspec.DecodeError for malformed JSON, InvalidField for a wrong type or a missing field."""
    try:
        return _DECODERS[kind].decode(body)
    except msgspec.ValidationError as exc:
        text = str(exc)
        m = re.search(r"at `\$\.?([^`\[]*)", text)
        field = m.group(1) if m and m.group(1) else ""
        missing = re.search(r"missing required field `([^`]+)`", text)
        if missing:
            field = missing.group(1)
        detail = text.split(" - at ")[0]
        allowed = _ALLOWED_TYPES.get(kind, {}).get(field.split(".")[0])
        hint = f" ({field.split('.')[0]} must be {allowed})" if allowed else ""
        raise InvalidField(field or "body", f"{detail}{' at `' + field + '`' if field else ''}{hint}") from None


_ALLOWED_TYPES: dict[type, dict[str, str]] = {
    HeartbeatES: {
        "estado": "one of " + ", ".join(SPANISH_REPORTED_STATES),
        "sistema": "an object or null",
        "ultimaActividad": "an ISO-8601 timestamp string or null",
        "ultimoError": "a string, an object or null",
        "videoEnProceso": "a string or null",
    },
    RegistrationES: {
        "id": "a string like a UUID",
        "nombre": "a string",
        "estado": "one of " + ", ".join(SPANISH_REPORTED_STATES),
        "sistema": "an object or null",
        "ultimaActividad": "an ISO-8601 timestamp string or null",
    },
    HeartbeatEN: {
        "state": "one of " + ", ".join(REPORTED_STATES),
        "system": "an object or null",
        "last_activity": "an ISO-8601 timestamp string or null",
        "last_error": "a string, an object or null",
        "current_job": "a string or null",
    },
    RegistrationEN: {
        "id": "a string like a UUID",
        "name": "a string",
        "state": "one of " + ", ".join(REPORTED_STATES),
        "system": "an object or null",
        "last_activity": "an ISO-8601 timestamp string or null",
    },
}


def decode_heartbeat(body: bytes, spanish: bool) -> HeartbeatInput:
    """Validate a heartbeat body of either dialect (raises msgspec.DecodeError or InvalidField)."""
    if spanish:
        es: HeartbeatES = _decode(HeartbeatES, body)
        system_json, host = _system(es.sistema, "sistema")
        return HeartbeatInput(
            _check_state(es.estado, True, "estado"),
            system_json,
            host,
            parse_timestamp(es.ultimaActividad, "ultimaActividad"),
            _error_json(es.ultimoError, "ultimoError"),
            _check_text(es.videoEnProceso, MAX_JOB, "videoEnProceso"),
        )
    en: HeartbeatEN = _decode(HeartbeatEN, body)
    system_json, host = _system(en.system, "system")
    return HeartbeatInput(
        _check_state(en.state, False, "state"),
        system_json,
        host,
        parse_timestamp(en.last_activity, "last_activity"),
        _error_json(en.last_error, "last_error"),
        _check_text(en.current_job, MAX_JOB, "current_job"),
    )


def decode_registration(body: bytes, spanish: bool) -> RegistrationInput:
    """Validate a registration body of either dialect (raises msgspec.DecodeError or InvalidField)."""
    if spanish:
        es: RegistrationES = _decode(RegistrationES, body)
        cid, name, state, system, last, names = (
            es.id,
            es.nombre,
            _check_state(es.estado, True, "estado"),
            es.sistema,
            parse_timestamp(es.ultimaActividad, "ultimaActividad"),
            ("id", "nombre", "sistema"),
        )
    else:
        en: RegistrationEN = _decode(RegistrationEN, body)
        cid, name, state, system, last, names = (
            en.id,
            en.name,
            _check_state(en.state, False, "state"),
            en.system,
            parse_timestamp(en.last_activity, "last_activity"),
            ("id", "name", "system"),
        )
    if not valid_console_id(cid):
        raise InvalidField(
            names[0], f"`{names[0]}` must be 1-128 letters, digits or . _ : - (a UUID v4 is usual); got {cid[:64]!r}"
        )
    if not name.strip(" \t\r\n"):
        raise InvalidField(names[1], f"`{names[1]}` must not be empty")
    _check_text(name, MAX_NAME, names[1])
    system_json, host = _system(system, names[2])
    return RegistrationInput(cid, name, state, system_json, host, last)


def decode_json_text(text: str | None) -> Any:
    """A JSON column back to a value (None stays None)."""
    return None if text is None else msgspec.json.decode(text)
