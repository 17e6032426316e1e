"""A shared store's fleet (pg_events.py): a batch's changes as the other nodes apply them, and merging what
another node committed into this node's memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supervisor_tui.consoles.console_entry import ConsoleEntry, merge_newer, working_copy
from supervisor_tui.consoles.pg_events import Change
from supervisor_tui.core.events import ConsoleRegistered, ConsoleRemoved, ConsoleStateChanged

# Memory after a batch: console id -> its new entry, None when removed.
Work = dict[str, ConsoleEntry | None]


def changes_of(events: list[Any], work: Work, beats_of: dict[str, int]) -> list[Change]:
    """A batch's committed changes as the other nodes of a shared store apply them (pg_events.py)."""
    out: list[Change] = []
    for event in events:
        if isinstance(event, ConsoleRegistered):
            e = work.get(event.console_id)
            if e is not None:
                out.append(
                    ["reg", e.id, e.name, e.state, e.token_hash, e.first_seen, e.last_seen, e.last_activity, e.hostname]
                )
        elif isinstance(event, ConsoleStateChanged):
            out.append(["state", event.console_id, event.from_state, event.to_state, event.reason, event.at])
        elif isinstance(event, ConsoleRemoved):
            out.append(["rm", event.console_id])
    for cid, count in beats_of.items():
        e = work.get(cid)
        if e is not None:
            out.append(["hb", cid, e.state, e.last_seen, e.last_activity, e.hostname, count])
    return out


def merged(
    entries: dict[str, ConsoleEntry], work: Work, origins: dict[str, ConsoleEntry | None], registered: set[str]
) -> Work:
    """A committed batch's copies (``work``) merged into what memory (``entries``) holds now: another node's change
    may have been applied while the batch was in flight, and the older copy must not be written over it."""
    out: Work = {}
    for cid, new in work.items():
        now = entries.get(cid)
        since = origins.get(cid)
        if now is since or new is None:
            out[cid] = new  # unchanged meanwhile, or removed by this batch
        elif now is None:
            # Removed by another node after this batch committed (or this batch registered it anew).
            out[cid] = new if since is None else None
        else:
            e = now.copy()
            if cid in registered:
                e.name, e.token_hash, e.first_seen = new.name, new.token_hash, min(e.first_seen, new.first_seen)
            e.stored_heartbeats += new.stored_heartbeats - (since.stored_heartbeats if since is not None else 0)
            merge_newer(e, new, since)
            out[cid] = e
    return out


def fold_remote(
    changes: list[Change],
    entries: dict[str, ConsoleEntry],
    apply: Callable[[Work], None],
    flipped: Callable[[str, str, float], None],
) -> tuple[list[Any], int, tuple[str, ...]]:
    """Another node's committed ``changes`` into memory: ``apply`` makes them visible (the changes before a
    timeout first, then ``flipped`` for the timeout itself). Returns the events to publish (marked remote), and
    how many heartbeats of which consoles. A change this version does not know is skipped."""
    work: Work = {}
    events: list[Any] = []
    beats = 0
    beat_ids: dict[str, None] = {}
    for change in changes:
        try:
            kind, cid = change[0], str(change[1])
            if kind == "reg":
                _, _, name, state, token_hash, first, last, activity, host = change
                old = working_copy(work, entries, cid)
                new = ConsoleEntry(cid, name, state, state, token_hash, first, last, 0, activity, host)
                if old is None:
                    work[cid] = new
                else:
                    old.name, old.token_hash, old.first_seen = name, token_hash, min(old.first_seen, first)
                    merge_newer(old, new, None)
                events.append(ConsoleRegistered(console_id=cid, name=name, state=state, remote=True))
            elif kind == "hb":
                _, _, state, last, activity, host, count = change
                e = working_copy(work, entries, cid)
                if e is None:
                    continue
                if last >= e.last_seen:  # an older heartbeat committed late changes only the count
                    e.state = e.reported_state = state
                    e.last_seen = last
                    if activity is not None:
                        e.last_activity = activity
                    if host is not None:
                        e.hostname = host
                e.stored_heartbeats += int(count)
                beats += int(count)
                beat_ids[cid] = None
            elif kind == "state":
                _, _, old_state, new_state, reason, at = change
                if reason == "timeout":
                    apply(work)
                    work = {}
                    flipped(cid, old_state, at)
                    continue
                events.append(
                    ConsoleStateChanged(
                        console_id=cid, from_state=old_state, to_state=new_state, reason=reason, at=at, remote=True
                    )
                )
            elif kind == "rm":
                work[cid] = None
                beat_ids.pop(cid, None)
                events.append(ConsoleRemoved(console_id=cid, remote=True))
        except (ValueError, TypeError, IndexError):
            continue
    apply(work)
    return events, beats, tuple(beat_ids)
