"""PostgresStorage's methods for a user's sessions and its sweep, called directly on real
PostgreSQL: `conn=` runs list_sessions, end_session and end_other_sessions inside the caller's
transaction (they see its uncommitted rows, and its rollback undoes them); end_session answers
whether it ended a live session of that user; list_sessions lists at most 100 by default, most
recently active first; storage.sweep() sweeps the storage's own table and schema, in batches of
1,000 by default, and gives up after its timeout.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import asyncpg
import pytest
from aiohttp_session_postgres import PostgresSession, PostgresStorage, SessionCache, create_schema
from aiohttp_session_postgres.tokens import handle_of
from support.keys import AUTH_KEY, ENC_KEY

ALICE = 1
BOB = 2


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


def storage_on(pool: asyncpg.Pool, **options: Any) -> PostgresStorage:
    return PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], **options)


async def add_sessions(
    conn: asyncpg.Connection,
    user_id: int | None,
    count: int,
    *,
    seen_minutes_ago: int = 0,
    live: bool = True,
    table: str = "public.sessions",
) -> list[bytes]:
    """`count` session rows of `user_id`, the n-th (from 1) last seen `seen_minutes_ago + n`
    minutes ago: their id_hashes, most recently seen first. Live for an hour, or idle-expired."""
    ids = [os.urandom(32) for _ in range(count)]
    idle = "now() + interval '1 hour'" if live else "now() - interval '1 minute'"
    await conn.execute(
        f"INSERT INTO {table} (id_hash, user_id, data, idle_expires_at, absolute_expires_at, last_seen_at)"
        f" SELECT id, $2, '\\x00'::bytea, {idle}, now() + interval '2 hours',"
        " now() - make_interval(mins => $3 + n::int)"
        " FROM unnest($1::bytea[]) WITH ORDINALITY AS t(id, n)",
        ids,
        user_id,
        seen_minutes_ago,
    )
    return ids


async def present(conn: asyncpg.Connection, ids: list[bytes]) -> set[bytes]:
    """Which of `ids` still have a row in public.sessions, as `conn` sees it."""
    rows = await conn.fetch("SELECT id_hash FROM sessions WHERE id_hash = ANY($1::bytea[])", ids)
    return {row["id_hash"] for row in rows}


async def gives_up_within(sweeping: Awaitable[int | None], seconds: float) -> None:
    """`sweeping` raises TimeoutError of its own within `seconds` (a generous bound: a sweep given
    a timeout of 0.5 s; one left with the default 10 s, or none, is still waiting then)."""
    task = asyncio.ensure_future(sweeping)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        pytest.fail(f"the sweep was still waiting after {seconds} s: its timeout was not applied")
    assert isinstance(task.exception(), TimeoutError)


# -- conn=: the caller's transaction ------------------------------------------------------


async def test_list_sessions_on_the_callers_connection_sees_its_uncommitted_rows(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection, lib_url: str
) -> None:
    storage = storage_on(pool)
    committed = await add_sessions(lib_pg, ALICE, 1, seen_minutes_ago=10)
    caller = await asyncpg.connect(lib_url)
    try:
        transaction = caller.transaction()
        await transaction.start()
        uncommitted = await add_sessions(caller, ALICE, 1)

        listed = await storage.list_sessions(ALICE, conn=caller)
        assert [info.handle for info in listed] == [handle_of(uncommitted[0]), handle_of(committed[0])]
        # The pool, outside that transaction, sees only the committed one.
        assert [info.handle for info in await storage.list_sessions(ALICE)] == [handle_of(committed[0])]
        await transaction.rollback()
    finally:
        await caller.close()


# With a cache (CachedRows) too: the layer in front of the rows passes the caller's connection on.
WITH_OR_WITHOUT_CACHE = pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])


@WITH_OR_WITHOUT_CACHE
async def test_end_session_on_the_callers_connection_is_undone_by_its_rollback(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection, lib_url: str, cache: bool
) -> None:
    storage = storage_on(pool, cache=SessionCache() if cache else None)
    ids = await add_sessions(lib_pg, ALICE, 2)
    caller = await asyncpg.connect(lib_url)
    try:
        transaction = caller.transaction()
        await transaction.start()
        assert await storage.end_session(ALICE, handle_of(ids[0]), conn=caller) is True
        assert await present(caller, ids) == {ids[1]}  # ended, within the transaction
        await transaction.rollback()
    finally:
        await caller.close()
    assert await present(lib_pg, ids) == set(ids)  # the rollback undid it


@WITH_OR_WITHOUT_CACHE
async def test_end_other_sessions_on_the_callers_connection_is_undone_by_its_rollback(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection, lib_url: str, cache: bool
) -> None:
    storage = storage_on(pool, cache=SessionCache() if cache else None)
    keep, *others = await add_sessions(lib_pg, ALICE, 3)
    bobs = await add_sessions(lib_pg, BOB, 1)
    everyone = [keep, *others, *bobs]
    caller = await asyncpg.connect(lib_url)
    try:
        transaction = caller.transaction()
        await transaction.start()
        ended = await storage.end_other_sessions(ALICE, PostgresSession(id_hash=keep, data={}), conn=caller)
        assert ended == 2
        assert await present(caller, everyone) == {keep, *bobs}  # ended, within the transaction
        await transaction.rollback()
    finally:
        await caller.close()
    assert await present(lib_pg, everyone) == set(everyone)  # the rollback undid it


@WITH_OR_WITHOUT_CACHE
async def test_end_all_sessions_on_the_callers_connection_is_undone_by_its_rollback(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection, lib_url: str, cache: bool
) -> None:
    storage = storage_on(pool, cache=SessionCache() if cache else None)
    alices = await add_sessions(lib_pg, ALICE, 2)
    bobs = await add_sessions(lib_pg, BOB, 1)
    caller = await asyncpg.connect(lib_url)
    try:
        transaction = caller.transaction()
        await transaction.start()
        assert await storage.end_all_sessions(ALICE, conn=caller) == 2
        assert await present(caller, [*alices, *bobs]) == set(bobs)  # ended, within the transaction
        await transaction.rollback()
    finally:
        await caller.close()
    assert await present(lib_pg, [*alices, *bobs]) == {*alices, *bobs}  # the rollback undid it


# -- end_session's answer -------------------------------------------------------------------


async def test_end_session_is_true_only_when_it_ended_a_live_session_of_that_user(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    storage = storage_on(pool)
    first, second = await add_sessions(lib_pg, ALICE, 2)
    (bobs,) = await add_sessions(lib_pg, BOB, 1)
    (expired,) = await add_sessions(lib_pg, ALICE, 1, live=False)
    everyone = [first, second, bobs, expired]

    assert await storage.end_session(ALICE, handle_of(first)) is True
    assert await present(lib_pg, everyone) == {second, bobs, expired}

    assert await storage.end_session(ALICE, handle_of(first)) is False  # already ended
    assert await storage.end_session(ALICE, handle_of(bobs)) is False  # another user's
    assert await storage.end_session(ALICE, handle_of(expired)) is False  # not live
    for malformed in ("", "not-a-handle", handle_of(second)[:-1], handle_of(second).upper(), second.hex()):
        assert await storage.end_session(ALICE, malformed) is False, malformed
    assert await present(lib_pg, everyone) == {second, bobs, expired}

    assert await storage.end_session(ALICE, handle_of(second)) is True
    assert await present(lib_pg, everyone) == {bobs, expired}


# -- list_sessions' default limit -------------------------------------------------------------


async def test_list_sessions_lists_the_100_most_recently_active_by_default(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    ids = await add_sessions(lib_pg, ALICE, 101)  # most recently seen first
    await add_sessions(lib_pg, BOB, 3)
    await add_sessions(lib_pg, ALICE, 2, live=False)

    listed = await storage_on(pool).list_sessions(ALICE)
    assert [info.handle for info in listed] == [handle_of(id_hash) for id_hash in ids[:100]]
    assert len(await storage_on(pool).list_sessions(ALICE, limit=200)) == 101


# -- storage.sweep() ---------------------------------------------------------------------------


async def test_storage_sweep_sweeps_its_own_table_and_schema_in_batches_of_1000(
    lib_url: str, lib_pg: asyncpg.Connection
) -> None:
    """A storage on `elsewhere.app_sessions`: its sweep() empties that table of expired rows, in
    DELETE statements of 1,000 rows (a statement-level trigger records each one's count), and
    leaves public.sessions alone."""
    await lib_pg.execute("CREATE SCHEMA elsewhere")
    await create_schema(lib_pg, table="app_sessions", schema="elsewhere")
    await lib_pg.execute("CREATE TABLE sweep_batches (seq serial PRIMARY KEY, deleted bigint NOT NULL)")
    await lib_pg.execute(
        "CREATE FUNCTION record_sweep_batch() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN INSERT INTO sweep_batches (deleted) SELECT count(*) FROM old; RETURN NULL; END $$"
    )
    await lib_pg.execute(
        "CREATE TRIGGER record_sweep_batch AFTER DELETE ON elsewhere.app_sessions"
        " REFERENCING OLD TABLE AS old FOR EACH STATEMENT EXECUTE FUNCTION record_sweep_batch()"
    )
    await add_sessions(lib_pg, None, 1001, live=False, table="elsewhere.app_sessions")
    live = await add_sessions(lib_pg, ALICE, 3, table="elsewhere.app_sessions")
    await add_sessions(lib_pg, None, 4, live=False)  # public.sessions

    async with asyncpg.create_pool(lib_url, min_size=1, max_size=2) as pool:
        assert await storage_on(pool, table="app_sessions", schema="elsewhere").sweep() == 1001

    batches = [row["deleted"] for row in await lib_pg.fetch("SELECT deleted FROM sweep_batches ORDER BY seq")]
    assert batches == [1000, 1]
    remaining = {row["id_hash"] for row in await lib_pg.fetch("SELECT id_hash FROM elsewhere.app_sessions")}
    assert remaining == set(live)
    assert await lib_pg.fetchval("SELECT count(*) FROM public.sessions") == 4


async def test_storage_sweep_gives_up_after_its_timeout(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection, lib_url: str
) -> None:
    """The expired rows are locked by another connection: storage.sweep(timeout=0.5) raises
    TimeoutError long before the default 10 s would; once they are free it deletes them all."""
    storage = storage_on(pool)
    await add_sessions(lib_pg, None, 3, live=False)
    holder = await asyncpg.connect(lib_url)
    try:
        held = holder.transaction()
        await held.start()
        await holder.execute("SELECT 1 FROM sessions FOR UPDATE")
        await gives_up_within(storage.sweep(timeout=0.5), 5)
        await held.rollback()
    finally:
        await holder.close()
    assert await storage.sweep() == 3
