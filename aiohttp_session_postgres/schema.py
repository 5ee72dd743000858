"""The sessions table: its names, its SQL (schema.sql, beside this file, with schema_triggers.sql
on one PostgreSQL or schema_citus.sql on Citus), and creating it.

Three ways to get the table, whichever fits the project (test_schema_ways.py runs each):
- the SQL: `schema_sql()`, or `python -m aiohttp_session_postgres schema | psql "$DATABASE_URL"`;
- at start-up: `await create_schema(conn)`, idempotent and safe when several processes call it;
- Alembic: add `aiohttp_session_postgres:alembic_versions` to `version_locations`, then
  `alembic upgrade heads` (branch label `aiohttp_session_postgres`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from typing import TYPE_CHECKING, Any

import asyncpg

from .identity import MAX_PRINCIPAL_BYTES
from .sql import live

if TYPE_CHECKING:
    from ._types import Connection

log = logging.getLogger("aiohttp_session_postgres")

# Bumped whenever schema.sql changes what it creates. The table's comment records the version a
# database has, so create_schema() on an up-to-date database takes no lock on the table.
# 2: the principal column (str users), its CHECK and its index; each session's lifetime
#    (idle_timeout, browser_session: nullable, no default).
SCHEMA_VERSION = 2
_VERSION_COMMENT = f"aiohttp-session-postgres schema {SCHEMA_VERSION}"

# Plain identifiers only: quoting then is only a formality, and no name can carry SQL or a
# character that needs thought in a LISTEN channel. PostgreSQL cuts identifiers at 63 bytes, so
# the longest derived name must fit whole.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_IDENTIFIER_BYTES = 63
_LONGEST_SUFFIX = "_notify_truncate"

MAX_PARTITIONS = 64

# Serialises create_schema() across processes (pg_advisory_xact_lock): two concurrent
# CREATE TABLE IF NOT EXISTS can still collide in the catalog.
SCHEMA_LOCK_KEY = 0x5E5510_5C4E
# A schema change that waits for a lock on a busy table must not queue every request behind it.
_LOCK_TIMEOUT = "5s"


@dataclass(frozen=True)
class TableNames:
    """Where the sessions live: `table` in the PostgreSQL `schema`, and the names derived from it
    (indexes, trigger function, triggers, the NOTIFY channel). Raises TypeError for a name that is
    not a str, ValueError for one that is not a plain identifier (letters, digits, underscore; not
    starting with a digit) or is too long for its derived names to fit PostgreSQL's 63 bytes."""

    table: str = "sessions"
    schema: str = "public"

    def __post_init__(self) -> None:
        for what, name in (("table", self.table), ("schema", self.schema)):
            if not isinstance(name, str):
                raise TypeError(f"{what} name must be a str, got {type(name).__name__}")
            if not _IDENTIFIER.fullmatch(name):
                raise ValueError(f"{what} name {name!r} must be a plain identifier: letters, digits and _")
        if len(self.table) + len(_LONGEST_SUFFIX) > _MAX_IDENTIFIER_BYTES:
            raise ValueError(f"table name {self.table!r} is too long: at most 47 characters")
        if len(self.channel) > _MAX_IDENTIFIER_BYTES:
            raise ValueError(f"schema and table names {self.channel!r} are too long together: at most 63")

    @cached_property
    def qualified(self) -> str:
        """The table as SQL: "schema"."table"."""
        return f"{_quote(self.schema)}.{_quote(self.table)}"

    @property
    def channel(self) -> str:
        """The LISTEN/NOTIFY channel the table's triggers notify: "schema.table"."""
        return f"{self.schema}.{self.table}"

    def derived(self, suffix: str) -> str:
        """A name derived from the table's (an index, a trigger), quoted."""
        return _quote(f"{self.table}_{suffix}")


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def schema_sql(
    table: str = "sessions", schema: str = "public", *, partitions: int | None = None, citus: bool = False
) -> str:
    """The SQL that creates (or brings up to date) the sessions table, its indexes and its
    triggers: schema.sql with the names filled in. Idempotent. The PostgreSQL `schema` must exist.

    :param table: the table's name (a plain identifier: letters, digits, _).
    :param schema: the PostgreSQL schema that holds it (a plain identifier).
    :param partitions: None for an ordinary table; N (2 to 64) for a table hash-partitioned by id_hash
        into N partitions, the layout a sharded cluster (Citus) gives the table distributed by
        id_hash. Only a new table can be partitioned; an existing one keeps its layout. What it
        costs (measured with EXPLAIN ANALYZE, tests/library/test_partitioned.py): every statement of a
        request on its own session (load, touch, write, merge, logout, a new session) still
        touches one partition, a login or renewal that uses up a session two; what selects by
        user_id (the per-user cap after a login, listing, ending a user's sessions) reads all N,
        and the sweeper deletes from each. On one server it gains smaller indexes per partition,
        nothing more: it is the way to a sharded cluster, not a speed-up. Planning and locking
        grow with N (a generic plan locks every partition: measured, a read at 1024 partitions
        took 20 ms and more), hence the bound of 64.
    :param citus: for a Citus cluster (run on its coordinator, where the citus extension is
        installed): the table distributed by id_hash (``create_distributed_table``), without the
        triggers, which Citus refuses on a distributed table (the library notifies the caches
        itself there). An existing table, with its rows, is distributed; one already distributed
        is left as it is.
    :returns: the SQL, statements separated by semicolons, ready for psql. It ends, after a
        comment line `OUTSIDE_TRANSACTION`, with the principal index built ``CONCURRENTLY`` (but
        on a partitioned table), which PostgreSQL runs only outside a transaction block: psql
        runs each statement of a file on its own (not with ``--single-transaction``); the CLI
        prints what comes before it between BEGIN and COMMIT. `split_schema_sql` divides the two.
    :raises ValueError: for bad names or a bad partition count, or partitions with citus (Citus
        shards the table itself).
    """
    names = TableNames(table, schema)
    if citus and partitions is not None:
        raise ValueError("partitions and citus cannot go together: Citus shards the table itself")
    partition_clause, partition_sql, partition_triggers = "", "", ""
    if partitions is not None:
        if not isinstance(partitions, int) or isinstance(partitions, bool) or not 2 <= partitions <= MAX_PARTITIONS:
            raise ValueError(f"partitions must be an integer from 2 to {MAX_PARTITIONS}")
        partition_clause = " PARTITION BY HASH (id_hash)"
        parts = [f"{_quote(schema)}.{names.derived(f'p{i}')}" for i in range(partitions)]
        partition_sql = "".join(
            f"CREATE TABLE IF NOT EXISTS {part} PARTITION OF {names.qualified}"
            f" FOR VALUES WITH (MODULUS {partitions}, REMAINDER {i});\n"
            for i, part in enumerate(parts)
        )
        # Statement triggers stay on the table they are made on: a TRUNCATE of one partition
        # must empty the caches too.
        trigger = names.derived("notify_truncate")
        partition_triggers = "".join(
            f"DROP TRIGGER IF EXISTS {trigger} ON {part};\n"
            f"CREATE TRIGGER {trigger} AFTER TRUNCATE ON {part}\n"
            f"    FOR EACH STATEMENT EXECUTE FUNCTION {_quote(schema)}.{names.derived('notify')}();\n"
            for part in parts
        )
    files = resources.files(__package__)
    notifications = files.joinpath("schema_citus.sql" if citus else "schema_triggers.sql").read_text(encoding="utf-8")
    template = files.joinpath("schema.sql").read_text(encoding="utf-8")
    template = template.replace("{notifications}", notifications.strip())
    if citus:
        template = _CITUS_GUARD + template
    return template.format(
        table=names.qualified,
        schema=_quote(schema),
        partition_clause=partition_clause,
        partitions=partition_sql,
        partition_triggers=partition_triggers,
        idle_index=names.derived("idle_expires_at_idx"),
        user_index=names.derived("user_id_idx"),
        principal_index=names.derived("principal_idx"),
        concurrently="" if partitions is not None else "CONCURRENTLY ",
        outside_transaction=OUTSIDE_TRANSACTION if partitions is None else "",
        principal_check=names.derived("principal_check"),
        principal_check_name=_literal(f"{table}_principal_check"),
        principal_rule=(
            f"principal IS NULL OR (user_id IS NULL AND octet_length(principal) BETWEEN 1 AND {MAX_PRINCIPAL_BYTES})"
        ),
        notify_function=f"{_quote(schema)}.{names.derived('notify')}",
        channel=_literal(names.channel),
        update_trigger=names.derived("notify_update"),
        delete_trigger=names.derived("notify_delete"),
        live_old=live(row="OLD"),
        truncate_trigger=names.derived("notify_truncate"),
        version_comment=_literal(_VERSION_COMMENT),
    )


# Where the script's statements that cannot run inside a transaction block begin: the CLI prints
# what comes before it between BEGIN and COMMIT, and the rest after.
OUTSIDE_TRANSACTION = "-- Outside a transaction block (psql runs each statement so, unless told --single-transaction):"


def split_schema_sql(sql: str) -> tuple[str, str]:
    """`schema_sql()` as (what may run in one transaction, what must run outside one: "" or
    statements beginning CREATE INDEX CONCURRENTLY)."""
    before, marker, after = sql.partition(OUTSIDE_TRANSACTION)
    return before.rstrip() + "\n", (marker + after) if marker else ""


# First in the script for Citus: with psql's ON_ERROR_STOP (or in a transaction), nothing is made
# where the extension is missing.
_CITUS_GUARD = """-- For a Citus coordinator: nothing is made where the citus extension is missing.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'the citus extension is not installed in this database: CREATE EXTENSION citus first';
    END IF;
END
$$;

"""


def schema_statements(
    table: str = "sessions", schema: str = "public", *, partitions: int | None = None, citus: bool = False
) -> list[str]:
    """`schema_sql` as single statements, for drivers that run one at a time (Alembic's `op.execute`).

    A statement that begins with ``CREATE INDEX CONCURRENTLY`` (the principal index, on a table
    that is not partitioned) cannot run inside a transaction block: run it on its own (Alembic:
    in ``op.get_context().autocommit_block()``, as this library's revisions do). It builds the
    index without blocking writes to a table that already has rows. If such a build is
    interrupted it leaves an invalid index, which ``IF NOT EXISTS`` then keeps: drop it
    (``DROP INDEX CONCURRENTLY``) and run the statement again (`create_schema` does so itself).

    :returns: the statements, each without its closing semicolon.
    :raises ValueError: as `schema_sql`.
    """
    statements, current, in_body = [], [], False
    for line in schema_sql(table, schema, partitions=partitions, citus=citus).splitlines():
        if line.startswith("--") and not in_body:
            continue
        current.append(line)
        if line.count("$$") % 2:
            in_body = not in_body
        if line.rstrip().endswith(";") and not in_body:
            statement = "\n".join(current).strip()
            if statement != ";":
                statements.append(statement.removesuffix(";"))
            current = []
    return statements


def run_schema_statements(op: Any, statements: list[str]) -> None:
    """Run `schema_statements()` in an Alembic revision: each in the migration's transaction, but
    for a ``CREATE INDEX CONCURRENTLY``, which PostgreSQL runs only outside a transaction block:
    that one in ``op.get_context().autocommit_block()`` (which commits what ran before it, and
    begins a new transaction after it). The library's Alembic branch uses it, and a project's own
    revisions that run the library's statements (as the demo app's do) can too.

    :param op: ``alembic.op``.
    :param statements: what `aiohttp_session_postgres.schema_statements` returned.
    """
    for statement in statements:
        if statement.startswith("CREATE INDEX CONCURRENTLY"):
            with op.get_context().autocommit_block():
                op.execute(statement)
        else:
            op.execute(statement)


async def create_schema(
    conn: Connection,
    *,
    table: str = "sessions",
    schema: str = "public",
    partitions: int | None = None,
    citus: bool | None = None,
) -> bool:
    """Create the sessions table (or bring it up to date) on `conn`, in one transaction under an
    advisory lock, so any number of processes may call it at once (for example at every start).

    :param conn: an asyncpg connection (or one from a pool).
    :param table: as for `schema_sql`.
    :param schema: as for `schema_sql`.
    :param partitions: as for `schema_sql` (a new table only).
    :param citus: as for `schema_sql`, on a Citus coordinator; None (the default): distributed
        when the database has the citus extension (an ordinary table elsewhere). False on a
        Citus coordinator makes a table of the coordinator's own, not sharded.
    An index that cannot be built inside a transaction without blocking writes (the principal
    index of schema version 2, on a table that already has rows) is built after that
    transaction, ``CONCURRENTLY``, by one process at a time (the others go on without waiting:
    every query works without it, only slower); one left invalid by an interrupted build is
    dropped and built again. Called inside a transaction of the caller's, `conn` builds it there
    instead, in the ordinary way (writes to the table then wait for its scan). The concurrent build holds a
    session-level advisory lock and setting between statements: give it a direct connection, not
    one through PgBouncer's transaction pooling.

    :returns: True when it changed something; False when the table was already at this version
        (and, with `citus`, distributed) and its indexes built, in which case no lock on the table
        is taken.
    :raises ValueError: for bad names, partitions that do not match the table, or `citus` where
        the citus extension is not installed.
    :raises asyncpg.PostgresError: from the database (for example LockNotAvailableError when the
        table stays locked by others for more than 5 seconds).
    """
    schema_sql(table, schema, partitions=partitions)  # ValueError for bad arguments, before the database
    names = TableNames(table, schema)
    installed = await citus_installed(conn)
    if citus and not installed:
        raise ValueError("citus=True, but this database has no citus extension: CREATE EXTENSION citus first")
    citus = installed if citus is None else citus
    statements = schema_statements(table, schema, partitions=partitions, citus=citus)
    nested = conn.is_in_transaction()
    later: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
        current = await schema_version(conn, table=table, schema=schema) == SCHEMA_VERSION
        if current and (not citus or await distributed(conn, names)):
            changed = False
        else:
            # A new table is empty: its indexes are built here, at no cost, and with it. An index
            # on a table that has rows is built concurrently, after this transaction (unless the
            # caller's transaction holds this one).
            new = await conn.fetchval("SELECT to_regclass($1) IS NULL", names.qualified)
            if not new and not nested:
                later = [statement for statement in statements if _concurrent(statement)]
            # The index statements each on their own: Citus sends a distributed table's DDL to the
            # workers as the query string it came in, which may hold one command only.
            script = ";\n".join(statement for statement in statements if not _concurrent(statement))
            indexes = [
                _plain(statement) for statement in statements if _concurrent(statement) and statement not in later
            ]
            changed = await _run(conn, [script, *indexes], table, schema, partitions=partitions, citus=citus)
    if current and not nested:
        later = [statement for statement in statements if _concurrent(statement)]  # one interrupted?
    for statement in later:
        changed = await _build_concurrently(conn, statement) or changed
    return changed


async def _run(
    conn: Connection, scripts: list[str], table: str, schema: str, *, partitions: int | None, citus: bool
) -> bool:
    """create_schema's transaction, once it found the table not up to date."""
    await conn.execute(f"SET LOCAL lock_timeout = '{_LOCK_TIMEOUT}'")
    if citus:
        # One shard at a time: DDL run on every shard in parallel may not be followed, in the
        # same transaction, by the commands Citus sends over one connection per worker.
        await conn.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
    for script in scripts:
        await conn.execute(script)
    if partitions is not None:
        # CREATE TABLE IF NOT EXISTS leaves a table already there as it is: a partition's
        # name taken by another table would leave hash values with nowhere to go.
        attached = await conn.fetchval(
            "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass($1)",
            TableNames(table, schema).qualified,
        )
        if attached != partitions:
            raise ValueError(
                f"{table} has {attached} partitions, not {partitions}: a table of a partition's name"
                " exists already, or the table exists unpartitioned"
            )
    return True


_CONCURRENT_INDEX = re.compile(r'CREATE INDEX CONCURRENTLY IF NOT EXISTS ("(?:[^"]|"")+") ON ("[^"]+")\.')
# Taken (session-level, never waited for) by the process that builds an index concurrently: a
# second one meanwhile would find the index there but not yet valid.
INDEX_LOCK_KEY = SCHEMA_LOCK_KEY + 1


def _concurrent(statement: str) -> bool:
    return statement.startswith("CREATE INDEX CONCURRENTLY")


def _plain(statement: str) -> str:
    """The statement as it may run inside a transaction block."""
    return statement.replace("CREATE INDEX CONCURRENTLY", "CREATE INDEX", 1) if _concurrent(statement) else statement


async def _build_concurrently(conn: Connection, statement: str) -> bool:
    """Run `statement` (CREATE INDEX CONCURRENTLY IF NOT EXISTS) unless its index is there and
    valid, or another process is building it. An invalid one (an interrupted build) is dropped
    first. True when it built the index.

    Not under the schema's advisory lock, and never waiting for the build's own: a concurrent
    build waits for every transaction older than it, create_schema's in other processes included,
    and one of those waiting for a lock the build holds would be a deadlock. A build that times
    out waiting (lock_timeout) is logged and left for the next create_schema; the table works
    meanwhile, only slower for str users."""
    match = _CONCURRENT_INDEX.match(statement)
    assert match is not None, statement
    index = f"{match[2]}.{match[1]}"
    valid_sql = "SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)"
    if await conn.fetchval(valid_sql, index):
        return False
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", INDEX_LOCK_KEY):
        return False  # another process is building it
    try:
        if await conn.fetchval(valid_sql, index):
            return False
        before = await conn.fetchval("SELECT current_setting('lock_timeout')")
        await conn.execute("SELECT set_config('lock_timeout', $1, false)", _LOCK_TIMEOUT)
        try:
            if await conn.fetchval(valid_sql, index) is False:
                await conn.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {index}")
            await conn.execute(statement)
        except asyncpg.exceptions.LockNotAvailableError:
            log.warning("index %s: not built (transactions held the table for %s); next time", index, _LOCK_TIMEOUT)
            return False
        finally:
            await conn.execute("SELECT set_config('lock_timeout', $1, false)", before)  # the caller's, back
        return True
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", INDEX_LOCK_KEY)


async def citus_installed(conn: Connection) -> bool:
    """Whether the database has the citus extension (this is a Citus coordinator, or worker)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"))


async def distributed(conn: Connection, names: TableNames) -> bool:
    """Whether the table is distributed by Citus (hash-distributed: a table of the coordinator's
    own, or one Citus manages there without sharding it, is not)."""
    if not await citus_installed(conn):
        return False  # and pg_dist_partition does not exist
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT FROM pg_dist_partition WHERE logicalrelid = to_regclass($1) AND partmethod = 'h')",
            names.qualified,
        )
    )


async def schema_version(conn: Connection, *, table: str = "sessions", schema: str = "public") -> int | None:
    """The schema version the table's comment records.

    :returns: the version, or None when there is no such table or no version of ours on it.
    """
    names = TableNames(table, schema)
    comment = await conn.fetchval("SELECT obj_description(to_regclass($1), 'pg_class')", names.qualified)
    prefix = _VERSION_COMMENT.rsplit(" ", 1)[0] + " "
    if not comment or not comment.startswith(prefix) or not comment[len(prefix) :].isdigit():
        return None
    return int(comment[len(prefix) :])
