"""The sweeper on real PostgreSQL, on the demo's migrated database: it deletes exactly the expired
sessions (tombstones once their time is up), in batches of the configured size, only while it
holds the sweep lock, each row once under concurrency, within its timeout, and the app runs it in
the background. (In the table and schema it is given, and the background sweeper's log lines:
tests/library/test_sweeper.py.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import PostgresStorage, sweep
from aiohttp_session_postgres.sql import TOMBSTONE_SECONDS
from aiohttp_session_postgres.sweeper import SWEEP_LOCK_KEY
from support.demo import make_settings
from support.keys import AUTH_KEY, ENC_KEY
from support.postgres import database_name, wait_for_lock_waiters
from support.session_rows import BOTH_EXPIRED, IDLE_EXPIRED, LIVE, insert_sessions, remaining_ids

MakeClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=4)
    yield pool
    await pool.close()


def storage_on(pool: asyncpg.Pool) -> PostgresStorage:
    return PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])


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

        # The default batch: 1,000 rows.
        await pg.execute("TRUNCATE sweep_batches")
        await insert_sessions(pg, 1001, IDLE_EXPIRED)
        assert await sweep(pool) == 1001
        assert [row["deleted"] for row in await pg.fetch("SELECT deleted FROM sweep_batches ORDER BY seq")] == [1000, 1]
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


async def test_a_tombstone_is_kept_its_time_then_swept(pool: asyncpg.Pool, pg: asyncpg.Connection) -> None:
    """A tombstone (the row of a session a login or renewal used up) outlives its idle deadline
    for TOMBSTONE_SECONDS after it was replaced: until then its cookie must not start another
    session. Then it goes like any expired row."""
    young = await insert_sessions(pg, 2, IDLE_EXPIRED)
    old = await insert_sessions(pg, 3, IDLE_EXPIRED)
    await pg.execute(
        "UPDATE sessions SET replaced_at = now() - make_interval(secs => $2) WHERE id_hash = ANY($1::bytea[])",
        list(young),
        TOMBSTONE_SECONDS - 2,
    )
    await pg.execute(
        "UPDATE sessions SET replaced_at = now() - make_interval(secs => $2) WHERE id_hash = ANY($1::bytea[])",
        list(old),
        TOMBSTONE_SECONDS + 2,
    )
    assert await storage_on(pool).sweep(batch_size=100) == 3
    assert await remaining_ids(pg) == young


async def test_a_sweep_that_loses_the_lock_between_batches_returns_what_it_deleted(
    pool: asyncpg.Pool, pg: asyncpg.Connection, db_url: str
) -> None:
    """Another process queues for the sweep lock while this sweep's first batch runs: PostgreSQL
    hands it the lock as that batch commits, so the second batch finds it taken and the sweep
    stops. It deleted rows, so it returns their number (None means it deleted nothing)."""
    expired = await insert_sessions(pg, 4, IDLE_EXPIRED)
    holder = await asyncpg.connect(db_url)
    other = await asyncpg.connect(db_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM sessions FOR UPDATE")  # the first batch waits on these
        first = asyncio.ensure_future(storage_on(pool).sweep(batch_size=4))
        await wait_for_lock_waiters(pg, database_name(db_url), 1)
        queued = other.transaction()
        await queued.start()
        taking = asyncio.ensure_future(other.execute("SELECT pg_advisory_xact_lock($1)", SWEEP_LOCK_KEY))
        await wait_for_lock_waiters(pg, database_name(db_url), 2)
        await held.rollback()
        assert await asyncio.wait_for(first, 10) == 4
        await asyncio.wait_for(taking, 10)
        await queued.rollback()
    finally:
        await holder.close()
        await other.close()
    assert not await remaining_ids(pg) & expired


async def gives_up(sweeping: Awaitable[int | None]) -> None:
    """`sweeping` raises TimeoutError of its own, long before 20 s (a sweep without its timeout
    would still be waiting then)."""
    task = asyncio.ensure_future(sweeping)
    done, _ = await asyncio.wait({task}, timeout=20)
    if not done:
        task.cancel()
        pytest.fail("the sweep was still waiting after 20 s: its timeout was not applied")
    assert isinstance(task.exception(), TimeoutError)


async def test_a_sweep_waits_at_most_timeout_for_a_connection_and_for_each_statement(
    pool: asyncpg.Pool, pg: asyncpg.Connection, db_url: str
) -> None:
    """`timeout` bounds both waits a sweep can meet: for a pooled connection (here the pool's
    only one is taken) and for its statement (here blocked on rows someone else locked)."""
    small = await asyncpg.create_pool(db_url, min_size=1, max_size=1)
    try:
        async with small.acquire():
            await gives_up(sweep(small, timeout=0.5))
    finally:
        await small.close()

    await insert_sessions(pg, 2, IDLE_EXPIRED)
    holder = await asyncpg.connect(db_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM sessions FOR UPDATE")
        await gives_up(sweep(pool, timeout=0.5))
        await held.rollback()
    finally:
        await holder.close()
    assert await sweep(pool) == 2  # and nothing was left half-done


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
