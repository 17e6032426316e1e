"""ConsoleEntry: what the ingest path knows about a console, kept in memory, and how batch copies of it merge."""

from __future__ import annotations

import msgspec.structs


class ConsoleEntry(msgspec.Struct, gc=False):
    """What the ingest path needs to know about a console, kept in memory.

    Not tracked by the garbage collector (its fields are strings and numbers: no cycle can pass through it).
    Every heartbeat puts a new copy of its console's entry in memory and frees the old one, so tracked entries
    would pile up in the young generation without raising its allocation count (one object made, one freed),
    and the collection that finally came would walk all of them: 15-26 ms pauses with 10,000 consoles sending.
    """

    id: str
    name: str
    state: str
    reported_state: str
    token_hash: str | None
    first_seen: float
    last_seen: float
    stored_heartbeats: int = 0  # rows in the heartbeats table (for the per-console retention limit)
    last_activity: float | None = None
    hostname: str | None = None

    def copy(self) -> ConsoleEntry:
        return msgspec.structs.replace(self)


def working_copy(
    work: dict[str, ConsoleEntry | None],
    entries: dict[str, ConsoleEntry],
    cid: str,
    origins: dict[str, ConsoleEntry | None] | None = None,
) -> ConsoleEntry | None:
    """The batch's own copy of console ``cid`` (made on first use), or None when it is unknown or removed;
    ``origins`` keeps what each copy was made from."""
    if cid in work:
        return work[cid]
    e = entries.get(cid)
    work[cid] = e2 = e.copy() if e is not None else None
    if origins is not None:
        origins[cid] = e
    return e2


def merge_newer(into: ConsoleEntry, new: ConsoleEntry, since: ConsoleEntry | None) -> None:
    """What a console reported in ``new`` (changed from ``since``) over ``into``, when ``new`` is not older: the
    store's rule for rows several nodes write (pg_store.py), so every node's memory ends as the row."""
    if new.last_seen < into.last_seen:
        return
    into.state, into.reported_state, into.last_seen = new.state, new.reported_state, new.last_seen
    if since is None or new.last_activity != since.last_activity:
        into.last_activity = new.last_activity
    if since is None or new.hostname != since.hostname:
        into.hostname = new.hostname
