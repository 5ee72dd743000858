"""Deleting expired sessions: in short batches, by one process at a time across all processes.

Reads already refuse expired rows; the sweeper only reclaims their space. Each batch is its own
short transaction that first takes a transaction-level advisory lock: if another process holds
it, this pass stops at once. A transaction-level lock (not a session-level one) is released with
the transaction, so nothing lingers on a pooled or PgBouncer-shared connection.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

import asyncpg

from .pool import DATABASE_ERRORS
from .schema import TableNames, distributed
from .sql import TOMBSTONE_SECONDS, Statements

log = logging.getLogger("aiohttp_session_postgres")

# Arbitrary but fixed: every process sweeping one database must use the same key.
SWEEP_LOCK_KEY = 0x5E5510_5EEB


async def sweep(
    pool: asyncpg.Pool,
    *,
    table: str = "sessions",
    schema: str = "public",
    batch_size: int = 1000,
    timeout: float = 10.0,
    citus: bool | None = None,
) -> int | None:
    """Delete expired sessions (and tombstones past their time) from `schema`.`table`, in
    transactions of `batch_size` rows, until none is left: one sweeper at a time across all
    processes (a PostgreSQL advisory lock). For a scheduled job: no keys needed.

    :param pool: an asyncpg pool on the database.
    :param table: the sessions table's name.
    :param schema: the PostgreSQL schema that holds it.
    :param batch_size: rows deleted per transaction.
    :param timeout: seconds each statement (and the wait for a connection) may take.
    :param citus: the table is distributed by Citus (which cannot delete by ctid); None (the
        default): found out from the table, once per call.
    :returns: the number deleted, or None when another process holds the sweep lock.
    :raises ValueError: for a table or schema name that is not a plain identifier.
    :raises asyncpg.PostgresError: and asyncpg's other errors, from the database.
    """
    names = TableNames(table, schema)
    if citus is None:
        async with pool.acquire(timeout=timeout) as conn:
            citus = await distributed(conn, names)
    statement = Statements(names.qualified, durable_writes=True, citus=citus).sweep
    args = statement.args(batch_size=batch_size, tombstone_seconds=TOMBSTONE_SECONDS)
    total = 0
    while True:
        async with pool.acquire(timeout=timeout) as conn, conn.transaction():
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SWEEP_LOCK_KEY):
                return None if total == 0 else total
            status = await conn.execute(statement.sql, *args, timeout=timeout)
        deleted = int(status.split()[-1])
        total += deleted
        if deleted < batch_size:
            return total
        await asyncio.sleep(0)  # let requests in between batches


async def sweep_forever(
    pool: asyncpg.Pool,
    names: TableNames,
    *,
    interval: float,
    batch_size: int,
    timeout: float,
    citus: bool | None = None,
    swept: Callable[[int, float], None] | None = None,
) -> None:
    """`sweep` every `interval` seconds (jittered +/-20%, so processes started together do not
    collide), until cancelled; a failed pass is logged and retried at the next interval.
    `swept(rows, seconds)` is called after each pass this process ran (not one it skipped)."""
    while True:
        await asyncio.sleep(interval * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not secrecy
        started = time.monotonic()
        try:
            deleted = await sweep(
                pool, table=names.table, schema=names.schema, batch_size=batch_size, timeout=timeout, citus=citus
            )
        except DATABASE_ERRORS as exc:  # survived until the next pass
            log.warning("sweep of %s failed, will retry next interval: %s", names.qualified, type(exc).__name__)
            continue
        if deleted is None:
            log.info("sweep skipped: another process is sweeping")
        else:
            log.info("sweep removed %d expired sessions", deleted)
            if swept is not None:
                swept(deleted, time.monotonic() - started)
