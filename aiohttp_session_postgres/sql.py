"""Every statement the store runs on its table, named for what it does (rows.py runs them; the
sweeper runs SWEEP_SQL).

Parameters are named (`$id_hash`) and keep one meaning in every statement; `Statement` numbers
them for PostgreSQL. A session's user is an int (`$user_id`, the user_id column) or a str
(`$principal`, the principal column; identity.py): a write sets both columns, one of them NULL,
and what names one user's sessions (`{owner}`) comes as a statement for each.
`{table}` is the quoted table; `{async_commit}` marks where a write that ends
nothing may skip waiting for the WAL flush (durable_writes=False). Expiry is always the database's
clock: `now()`, the transaction's start, for reads; `clock_timestamp()` for writes, which may have
waited on a row lock past a deadline.

On Citus (`Statements(..., citus=True)`) a few statements differ, each for a reason Citus gives,
all in `Statements` below: a modification may not call a VOLATILE function (`clock_timestamp()`,
`set_config()`, an advisory lock), FOR UPDATE may not span shards, and a DELETE may not name
rows by ctid. What they return is the same; rows.py adds what the table's triggers do on one
PostgreSQL (the notifications) and takes the per-user lock as a statement of its own.
"""

from __future__ import annotations

import re
from operator import itemgetter

# How long the row of a session whose cookie a login or renewal used stays as a tombstone, during
# which that cookie cannot start another session; the sweeper leaves it until then (seconds).
TOMBSTONE_SECONDS = 10.0


def live(clock: str = "now()", row: str = "") -> str:
    """The condition that a row is a live session at `clock` (an SQL expression), for the row
    named `row` (a table alias, or OLD in a trigger). The idle deadline never passes the absolute
    one (a CHECK constraint), so the first test decides; the second states the rule whole."""
    prefix = f"{row}." if row else ""
    return f"{prefix}idle_expires_at > {clock} AND {prefix}absolute_expires_at > {clock}"


LIVE = live()
LIVE_AT_WRITE = live("clock_timestamp()")


def epoch(column: str) -> str:
    """`column` (a timestamptz) as epoch seconds. Through UTC, which makes the expression
    IMMUTABLE (Citus allows no other in a RETURNING clause); the value is the same."""
    return f"extract(epoch FROM {column} AT TIME ZONE 'UTC')"


def idle_seconds(row: str = "") -> str:
    """The idle timeout (seconds) of the row named `row` (an alias, or "" for the table): its own
    `idle_timeout` (a remembered session's; NULL: the storage's $idle_timeout), never more than
    the storage's $remember_idle_timeout now, so that shortening that setting applies at the next
    touch. Rows written before the column existed have NULL: today's idle timeout."""
    prefix = f"{row}." if row else ""
    return f"least(coalesce({prefix}idle_timeout::float8, $idle_timeout::float8), $remember_idle_timeout::float8)"


def later(moment: str, seconds: str) -> str:
    """`moment + make_interval(secs => seconds)` (timestamptz), written through UTC so that the
    addition is IMMUTABLE: Citus refuses a STABLE function (timestamptz + interval is one) called
    with a column in an UPDATE, and inside COALESCE or CASE. The instant is the same."""
    return f"(({moment} AT TIME ZONE 'UTC') + make_interval(secs => {seconds})) AT TIME ZONE 'UTC'"


# A session's lifetime, as kept per row (NULL in rows written before these columns, and read as
# the storage's defaults): `idle_timeout` (seconds; NULL: the storage's idle timeout) and
# `browser_session` (true: the cookie has no Max-Age; NULL or false: a persistent cookie). Its
# absolute lifetime is absolute_expires_at - created_at, returned as `lifetime` (seconds).
LIFETIME_COLUMNS = """coalesce(browser_session, false) AS browser_session,
       round(extract(epoch FROM absolute_expires_at - created_at))::bigint AS lifetime"""

# What a statement that reads or writes one session returns of it, beside its data: a row of
# rows.Row, times as epoch seconds (the database's clock). A read also returns its `now()`, the
# database's clock, which rows.py measures every deadline against; a write's is its `last_seen`
# (the row's touch is the statement's now(): Citus refuses now() itself in a RETURNING clause).
ROW_COLUMNS = f"""version,
       {epoch("created_at")}::bigint AS created,
       {epoch("idle_expires_at")}::float8 AS idle_deadline,
       {epoch("absolute_expires_at")}::float8 AS absolute_deadline,
       {epoch("last_seen_at")}::float8 AS last_seen,
       {LIFETIME_COLUMNS}"""

# A read: the live row and, only when its last touch is older than the touch interval, slide its
# idle deadline (never past the absolute one) and note the client, in the same statement. Inside
# the interval the UPDATE matches no row, and so writes nothing. The UPDATE re-checks the row
# itself: if a login or renewal used the session up after `live` read it (this UPDATE then waited
# on its lock), it meets a tombstone and must not slide it back to life; and it checks expiry
# against the clock ({write_clock}). `s.id_hash = $id_hash` as well as the join: a constant lets a
# partitioned table be pruned to one partition when the statement is planned.
LOAD_AND_TOUCH_SQL = f"""
WITH live AS (
    SELECT id_hash, data, version, created_at, idle_expires_at, absolute_expires_at, last_seen_at,
           idle_timeout, browser_session,
           last_seen_at <= now() - make_interval(secs => $touch_interval) AS due
    FROM {{table}}
    WHERE id_hash = $id_hash AND {LIVE}
), touched AS (
    UPDATE {{table}} AS s
    SET last_seen_at = now(),
        idle_expires_at = least({later("now()", idle_seconds("s"))}, s.absolute_expires_at),
        client_ip = $client_ip, user_agent = $user_agent
    FROM live
    WHERE s.id_hash = $id_hash AND s.id_hash = live.id_hash AND live.due AND s.replaced_at IS NULL
      AND {live("{write_clock}", "s")} {{async_commit}}
)
SELECT data, version,
       {epoch("created_at")}::bigint AS created,
       {
    epoch(f"CASE WHEN due THEN least({later('now()', idle_seconds())}, absolute_expires_at) ELSE idle_expires_at END")
}::float8 AS idle_deadline,
       {epoch("absolute_expires_at")}::float8 AS absolute_deadline,
       {epoch("CASE WHEN due THEN now() ELSE last_seen_at END")}::float8 AS last_seen,
       {LIFETIME_COLUMNS},
       {epoch("now()")}::float8 AS now
FROM live
"""

# The same read when this process touched the row less than a touch interval ago: nothing to
# slide, so no UPDATE to plan and no client details to send.
LOAD_SQL = f"""
SELECT data, {ROW_COLUMNS}, {epoch("now()")}::float8 AS now
FROM {{table}}
WHERE id_hash = $id_hash AND {LIVE}
"""

# A new session. With $replaced (a login from the session the request came with: any validly
# signed cookie, live or not, known or not) it uses that session up in the same statement: its
# row becomes a tombstone (no data, expired; a row is made for an unknown one), so its ID is dead
# at once (no fixation), and a second login from the same cookie within $tombstone_seconds creates
# nothing: at most one live session results from one pre-login session, however many times the
# form is submitted. The conflict's update takes its times from the row proposed (EXCLUDED: now()),
# never a function: Citus allows only IMMUTABLE ones there. `replaced_version` is what a
# notification of the used-up session carries. The new session lives $absolute_timeout seconds
# (the storage's, or the session's max_age), with its own idle timeout $row_idle_timeout (NULL:
# the storage's) and cookie kind $browser_session.
CREATE_SQL = f"""
WITH used AS (
    INSERT INTO {{table}} AS s (id_hash, data, idle_expires_at, absolute_expires_at, replaced_at)
    SELECT $replaced, '\\x'::bytea, now(), now(), now() WHERE $replaced::bytea IS NOT NULL
    ON CONFLICT (id_hash) DO UPDATE
        SET data = EXCLUDED.data, user_id = NULL, principal = NULL, version = s.version + 1,
            replaced_at = EXCLUDED.replaced_at,
            idle_expires_at = least(EXCLUDED.idle_expires_at, s.absolute_expires_at)
        WHERE s.replaced_at IS NULL
           OR EXCLUDED.replaced_at - s.replaced_at >= make_interval(secs => $tombstone_seconds)
    RETURNING version
), created AS (
    INSERT INTO {{table}} (id_hash, user_id, principal, data, idle_expires_at, absolute_expires_at, idle_timeout,
                           browser_session, client_ip, user_agent)
    SELECT $id_hash, $user_id, $principal, $data,
           least(now() + make_interval(secs => coalesce($row_idle_timeout::integer::float8, $idle_timeout::float8)),
                 now() + make_interval(secs => $absolute_timeout::float8)),
           now() + make_interval(secs => $absolute_timeout::float8), $row_idle_timeout::integer,
           $browser_session::boolean, $client_ip, $user_agent
    WHERE ($replaced::bytea IS NULL OR EXISTS (SELECT FROM used)) {{async_commit}}
    RETURNING {ROW_COLUMNS}
)
SELECT created.*, (SELECT version FROM used) AS replaced_version FROM created
"""

# renew_session: the same for a live session only ($replaced), keeping its creation time and
# absolute deadline. Of two concurrent renewals one wins; the other, and a renewal of a session
# that ended meanwhile, creates nothing. A renewal of a user's session holds that user's lock
# (USER_LOCK_SQL) shared, taken before the row's ({user_lock}: on Citus, where a modification may
# not take it, rows.py takes it first in the same transaction): ending all of a user's sessions
# takes it exclusively first, so a renewal in flight is either done before that statement looks
# (its new row is then ended too) or finds the old row gone; without it, the new row was made where
# that statement never looked. The new row keeps the old one's lifetime (idle_timeout,
# browser_session), unless the handler changed the session's max_age ($lifetime not NULL: the new
# absolute deadline is then created_at + $lifetime, with $row_idle_timeout and $browser_session).
RENEW_SQL = f"""
WITH used AS (
    UPDATE {{table}}
    SET data = '\\x'::bytea, user_id = NULL, principal = NULL, version = version + 1, replaced_at = now(),
        idle_expires_at = now()
    WHERE id_hash = $replaced AND replaced_at IS NULL AND {LIVE} {{user_lock}}
    RETURNING version, created_at, absolute_expires_at, idle_timeout, browser_session
), kept AS (
    SELECT created_at,
           coalesce({later("created_at", "$lifetime::float8")}, absolute_expires_at) AS absolute_expires_at,
           CASE WHEN $lifetime::float8 IS NULL THEN idle_timeout ELSE $row_idle_timeout::integer END AS idle_timeout,
           CASE WHEN $lifetime::float8 IS NULL THEN browser_session ELSE $browser_session::boolean END
               AS browser_session
    FROM used
), created AS (
    INSERT INTO {{table}}
        (id_hash, user_id, principal, data, created_at, idle_expires_at, absolute_expires_at, idle_timeout,
         browser_session, client_ip, user_agent)
    SELECT $id_hash, $user_id, $principal, $data, k.created_at,
           least({later("now()", idle_seconds("k"))}, k.absolute_expires_at), k.absolute_expires_at,
           k.idle_timeout, k.browser_session, $client_ip, $user_agent
    FROM kept AS k
    RETURNING {ROW_COLUMNS}
)
SELECT created.*, (SELECT version FROM used) AS replaced_version FROM created
"""


# The advisory lock key of a user (a 64-bit hash; `table_key` keeps one table's user locks apart
# from another's). An int user's key is the table's name hashed with the id as the seed, as
# before str users existed (processes of both releases take the same lock during an upgrade); a
# str user's hashes a text of its own, so int 7 and str "7" are different users. Two users whose
# keys collide only wait for each other: the lock orders a user's renewals and endings, it decides
# nothing.
USER_LOCK_KEY = "hashtextextended($table_key, $user_id)"
PRINCIPAL_LOCK_KEY = "hashtextextended('principal ' || $table_key::text || ' ' || $principal::text, 0)"


# RENEW_SQL's user lock, inside the statement (one PostgreSQL): the row's user is an int
# ($user_id) or a str ($principal), at most one of them set.
RENEW_USER_LOCK = f"""
        AND ($user_id::bigint IS NULL
             OR pg_advisory_xact_lock_shared({USER_LOCK_KEY}) IS NOT NULL)
        AND ($principal::text IS NULL
             OR pg_advisory_xact_lock_shared({PRINCIPAL_LOCK_KEY}) IS NOT NULL)"""

# max_sessions_per_user: after a login, end the user's least recently used live sessions beyond
# $max_sessions. A statement of its own, after the login's commit: of concurrent logins, the last
# to trim sees every one committed before it, so once they are all answered the cap holds. Rows are
# locked in id_hash order ({lock_rows}), as every statement that ends several of a user's sessions
# locks them: concurrent ones then queue for each other instead of deadlocking. (Citus cannot lock
# rows of several shards: there rows.py takes the user's lock first instead.)
TRIM_SQL = f"""
DELETE FROM {{table}}
WHERE id_hash IN (
    SELECT id_hash FROM {{table}}
    WHERE id_hash IN (
        SELECT id_hash FROM {{table}}
        WHERE {{owner}} AND {LIVE}
        ORDER BY last_seen_at DESC, created_at DESC
        OFFSET $max_sessions
    ) AND {LIVE}
    {{lock_rows}}
)
RETURNING id_hash
"""

# A write, optimistic: only if nobody saved since this request loaded $version. Never an upsert:
# an ended session stays ended. Expiry against {write_clock}. The idle deadline slides by the
# row's idle timeout. $lifetime not NULL: the handler changed the session's max_age; the row then
# takes its new lifetime (absolute deadline created_at + $lifetime, $row_idle_timeout,
# $browser_session), which a deadline already past ends at once. (SET reads the row as it was.)
_NEW_ABSOLUTE = f"coalesce({later('created_at', '$lifetime::float8')}, absolute_expires_at)"
_NEW_IDLE_TIMEOUT = "CASE WHEN $lifetime::float8 IS NULL THEN idle_timeout ELSE $row_idle_timeout::integer END"
_NEW_IDLE_SECONDS = (
    f"least(coalesce(({_NEW_IDLE_TIMEOUT})::float8, $idle_timeout::float8), $remember_idle_timeout::float8)"
)
SAVE_SQL = f"""
UPDATE {{table}}
SET data = $data, user_id = $user_id, principal = $principal, version = version + 1, last_seen_at = now(),
    absolute_expires_at = {_NEW_ABSOLUTE},
    idle_timeout = {_NEW_IDLE_TIMEOUT},
    browser_session = CASE WHEN $lifetime::float8 IS NULL THEN browser_session ELSE $browser_session::boolean END,
    idle_expires_at = least(
        {later("now()", _NEW_IDLE_SECONDS)},
        {_NEW_ABSOLUTE})
WHERE id_hash = $id_hash AND version = $version AND {live("{write_clock}")} {{async_commit}}
RETURNING {ROW_COLUMNS}
"""

# After a version conflict: lock the row for the length of one merge (never across a handler).
LOCK_SQL = f"""
SELECT data, version, user_id, principal FROM {{table}}
WHERE id_hash = $id_hash AND {LIVE_AT_WRITE}
FOR UPDATE
"""

# Logout. A tombstone stays (its cookie was used by a login, whose cookie the browser now has).
END_SQL = "DELETE FROM {table} WHERE id_hash = $id_hash AND replaced_at IS NULL RETURNING 1"

# What the table's triggers send on one PostgreSQL (schema.sql), sent by rows.py on Citus, where a
# trigger would fire on a worker and notify only that worker's listeners. Payloads as there.
NOTIFY_SQL = "SELECT pg_notify($channel, payload) FROM unnest($payloads::text[]) AS payload"

# Taken by what ends all of a user's sessions (or all but one), for its transaction, before it
# looks: renewals of that user's sessions (RENEW_SQL) wait, or are waited for. {lock_key} is
# USER_LOCK_KEY or PRINCIPAL_LOCK_KEY.
USER_LOCK_SQL = "SELECT pg_advisory_xact_lock({lock_key})"
# The same lock shared, as RENEW_SQL takes it (on Citus, as a statement of its own).
USER_LOCK_SHARED_SQL = "SELECT pg_advisory_xact_lock_shared({lock_key})"

LIST_USER_SQL = f"""
SELECT id_hash, created_at, last_seen_at, client_ip, user_agent
FROM {{table}}
WHERE {{owner}} AND {LIVE}
ORDER BY last_seen_at DESC
LIMIT $limit
"""

# One of the user's sessions by its handle (a prefix of its ID hash): scoped to the user, so a
# handle of another user's session ends nothing.
END_BY_HANDLE_SQL = f"""
DELETE FROM {{table}}
WHERE {{owner}} AND substring(id_hash FROM 1 FOR octet_length($handle::bytea)) = $handle::bytea
    AND {LIVE}
RETURNING id_hash
"""

# Every live session of the user but $keep_id_hash (NULL: all of them), rows locked as TRIM_SQL
# locks them. Live rows only: what it returns is what it ended; expired rows are the sweeper's,
# which then never waits on this.
END_USER_SQL = f"""
DELETE FROM {{table}}
WHERE id_hash IN (
    SELECT id_hash FROM {{table}}
    WHERE {{owner}} AND id_hash IS DISTINCT FROM $keep_id_hash::bytea AND {LIVE}
    {{lock_rows}}
) AND {LIVE}
RETURNING id_hash
"""

# Expired, and not a tombstone still inside its time.
_SWEEPABLE = (
    "idle_expires_at <= now()"
    " AND (replaced_at IS NULL OR replaced_at <= now() - make_interval(secs => $tombstone_seconds))"
)

# The sweeper's batch. The idle deadline alone decides expiry (it never passes the absolute one),
# so one index serves it. Deleting by ctid (a TID scan) measured about 8x faster than
# `id_hash IN (subquery)`; Citus cannot name rows by ctid, so there it deletes by id_hash; no row locks are
# needed, since expired rows are never updated, and the outer condition re-checks the row actually
# deleted.
SWEEP_SQL = f"""
DELETE FROM {{table}}
WHERE {{row_key}} = ANY (ARRAY(
    SELECT {{row_key}} FROM {{table}}
    WHERE {_SWEEPABLE}
    LIMIT $batch_size
)) AND {_SWEEPABLE}
"""

# The live sessions (tombstones are not sessions), for the metrics' periodic sample: never per
# request (a count reads the whole table, or its index).
COUNT_LIVE_SQL = f"SELECT count(*) FROM {{table}} WHERE replaced_at IS NULL AND {LIVE}"

# durable_writes=False: the statement's own transaction commits without waiting for the WAL
# flush (synchronous_commit is a per-transaction setting; set_config(..., true) sets it for this
# one only).
ASYNC_COMMIT = "AND set_config('synchronous_commit', 'off', true) IS NOT NULL"

_PARAMETER = re.compile(r"\$([a-z][a-z_]*)")


class Statement:
    """One statement: `sql` with positional parameters for PostgreSQL, and `args(**values)` that
    puts named values in their order.

    :param template: the SQL, with `$name` parameters and `{table}` / `{async_commit}` fields.
    :param fields: what fills the template's fields.
    """

    __slots__ = ("_order", "names", "sql")

    def __init__(self, template: str, **fields: str) -> None:
        names: list[str] = []

        def number(match: re.Match[str]) -> str:
            if match[1] not in names:
                names.append(match[1])
            return f"${names.index(match[1]) + 1}"

        self.sql = _PARAMETER.sub(number, template.format(**fields))
        self.names = tuple(names)
        get = itemgetter(*names)
        self._order = (lambda values: (get(values),)) if len(names) == 1 else get

    def args(self, **values: object) -> tuple[object, ...]:
        """The values in the statement's order.

        :raises TypeError: when a value is missing or not one of the statement's parameters.
        """
        if len(values) != len(self.names):
            raise TypeError(f"the statement takes {', '.join(self.names)}; given {', '.join(values)}")
        try:
            return tuple(self._order(values))
        except KeyError as exc:
            raise TypeError(f"missing parameter {exc.args[0]}") from None


class Statements:
    """The statements for one table. `create_async` and `save_async` are the writes that may skip
    the WAL flush: the same as `create` and `save` unless `durable_writes` is False.

    :param table: the table, quoted (`TableNames.qualified`).
    :param durable_writes: False to let `create_async`, `save_async` and the touch in
        `load_and_touch` commit without waiting for the flush (one PostgreSQL only).
    :param citus: the table is distributed by Citus: the variants it needs, each said here.
    """

    def __init__(self, table: str, *, durable_writes: bool, citus: bool = False) -> None:
        fast = "" if durable_writes else ASYNC_COMMIT
        fields = {
            "table": table,
            # Citus refuses a VOLATILE function in a modification: there a write checks expiry at
            # its statement's start, now() (which the coordinator sets), not after a lock wait.
            "write_clock": "now()" if citus else "clock_timestamp()",
            # Citus cannot lock rows of several shards (FOR UPDATE), nor take a lock inside a
            # modification: rows.py takes the user's lock first, as a statement of its own.
            "lock_rows": "" if citus else "ORDER BY id_hash FOR UPDATE",
            "user_lock": "" if citus else RENEW_USER_LOCK,
            # Citus cannot name rows by ctid.
            "row_key": "id_hash" if citus else "ctid",
        }
        self.load_and_touch = Statement(LOAD_AND_TOUCH_SQL, **fields, async_commit=fast)
        self.load = Statement(LOAD_SQL, **fields)
        self.create = Statement(CREATE_SQL, **fields, async_commit="")
        self.create_async = Statement(CREATE_SQL, **fields, async_commit=fast)
        self.renew = Statement(RENEW_SQL, **fields)
        # What names one user's sessions comes twice: for an int user (user_id) and a str one
        # (principal), each served by its own partial index.
        by_id, by_principal = {**fields, "owner": "user_id = $user_id"}, {**fields, "owner": "principal = $principal"}
        self.trim = Statement(TRIM_SQL, **by_id)
        self.trim_principal = Statement(TRIM_SQL, **by_principal)
        self.save = Statement(SAVE_SQL, **fields, async_commit="")
        self.save_async = Statement(SAVE_SQL, **fields, async_commit=fast)
        self.lock = Statement(LOCK_SQL, **fields)
        self.end = Statement(END_SQL, **fields)
        self.user_lock = Statement(USER_LOCK_SQL, lock_key=USER_LOCK_KEY)
        self.user_lock_shared = Statement(USER_LOCK_SHARED_SQL, lock_key=USER_LOCK_KEY)
        self.principal_lock = Statement(USER_LOCK_SQL, lock_key=PRINCIPAL_LOCK_KEY)
        self.principal_lock_shared = Statement(USER_LOCK_SHARED_SQL, lock_key=PRINCIPAL_LOCK_KEY)
        self.notify = Statement(NOTIFY_SQL)
        self.list_user = Statement(LIST_USER_SQL, **by_id)
        self.list_principal = Statement(LIST_USER_SQL, **by_principal)
        self.end_by_handle = Statement(END_BY_HANDLE_SQL, **by_id)
        self.end_by_handle_principal = Statement(END_BY_HANDLE_SQL, **by_principal)
        self.end_user = Statement(END_USER_SQL, **by_id)
        self.end_principal = Statement(END_USER_SQL, **by_principal)
        self.sweep = Statement(SWEEP_SQL, **fields)
