"""The PostgreSQL console store's write statements: the same rows as SQLite's (sqlite_store.SQLITE_SQL) merged by
recency, and a batch of the heartbeat path's steps as one statement of data-modifying CTEs (pg_store.py runs them)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from supervisor_tui.consoles.console_store import ConsoleSQL, Step
from supervisor_tui.consoles.pg_events import CHANNEL, MAX_PAYLOAD, NOTIFY_SQL, payload_head


def _pg(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's $1, $2, ... in order."""
    count = 0

    def number(_: re.Match[str]) -> str:
        nonlocal count
        count += 1
        return f"${count}"

    return re.sub(r"\?", number, sql)


def _ts(placeholder: str = "?") -> str:
    return f"to_timestamp({placeholder})"


# The same rows as SQLite's statements (sqlite_store.SQLITE_SQL), value for value, but merged into the row rather
# than written over it: several nodes write the same consoles, and a batch that took a while (a slow COMMIT, a
# busy pool) may commit after another node's newer heartbeat or registration. What a console reports (state,
# activity, host, system, error, job, last seen) is written only by a change at least as recent as the row's
# last_seen; the heartbeat count always adds up; name and token (a registration's own) are the last committed.
def _fresh(column: str, value: str, seen: str) -> str:
    """``column = value`` when the change seen at ``seen`` is not older than the row, else the row's own."""
    return f"{column} = CASE WHEN consolas.last_seen <= {seen} THEN {value} ELSE consolas.{column} END"


# Seed 004's ultima_actividad is when the console was last heard from (schema version 6), kept to the minute: a
# heartbeat writes it when it moves by HEARD_FROM_STEP seconds or more, so it is never that much behind last_seen.
# Written at every heartbeat, its index (seed 004's idx_consolas_ultima_actividad) made every update of the row a
# new version in every index of the table (no HOT update): 1.7 times the WAL per heartbeat, 9 % of the rate. The
# seed's query for the consoles silent for 10 minutes is then right but for a console heard from 9-10 minutes ago.
HEARD_FROM_STEP = 60


def _heard_from(seen: str) -> str:
    return (
        f"ultima_actividad = CASE WHEN consolas.ultima_actividad IS NULL OR {seen} >= consolas.ultima_actividad "
        f"+ interval '{HEARD_FROM_STEP} seconds' THEN GREATEST(consolas.last_seen, {seen}) "
        "ELSE consolas.ultima_actividad END"
    )


def _heartbeat_set(state: str | None, activity: str | None, host: str | None, v: dict[str, str]) -> str:
    seen = f"to_timestamp({v['seen']})"
    # The estado this update found (the latest committed: READ COMMITTED reads the row again after waiting for
    # another node's update of it), so its RETURNING tells the state change the database made (schema version 4).
    sets = ["estado_anterior = consolas.estado"]
    if state is not None:
        sets += [_fresh("estado", f"consolas_estado({state})", seen), _fresh("reported_state", v["state"], seen)]
    if activity is not None:
        sets.append(_fresh("reported_activity", f"to_timestamp({activity})", seen))
    if host is not None:
        sets.append(_fresh("hostname", host, seen))
    sets += [
        _fresh("sistema", f"COALESCE({v['sys']}::jsonb, consolas.sistema)", seen),
        _fresh("ultimo_error", f"{v['err']}::jsonb", seen),
        _fresh("video_en_proceso", v["job"], seen),
        f"last_seen = GREATEST(consolas.last_seen, {seen})",
        _heard_from(seen),
        "updated_at = now()",
        f"heartbeats = consolas.heartbeats + {v['n']}",
    ]
    return ", ".join(sets)


def _update_from_heartbeat(kind: tuple[bool, bool, bool]) -> str:
    state, activity, host = kind
    names = (["estado_state", "state"] if state else []) + (["activity"] if activity else [])
    names += (["host"] if host else []) + ["sys", "err", "job", "seen", "n", "cid"]
    v = {name: f"${i + 1}" for i, name in enumerate(names)}
    sets = _heartbeat_set(
        v["estado_state"] if state else None, v["activity"] if activity else None, v["host"] if host else None, v
    )
    return f"UPDATE consolas SET {sets} WHERE console_id = {v['cid']}"


_REGISTRATION_SEEN = "to_timestamp($8)"
PG_SQL = ConsoleSQL(
    # Only for a console that is there (no foreign key: schema version 3), its row locked until COMMIT as the
    # key's check locked it, so a removal committing meanwhile cannot leave the row behind (a removal deletes
    # the console's heartbeats after its row: delete_heartbeats).
    insert_heartbeat=(
        "INSERT INTO console_heartbeats (console_id, received_at, state, last_activity, last_error, current_job, "
        "system) SELECT $1, to_timestamp($2), $3, to_timestamp($4), $5::jsonb, $6, $7::jsonb "
        "WHERE EXISTS (SELECT 1 FROM consolas WHERE console_id = $1 FOR KEY SHARE)"
    ),
    update_from_heartbeat={
        (state, activity, host): _update_from_heartbeat((state, activity, host))
        for state in (False, True)
        for activity in (False, True)
        for host in (False, True)
    },
    update_timeout="UPDATE consolas SET estado = 'inactiva', updated_at = now() WHERE console_id = $1",
    # After the console's own statement in the transaction (its update or insert, which locked the row or found
    # it removed by another node): a console removed meanwhile gets no transition, and its batch does not fail.
    insert_transition=(
        "INSERT INTO console_transitions (console_id, from_state, to_state, at, reason) "
        "SELECT $1, $2, $3, to_timestamp($4), $5 WHERE EXISTS (SELECT 1 FROM consolas WHERE console_id = $1)"
    ),
    insert_console=(
        "INSERT INTO consolas (id, console_id, nombre, estado, reported_state, sistema, hostname, reported_activity, "
        "ultimo_error, video_en_proceso, token_hash, created_at, last_seen, ultima_actividad, updated_at, heartbeats) "
        "VALUES (consolas_uuid($1), $1, $2, consolas_estado($3), $4, $5::jsonb, $6, to_timestamp($7), NULL, NULL, "
        "$8, to_timestamp($9), to_timestamp($10), to_timestamp($10), now(), 0)"
    ),
    # Records the state change it made (reason register, with the estado it found under the row's lock, as a
    # heartbeat's update does) and returns it as pg_events' "state" change (no row when none): pg_store.run_steps.
    update_registration=(
        "WITH u AS (UPDATE consolas SET nombre = $1, token_hash = $7, estado_anterior = consolas.estado, "
        + ", ".join(
            _fresh(column, value, _REGISTRATION_SEEN)
            for column, value in (
                ("estado", "consolas_estado($2)"),
                ("reported_state", "$3"),
                ("sistema", "COALESCE($4::jsonb, consolas.sistema)"),
                ("hostname", "COALESCE($5, consolas.hostname)"),
                ("reported_activity", "COALESCE(to_timestamp($6), consolas.reported_activity)"),
                ("ultimo_error", "NULL"),
                ("video_en_proceso", "NULL"),
            )
        )
        + f", last_seen = GREATEST(consolas.last_seen, {_REGISTRATION_SEEN}), "
        f"ultima_actividad = GREATEST(consolas.last_seen, {_REGISTRATION_SEEN}), updated_at = now() "
        "WHERE console_id = $9 RETURNING console_id, estado_anterior, estado), "
        "m(c, f, t) AS (SELECT console_id, consolas_state(estado_anterior), consolas_state(estado) FROM u "
        "WHERE estado_anterior <> estado), "
        "mt AS (INSERT INTO console_transitions (console_id, from_state, to_state, at, reason) "
        f"SELECT c, f, t, {_REGISTRATION_SEEN}, 'register' FROM m) "
        "SELECT json_build_array('state', c, f, t, 'register', $8::float8)::text FROM m"
    ),
    delete_console="DELETE FROM consolas WHERE console_id = $1",
    # A statement of its own after delete_console, which waited for any batch holding the console's row: its
    # snapshot, taken then, sees the heartbeats such a batch committed.
    delete_heartbeats="DELETE FROM console_heartbeats WHERE console_id = $1",
    state_transitions="-- state transitions",
)


# -- the heartbeat path as one statement -----------------------------------------------------------------------
# A batch of heartbeats is an INSERT of history rows, an UPDATE per kind of console row change, transitions and
# NOTIFYs: as executemany steps in a transaction that is a round trip each (and BEGIN, COMMIT), as one statement
# of data-modifying CTEs it is one. Each step's rows are one parameter, a JSON array of rows (msgspec encodes it
# in one call; the system and error objects go in as they are, not as strings to parse again), which the
# statement reads with jsonb_array_elements: an array parameter per column cost the supervisor's event loop
# about four times as much per batch (asyncpg checks every element of an array). Each entry: the statement's
# form ({a} for the rows as a subquery) and the PostgreSQL types of its row values.
def _update_array_form(kind: tuple[bool, bool, bool]) -> tuple[str, tuple[str, ...]]:
    state, activity, host = kind
    # The row carries the state twice (for estado and reported_state), as update_from_heartbeat takes it.
    names = (("estado_state", "state") if state else ()) + (("activity",) if activity else ())
    names += (("host",) if host else ()) + ("sys", "err", "job", "seen", "n", "cid")
    types = (("text", "text") if state else ()) + (("float8",) if activity else ()) + (("text",) if host else ())
    types += ("jsonb", "jsonb", "text", "float8", "int8", "text")
    v = {name: f"u.{name}" for name in names}
    sets = _heartbeat_set("u.estado_state" if state else None, "u.activity" if activity else None,
                          "u.host" if host else None, v)  # fmt: skip
    return (
        f"UPDATE consolas SET {sets} FROM {{a}} AS u({', '.join(names)}) WHERE consolas.console_id = u.cid "
        "RETURNING consolas.console_id, consolas.estado_anterior, consolas.estado, u.seen",
        types,
    )


_ARRAY_FORMS: dict[str, tuple[str, tuple[str, ...]]] = {
    PG_SQL.insert_heartbeat: (
        "INSERT INTO console_heartbeats (console_id, received_at, state, last_activity, last_error, current_job, "
        "system) SELECT c, to_timestamp(r), s, to_timestamp(a), e, j, y "
        "FROM {a} AS h(c, r, s, a, e, j, y)",
        ("text", "float8", "text", "float8", "jsonb", "text", "jsonb"),
    ),
    PG_SQL.insert_transition: (
        "INSERT INTO console_transitions (console_id, from_state, to_state, at, reason) "
        "SELECT c, f, t, to_timestamp(a), r FROM {a} AS x(c, f, t, a, r)",
        ("text", "text", "text", "float8", "text"),
    ),
    **{sql: _update_array_form(kind) for kind, sql in PG_SQL.update_from_heartbeat.items()},
}


_UPDATES = frozenset(PG_SQL.update_from_heartbeat.values())
# Written only for the consoles the statement's updates found (one_statement adds the WHERE on this column):
# their rows stay locked until COMMIT, so a removal through another node either committed before (the update
# found no row: nothing is written for it, and the batch does not fail) or waits, then deletes them too.
_GUARDED = {PG_SQL.insert_heartbeat: "h.c", PG_SQL.insert_transition: "x.c"}


_json = msgspec.json.Encoder()


def _value(i: int, pg_type: str) -> str:
    """Element ``i`` of a row ``r`` of the JSON document as a value of ``pg_type`` (JSON null: SQL NULL)."""
    if pg_type == "jsonb":
        return f"NULLIF(r->{i}, 'null')"
    return f"r->>{i}" if pg_type == "text" else f"(r->>{i})::{pg_type}"


def _document(rows: list[tuple[Any, ...]], types: tuple[str, ...]) -> str:
    """``rows`` as one JSON array of arrays; the JSON texts of jsonb values go in as JSON, not as strings."""
    objects = [i for i, t in enumerate(types) if t == "jsonb"]
    if not objects:
        return _json.encode(rows).decode()
    out: list[list[Any]] = []
    for row in rows:
        values = list(row)
        for i in objects:
            if values[i] is not None:
                values[i] = msgspec.Raw(values[i])
        out.append(values)
    return _json.encode(out).decode()


def _moved(updated: list[str]) -> list[str]:
    """CTEs of the state changes the statement's updates made (m), recorded as transitions (reason heartbeat, at
    the batch's latest heartbeat of the console, states in English), and as pg_events' "state" changes (mx: the
    change's JSON text, and where it starts in the text of them all, its comma counted)."""
    moved = " UNION ALL ".join(
        f"SELECT console_id, consolas_state(estado_anterior), consolas_state(estado), seen FROM {name} "
        "WHERE estado_anterior <> estado"
        for name in updated
    )
    return [
        f"m(c, f, t, a) AS ({moved})",
        "mt AS (INSERT INTO console_transitions (console_id, from_state, to_state, at, reason) "
        "SELECT c, f, t, to_timestamp(a), 'heartbeat' FROM m)",
        "mx AS (SELECT x, sum(octet_length(x) + 1) OVER (ORDER BY i) - octet_length(x) - 1 AS start "
        "FROM (SELECT json_build_array('state', c, f, t, 'heartbeat', a)::text, row_number() OVER () FROM m) "
        "AS s(x, i))",
    ]


# A "state" change's JSON text is at most this long (a console id is 128 ASCII characters at most): the changes
# that start within the first MAX_PAYLOAD - head - 2 - _LONGEST_CHANGE bytes of a payload's list fit in it.
_LONGEST_CHANGE = 400


def one_statement(steps: list[Step], after: list[str] | None = None, tell: bool = True) -> tuple[Any, ...] | None:
    """``steps`` as (sql, *parameters) of one statement, or None when they are not only the heartbeat
    path's statements, each at most once (a statement twice may touch one row twice: not in one statement).

    Its one row: how many NOTIFYs it sent, the state changes its heartbeat updates made (a JSON list of pg_events'
    "state" changes, NULL for none) when ``steps`` has the state_transitions step, and whether it sent
    ``after`` (the payloads meant for after COMMIT). When there are such changes it tells them to the other nodes
    (unless not ``tell``), after ``after``: the other nodes take the consoles' new state from those."""
    ctes: list[str] = []
    args: list[Any] = []
    notify: list[str] | None = None
    node: str | None = None
    seen: set[str] = set()
    guarded: list[str] = []  # history rows, after the updates (a CTE reads only those before it)
    updated: list[str] = []  # the updates' CTEs
    for kind, what, rows in steps:
        sql = what[1] if kind == "history" else what
        if kind not in ("many", "history") or sql in seen:
            return None
        seen.add(sql)
        if sql == NOTIFY_SQL:
            notify = [row[0] for row in rows]
            continue
        if sql == PG_SQL.state_transitions:
            node = rows[0][0]
            continue
        form = _ARRAY_FORMS.get(sql)
        if form is None:
            return None
        template, types = form
        args.append(_document(rows, types))
        values = ", ".join(_value(i, t) for i, t in enumerate(types))
        cte = template.format(a=f"(SELECT {values} FROM jsonb_array_elements(${len(args)}::jsonb) AS d(r))")
        if sql in _GUARDED:
            guarded.append(f"{cte} WHERE {_GUARDED[sql]} IN ({{found}})")
            continue
        if sql in _UPDATES:
            updated.append(f"w{len(ctes)}")
        ctes.append(f"w{len(ctes)} AS ({cte})")
    if guarded and not updated:
        return None
    found = " UNION ALL ".join(f"SELECT console_id FROM {name}" for name in updated)
    ctes += [f"w{len(ctes) + i} AS ({cte.format(found=found)})" for i, cte in enumerate(guarded)]
    moved = node is not None and bool(updated)
    told: list[str] = []  # the NOTIFY payloads' queries, in the order they are sent
    if notify is not None:
        args.append(notify)
        told.append(f"SELECT p FROM unnest(${len(args)}::text[]) AS n(p)")
    sent = "false"
    if moved:
        assert node is not None
        ctes += _moved(updated)
        if tell:
            if after:
                args.append(after)
                told.append(f"SELECT p FROM unnest(${len(args)}::text[]) AS n(p) WHERE EXISTS (SELECT 1 FROM m)")
                sent = "EXISTS (SELECT 1 FROM m)"
            head = payload_head(node)
            args.append(head)
            limit = MAX_PAYLOAD - len(head.encode()) - 2 - _LONGEST_CHANGE
            told.append(
                f"SELECT ${len(args)} || string_agg(x, ',' ORDER BY start) || ']}}' FROM mx GROUP BY start / {limit}"
            )
    notified = f"(SELECT count(pg_notify('{CHANNEL}', p)) FROM ({' UNION ALL '.join(told)}) AS q(p))" if told else "0"
    changes = "(SELECT '[' || string_agg(x, ',' ORDER BY start) || ']' FROM mx)" if moved else "NULL"
    final = f"SELECT {notified}, {changes}, {sent}"
    if not ctes:
        return None if notify is None else (final, *args)
    return (f"WITH {', '.join(ctes)} {final}", *args)
