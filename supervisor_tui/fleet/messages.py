"""Seed 000's three messages and the node presence record, as typed msgspec models shared by every part.

A protocol plugin publishes (``port`` is ``process.env.PORT || 3010``: a numeric string or a number)::

    plugin:registered    {"key", "name", "version", "port", "endpoints", "timestamp"}
    plugin:heartbeat     {"key", "timestamp", "status": "alive"}
    plugin:unregistered  {"key", "timestamp"}

A supervisor adds ``url`` (where other nodes reach the plugin) and ``node`` to what it publishes; a message may
also carry ``host``. Unknown fields are allowed (a newer client may send more); wrong types are refused.
"""

from __future__ import annotations

from typing import Any

import msgspec

REGISTERED = "plugin:registered"
HEARTBEAT = "plugin:heartbeat"
UNREGISTERED = "plugin:unregistered"
CHANNELS = (REGISTERED, HEARTBEAT, UNREGISTERED)

MAX_MESSAGE_BYTES = 64 * 1024  # a registration with hundreds of endpoints fits; a 1 MB message is refused unread

Timestamp = int | float  # the protocol's plugins send Date.now(): milliseconds since the epoch


class Registered(msgspec.Struct, omit_defaults=True):
    """plugin:registered: a plugin announces where it listens and which endpoints it serves."""

    key: str
    name: str = ""
    version: str = ""
    port: int | str | None = None
    endpoints: list[dict[str, Any]] = msgspec.field(default_factory=list)
    timestamp: Timestamp | None = None
    host: str | None = None
    url: str | None = None
    node: str | None = None


class Heartbeat(msgspec.Struct):
    """plugin:heartbeat: the plugin is alive (``status`` is always sent, as the protocol's plugins do)."""

    key: str
    timestamp: Timestamp | None = None
    status: str = "alive"
    node: str | None = None


class Unregistered(msgspec.Struct, omit_defaults=True):
    """plugin:unregistered: the plugin stopped; its routes go."""

    key: str
    timestamp: Timestamp | None = None
    node: str | None = None


class Presence(msgspec.Struct):
    """One node's record in Redis (key ``fleet:node:<node>``, expiring by itself)."""

    node: str
    advertise_url: str
    version: str
    started_at: float
    last_seen: float
    plugins: dict[str, int] = msgspec.field(default_factory=dict)  # counts by state
    consoles: dict[str, int] = msgspec.field(default_factory=dict)  # counts by state


Message = Registered | Heartbeat | Unregistered

MODELS: dict[str, type[Registered] | type[Heartbeat] | type[Unregistered]] = {
    REGISTERED: Registered,
    HEARTBEAT: Heartbeat,
    UNREGISTERED: Unregistered,
}
DECODERS = {channel: msgspec.json.Decoder(model) for channel, model in MODELS.items()}
PRESENCE_DECODER = msgspec.json.Decoder(Presence)
ENCODER = msgspec.json.Encoder()


class MalformedMessage(ValueError):
    """A message that is not one of the protocol's; ``reason`` is the metric label, the text the log line."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


def decode(channel: str, data: bytes) -> Message:
    """The typed message of ``channel``; raises MalformedMessage naming why it is not one."""
    decoder = DECODERS.get(channel)
    if decoder is None:
        raise MalformedMessage("unknown_channel", f"message on unknown channel {channel!r}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage("too_large", f"{len(data)} bytes, more than {MAX_MESSAGE_BYTES}")
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        text = str(exc)
        reason = "no_key" if "missing required field `key`" in text else "wrong_type"
        raise MalformedMessage(reason, text) from None
    except msgspec.DecodeError as exc:
        # A JSON value that is not an object (a number, a list) is a DecodeError's "Expected `object`" here
        raise MalformedMessage("not_json", f"not a JSON object: {exc}") from None


def port_number(port: int | str | None) -> int | None:
    """Seed 000's port: a number, or the numeric string ``process.env.PORT`` gives; None when it is neither."""
    if isinstance(port, bool):
        return None
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.strip().isdigit() and port.strip().isascii():
        return int(port.strip())
    return None
