"""The PostgreSQL console store's schema: its migrations, applied in order by pg_store.py at open."""

from __future__ import annotations

# Each entry moves the schema from version i to i+1 (recorded in console_schema). Never edit a released entry.
MIGRATIONS: tuple[str, ...] = (
    # 1: the Spanish API's table and indexes exactly as written, the product's columns, history and transitions.
    """
    CREATE TABLE consolas (
      id UUID PRIMARY KEY,
      nombre VARCHAR(255) NOT NULL,
      estado VARCHAR(50) NOT NULL,
      sistema JSONB,
      ultima_actividad TIMESTAMP WITH TIME ZONE,
      ultimo_error JSONB,
      video_en_proceso VARCHAR(500),
      created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),
      updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW()
    );
    CREATE INDEX idx_consolas_estado ON consolas(estado);
    CREATE INDEX idx_consolas_ultima_actividad ON consolas(ultima_actividad DESC);

    ALTER TABLE consolas
      ADD COLUMN console_id TEXT COLLATE "C" NOT NULL,
      ADD COLUMN reported_state TEXT NOT NULL,
      ADD COLUMN hostname TEXT,
      ADD COLUMN token_hash TEXT,
      ADD COLUMN last_seen TIMESTAMP WITH TIME ZONE NOT NULL,
      ADD COLUMN heartbeats BIGINT NOT NULL DEFAULT 0,
      ADD CONSTRAINT consolas_console_id_key UNIQUE (console_id),
      ADD CONSTRAINT consolas_estado_check
        CHECK (estado IN ('activa', 'ocupada', 'esperando', 'error', 'inactiva'));
    -- Room in each page for a heartbeat's new row version: an update that changes no indexed column then
    -- stays on its page (HOT) and touches no index.
    ALTER TABLE consolas SET (fillfactor = 70);
    CREATE INDEX idx_consolas_estado_nombre ON consolas(estado, (nombre COLLATE "C"), console_id);
    CREATE INDEX idx_consolas_nombre ON consolas((nombre COLLATE "C"), console_id);
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    -- Search folds case with ICU's root locale, whatever the database's own locale (C lowers ASCII only).
    CREATE INDEX idx_consolas_search ON consolas USING gin (
      lower(nombre COLLATE "und-x-icu") gin_trgm_ops, lower(coalesce(hostname, '') COLLATE "und-x-icu") gin_trgm_ops
    );

    -- The API's English state as the Spanish console API's estado word.
    CREATE FUNCTION consolas_estado(state TEXT) RETURNS VARCHAR(50) LANGUAGE sql IMMUTABLE STRICT AS $$
      SELECT CASE state WHEN 'active' THEN 'activa' WHEN 'busy' THEN 'ocupada' WHEN 'idle' THEN 'esperando'
        WHEN 'error' THEN 'error' WHEN 'inactive' THEN 'inactiva' END
    $$;
    -- The UUID kept in consolas.id for a console id: the id itself when it is a UUID, else one made from it.
    CREATE FUNCTION consolas_uuid(console_id TEXT) RETURNS UUID LANGUAGE sql IMMUTABLE STRICT AS $$
      SELECT CASE WHEN console_id ~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
        THEN console_id::uuid ELSE md5('supervisor-tui console ' || console_id)::uuid END
    $$;

    CREATE TABLE console_heartbeats (
      id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      console_id TEXT COLLATE "C" NOT NULL REFERENCES consolas(console_id) ON DELETE CASCADE,
      received_at TIMESTAMP WITH TIME ZONE NOT NULL,
      state TEXT NOT NULL,
      last_activity TIMESTAMP WITH TIME ZONE,
      last_error JSONB,
      current_job VARCHAR(500),
      system JSONB
    );
    CREATE INDEX idx_console_heartbeats_console ON console_heartbeats(console_id, received_at);
    -- Retention finds old heartbeats by time: a BRIN index costs next to nothing per insert.
    CREATE INDEX idx_console_heartbeats_received ON console_heartbeats USING brin (received_at);

    CREATE TABLE console_transitions (
      id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      console_id TEXT COLLATE "C" NOT NULL REFERENCES consolas(console_id) ON DELETE CASCADE,
      from_state TEXT,
      to_state TEXT NOT NULL,
      at TIMESTAMP WITH TIME ZONE NOT NULL,
      reason TEXT NOT NULL CHECK (reason IN ('heartbeat', 'timeout', 'register'))
    );
    CREATE INDEX idx_console_transitions_console ON console_transitions(console_id, at);
    CREATE INDEX idx_console_transitions_at ON console_transitions(at);
    """,
    # 2: no trigram index. Searches are answered from the supervisor's memory (consoles/search.py) and no query
    # reads idx_consolas_search, while every heartbeat that cannot stay on its page (HOT: most change
    # ultima_actividad, which seed 004's index holds) added its row's trigrams to it. pg_trgm stays: the
    # operator's own queries may use it, and an extension is the database's, not this table's.
    """
    DROP INDEX idx_consolas_search;
    """,
    # 3: no foreign key from heartbeats to consolas. Its check ran a query per heartbeat row and locked the
    # console's row (a WAL record each: 6 % of the heartbeat path's WAL, a fifth of its statement's time) to
    # make sure of what the statement already knows: a heartbeat row is written only with its console's update,
    # for the consoles that update found (pg_statements.py). A removal deletes the console's heartbeats itself.
    """
    ALTER TABLE console_heartbeats DROP CONSTRAINT console_heartbeats_console_id_fkey;
    """,
    # 4: estado_anterior, the estado the row's last update found (equal to estado when that update did not change
    # it). A heartbeat's UPDATE sets it under the row's lock, from the row as committed by any node, so its
    # RETURNING tells the state change the database made: a heartbeat batch records that transition, not one
    # planned from a node's memory, which another node's change of the console may not have reached yet
    # (pg_statements.py). consolas_state is consolas_estado the other way, for the transitions' English words.
    """
    ALTER TABLE consolas ADD COLUMN estado_anterior VARCHAR(50);
    CREATE FUNCTION consolas_state(estado TEXT) RETURNS TEXT LANGUAGE sql IMMUTABLE STRICT AS $$
      SELECT CASE estado WHEN 'activa' THEN 'active' WHEN 'ocupada' THEN 'busy' WHEN 'esperando' THEN 'idle'
        WHEN 'error' THEN 'error' WHEN 'inactiva' THEN 'inactive' END
    $$;
    """,
    # 5: the state-word and UUID functions no longer STRICT, so that the planner inlines them (their bodies give NULL
    # for NULL just the same). PostgreSQL inlines a STRICT SQL function only when its body is strict itself, and a
    # CASE is not: each call ran the body as a query of its own (an executor started and ended), once per console
    # in every heartbeat batch's statement. Inlined, the server's sessions spend 3-8 % less CPU per heartbeat.
    """
    ALTER FUNCTION consolas_estado(TEXT) CALLED ON NULL INPUT;
    ALTER FUNCTION consolas_state(TEXT) CALLED ON NULL INPUT;
    ALTER FUNCTION consolas_uuid(TEXT) CALLED ON NULL INPUT;
    """,
    # 6: ultima_actividad is when the console was last heard from (its last heartbeat or registration, as
    # last_seen), and what the console reports as its last activity moves to reported_activity (the API's
    # last_activity). Seed 004's query for the consoles that sent no heartbeat in 10 minutes reads
    # ultima_actividad: with what consoles report there, it listed a console that kept sending heartbeats while
    # idle (the agent reports its last change of state) and never one that reports no activity (NULL).
    """
    ALTER TABLE consolas ADD COLUMN reported_activity TIMESTAMP WITH TIME ZONE;
    UPDATE consolas SET reported_activity = ultima_actividad, ultima_actividad = last_seen;
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
