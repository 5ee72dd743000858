"""The sweeper on real PostgreSQL: it deletes exactly the expired sessions, in batches of the
configured size, only while it holds the sweep lock, each row once under concurrency, and the
app runs it in the background.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import PostgresStorage
from aiohttp_session_postgres.sweeper import SWEEP_LOCK_KEY
from conftest import AUTH_KEY, ENC_KEY, make_settings
from servers import database_name, wait_for_lock_waiters

MakeClient = Callable[..., Awaitable[TestClient]]

# Deadlines in seconds from now, as (idle, absolute); the table requires idle <= absolute.
IDLE_EXPIRED = (-60, 3600)
BOTH_EXPIRED = (-120, -60)
LIVE = (3600, 7200)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


def storage_on(pool: asyncpg.Pool) -> PostgresStorage:
    return PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])


async def insert_sessions(conn: asyncpg.Connection, count: int, deadlines: tuple[int, int]) -> set[bytes]:
    """`count` session rows with the given (idle, absolute) deadlines; their id_hashes."""
    ids = [os.urandom(32) for _ in range(count)]
    await conn.execute(
        "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
        " SELECT id, '\\x00ff'::bytea, now() + make_interval(secs => $2), now() + make_interval(secs => $3)"
        " FROM unnest($1::bytea[]) AS id",
        ids,
        float(deadlines[0]),
        float(deadlines[1]),
    )
    return set(ids)


async def remaining_ids(conn: asyncpg.Connection) -> set[bytes]:
    return {row["id_hash"] for row in await conn.fetch("SELECT id_hash FROM sessions")}


async def test_sweep_deletes_exactly_the_expired_rows(pool: asyncpg.Pool, pg: asyncpg.Connection) -> None:
    assert await storage_on(pool).sweep(batch_size=100) == 0  # nothing to do is 0, not None
    await insert_sessions(pg, 3, IDLE_EXPIRED)
    await insert_sessions(pg, 4, BOTH_EXPIRED)
    live = await insert_sessions(pg, 5, LIVE)

    assert await storage_on(pool).sweep(batch_size=100) == 7
    assert await remaining_ids(pg) == live
    assert await storage_on(pool).sweep(batch_size=100) == 0
    assert await remaining_ids(pg) == live


async def test_sweep_deletes_in_batches_of_batch_size(pool: asyncpg.Pool, pg: asyncpg.Connection) -> None:
    """A statement-level trigger records how many rows each DELETE statement removed."""
    await pg.execute("CREATE TABLE sweep_batches (seq serial PRIMARY KEY, deleted bigint NOT NULL)")
    try:
        await pg.execute(
            """
            CREATE FUNCTION record_sweep_batch() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO sweep_batches (deleted) SELECT count(*) FROM old;
                RETURN NULL;
            END
            $$
            """
        )
        await pg.execute(
            "CREATE TRIGGER record_sweep_batch AFTER DELETE ON sessions"
            " REFERENCING OLD TABLE AS old FOR EACH STATEMENT EXECUTE FUNCTION record_sweep_batch()"
        )
        await insert_sessions(pg, 25, IDLE_EXPIRED)
        live = await insert_sessions(pg, 3, LIVE)

        assert await storage_on(pool).sweep(batch_size=10) == 25
        batches = [row["deleted"] for row in await pg.fetch("SELECT deleted FROM sweep_batches ORDER BY seq")]
        assert batches == [10, 10, 5]
        assert await remaining_ids(pg) == live
    finally:
        await pg.execute("DROP TRIGGER IF EXISTS record_sweep_batch ON sessions")
        await pg.execute("DROP FUNCTION IF EXISTS record_sweep_batch()")
        await pg.execute("DROP TABLE IF EXISTS sweep_batches")


async def test_sweep_skips_while_another_process_holds_the_lock(
    pool: asyncpg.Pool, pg: asyncpg.Connection, db_url: str
) -> None:
    expired = await insert_sessions(pg, 5, IDLE_EXPIRED)
    other = await asyncpg.connect(db_url)
    try:
        transaction = other.transaction()
        await transaction.start()
        await other.execute("SELECT pg_advisory_xact_lock($1)", SWEEP_LOCK_KEY)

        assert await storage_on(pool).sweep(batch_size=100) is None
        assert await remaining_ids(pg) == expired

        await transaction.commit()  # releases the transaction-level lock
        assert await storage_on(pool).sweep(batch_size=100) == 5
        assert await remaining_ids(pg) == set()
    finally:
        await other.close()


async def test_concurrent_sweeps_take_turns_and_delete_each_row_once(
    pool: asyncpg.Pool, pg: asyncpg.Connection, db_url: str
) -> None:
    await insert_sessions(pg, 2000, IDLE_EXPIRED)
    live = await insert_sessions(pg, 10, LIVE)
    # Sweep A is held inside its first batch (the rows it deletes are locked by someone else),
    # holding the sweep lock: sweep B, from another process, must see that and step aside at
    # once, neither blocking behind A nor deleting alongside it.
    holder = await asyncpg.connect(db_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM sessions WHERE idle_expires_at <= now() FOR UPDATE")
        first = asyncio.ensure_future(storage_on(pool).sweep(batch_size=50))
        await wait_for_lock_waiters(pg, database_name(db_url), 1)
        assert await asyncio.wait_for(storage_on(pool).sweep(batch_size=50), 5) is None
        await held.rollback()
        assert await first == 2000
    finally:
        await holder.close()
    assert await remaining_ids(pg) == live


async def test_app_runs_the_sweeper_in_the_background(
    make_client: MakeClient, db_url: str, pg: asyncpg.Connection
) -> None:
    await make_client(make_settings(db_url, sweep_interval=1))
    await insert_sessions(pg, 7, IDLE_EXPIRED)
    live = await insert_sessions(pg, 2, LIVE)

    for _ in range(50):  # up to about 5 s: the first sweep comes 0.8 to 1.2 s after start
        if await remaining_ids(pg) == live:
            break
        await asyncio.sleep(0.1)
    assert await remaining_ids(pg) == live
