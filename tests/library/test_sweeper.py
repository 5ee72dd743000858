"""The sweeper on real PostgreSQL, in the table and schema it is given: `sweep()` there, and the
background sweeper an app runs (its log lines, a failed pass, a pass skipped under another
process's lock). Exactly the expired sessions, tombstones, batches, the sweep lock, concurrency
and timeouts: tests/app/test_app_sweeper.py (on the demo's migrated database), with the demo
app's own background sweeper.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from aiohttp import web
from aiohttp_session_postgres import PostgresStorage, create_schema, sweep
from aiohttp_session_postgres.schema import TableNames
from aiohttp_session_postgres.sweeper import SWEEP_LOCK_KEY
from support.keys import AUTH_KEY, ENC_KEY
from support.postgres import eventually
from support.session_rows import IDLE_EXPIRED, insert_sessions


async def test_sweep_works_on_the_table_and_schema_it_is_given(lib_url: str) -> None:
    """Table and schema are options: a sweep of `elsewhere.app_sessions` empties that table of
    expired rows and nothing else (`public.sessions`, from lib_url, keeps its own)."""
    conn = await asyncpg.connect(lib_url)
    pool = await asyncpg.create_pool(lib_url, min_size=1, max_size=2)
    try:
        await conn.execute("CREATE SCHEMA elsewhere")
        await create_schema(conn, table="app_sessions", schema="elsewhere")
        await insert_sessions(conn, 4, IDLE_EXPIRED)  # public.sessions
        await conn.execute(
            "INSERT INTO elsewhere.app_sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
            " SELECT id, '\\x00'::bytea, now() - interval '1 minute', now() + interval '1 hour'"
            " FROM unnest($1::bytea[]) AS id",
            [os.urandom(32) for _ in range(6)],
        )
        assert await sweep(pool, table="app_sessions", schema="elsewhere", batch_size=100) == 6
        assert await conn.fetchval("SELECT count(*) FROM elsewhere.app_sessions") == 0
        assert await conn.fetchval("SELECT count(*) FROM public.sessions") == 4
    finally:
        await pool.close()
        await conn.close()


async def test_the_background_sweeper_logs_each_pass_and_outlives_a_failed_one(
    lib_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """storage.sweeper(), run as an app's cleanup_ctx runs it, on a table of another name in
    another schema: a pass that cannot finish within its timeout is logged (the README's line) and the
    next pass goes on; a pass says what it removed, in batches of the given size, or that another
    process holds the sweep lock."""
    caplog.set_level(logging.INFO, logger="aiohttp_session_postgres")
    conn = await asyncpg.connect(lib_url)
    pool = await asyncpg.create_pool(lib_url, min_size=1, max_size=2)
    holder = await asyncpg.connect(lib_url)
    names = TableNames("app_sessions", "elsewhere")
    storage = PostgresStorage(
        pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], table=names.table, schema=names.schema
    )
    background = storage.sweeper(interval=0.3, batch_size=2, timeout=0.5)(web.Application())
    started = False

    def logged(message: str) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return message in caplog.messages

        return check

    try:
        await conn.execute("CREATE SCHEMA elsewhere")
        await create_schema(conn, table=names.table, schema=names.schema)
        await conn.execute("CREATE TABLE sweep_batches (seq serial PRIMARY KEY, deleted bigint NOT NULL)")
        await conn.execute(
            "CREATE FUNCTION record_sweep_batch() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO sweep_batches (deleted) SELECT count(*) FROM old; RETURN NULL; END $$"
        )
        await conn.execute(
            "CREATE TRIGGER record_sweep_batch AFTER DELETE ON elsewhere.app_sessions"
            " REFERENCING OLD TABLE AS old FOR EACH STATEMENT EXECUTE FUNCTION record_sweep_batch()"
        )
        await conn.execute(
            "INSERT INTO elsewhere.app_sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
            " SELECT id, '\\x00'::bytea, now() - interval '1 minute', now() + interval '1 hour'"
            " FROM unnest($1::bytea[]) AS id",
            [os.urandom(32) for _ in range(5)],
        )
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM elsewhere.app_sessions FOR UPDATE")  # a pass waits on these

        await background.__anext__()  # the app starts
        started = True
        failed = 'sweep of "elsewhere"."app_sessions" failed, will retry next interval: TimeoutError'
        await eventually(logged(failed), 10, "no failed pass was logged")
        await held.rollback()
        await eventually(logged("sweep removed 5 expired sessions"), 10, "the pass after a failure removed nothing")
        assert [row["deleted"] for row in await conn.fetch("SELECT deleted FROM sweep_batches ORDER BY seq")] == [
            2,
            2,
            1,
        ]
        assert await conn.fetchval("SELECT count(*) FROM elsewhere.app_sessions") == 0

        locked = holder.transaction()
        await locked.start()
        await holder.execute("SELECT pg_advisory_xact_lock($1)", SWEEP_LOCK_KEY)
        skipped = "sweep skipped: another process is sweeping"
        await eventually(logged(skipped), 10, "a pass while another process sweeps was not logged as skipped")
        await locked.rollback()
    finally:
        if started:  # the app's cleanup: the sweeper is cancelled and awaited
            with contextlib.suppress(StopAsyncIteration):
                await background.__anext__()
        await holder.close()
        await pool.close()
        await conn.close()
