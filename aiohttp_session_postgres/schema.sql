-- aiohttp-session-postgres: the sessions table, its indexes, and the change notifications that
-- keep the optional in-process cache coherent across processes.
--
-- The names of the table, its schema, indexes, trigger function, triggers and notification
-- channel are filled in by schema_sql() (defaults: table "sessions" in schema "public"). Print
-- it ready to run with
--     python -m aiohttp_session_postgres schema [--table NAME] [--schema NAME] | psql "$DATABASE_URL"
--
-- Every statement creates only what is missing or replaces a function or trigger in place, so
-- running it again on an up-to-date database changes nothing. create_schema() runs it under an
-- advisory lock, and only when the table's comment does not already name this version.
--
-- A statement that begins with CREATE INDEX CONCURRENTLY cannot run inside a transaction block:
-- psql runs each statement on its own (do not give it --single-transaction); create_schema()
-- runs it after its transaction; the Alembic revisions run it in an autocommit block.
--
-- Upgrading a table made by an earlier version (schema version 1) while processes of the earlier
-- release still serve from it: every change below keeps their statements working and takes no
-- lock for longer than a catalog change, nor rewrites or scans the table under one (a nullable
-- column without a default, a CHECK added NOT VALID, an index built concurrently).

-- A logged (ordinary) table: an UNLOGGED one is emptied by crash recovery, logging everyone out.
CREATE TABLE IF NOT EXISTS {table} (
    -- SHA-256 of the token in the cookie. The token itself is never stored, so a leaked table
    -- yields no cookie that works.
    id_hash bytea PRIMARY KEY CHECK (octet_length(id_hash) = 32),
    -- The session's user when an int (session["user_id"], or the storage's user_id_key),
    -- mirrored so that a user's sessions can be listed, ended and capped. No foreign key: add one
    -- to your own users table (ON DELETE CASCADE) if deleting a user should end their sessions.
    user_id bigint,
    -- The session's user when a str (a UUID as its string, a username): the principal name.
    -- 1 to 255 bytes of UTF-8; a row has a user_id or a principal, never both (the CHECK
    -- below). Compared exactly: the library never folds case, and 7 and '7' are two users.
    principal text,
    -- AES-GCM: a 12-byte nonce, then ciphertext and tag; id_hash is the associated data.
    data bytea NOT NULL,
    -- Bumped by every change of data: optimistic saves compare it, notifications carry it.
    version bigint NOT NULL DEFAULT 1,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    idle_expires_at timestamptz NOT NULL,
    absolute_expires_at timestamptz NOT NULL,
    -- What the sessions page shows: the client address and User-Agent of the last touch.
    client_ip text NOT NULL DEFAULT '',
    user_agent text NOT NULL DEFAULT '',
    -- Set when a login or renew_session used this session's cookie: the row is then a
    -- tombstone (expired, no data), kept a little while so that the same cookie cannot start a
    -- second session (a double-submitted login form, two concurrent renewals).
    replaced_at timestamptz,
    -- A session's own lifetime, when its handler set session.max_age (NULL, as in rows written
    -- before these columns: the storage's). idle_timeout: seconds without a request that end it
    -- (a remembered session's); browser_session: true when its cookie has no Max-Age.
    idle_timeout integer,
    browser_session boolean,
    -- So the idle deadline alone decides expiry, and one index serves the sweeper.
    CHECK (idle_expires_at <= absolute_expires_at),
    CONSTRAINT {principal_check} CHECK ({principal_rule})
){partition_clause};
{partitions}
-- Brings a table made by an earlier layout up to date.
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS replaced_at timestamptz;
-- Schema 2: nullable, no default, no constraint: adding them rewrites and scans nothing, and
-- processes of schema 1 keep working beside them (they never name these columns).
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS idle_timeout integer;
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS browser_session boolean;

-- Schema version 2 (str users), on a table from before it: a nullable column without a default
-- (a change of the catalog alone: no rewrite), and its CHECK added NOT VALID (no scan of the
-- rows under the ALTER's exclusive lock; every row written from here on is checked, and the rows
-- from before have no principal).
ALTER TABLE {table} ADD COLUMN IF NOT EXISTS principal text;
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT FROM pg_constraint WHERE conrelid = '{table}'::regclass AND conname = {principal_check_name}
    ) THEN
        ALTER TABLE {table} ADD CONSTRAINT {principal_check} CHECK ({principal_rule}) NOT VALID;
    END IF;
END
$$;

-- The sweeper's scan, oldest deadline first.
CREATE INDEX IF NOT EXISTS {idle_index} ON {table} (idle_expires_at);

-- Listing, ending and capping one int user's sessions (a str user's: the last statement).
CREATE INDEX IF NOT EXISTS {user_index} ON {table} (user_id) WHERE user_id IS NOT NULL;

{notifications}
{partition_triggers}
COMMENT ON TABLE {table} IS {version_comment};
{outside_transaction}
-- Listing, ending and capping one str user's sessions. Built CONCURRENTLY (writes go on while it
-- scans a table that has rows), except on a partitioned table, where PostgreSQL cannot build one
-- so. CONCURRENTLY cannot run inside a transaction block: hence last.
CREATE INDEX {concurrently}IF NOT EXISTS {principal_index} ON {table} (principal) WHERE principal IS NOT NULL;
