"""The store on a hash-partitioned sessions table (`create_schema(conn, partitions=4)`): the layout
a sharded cluster (Citus) gives the table when it is distributed by `id_hash`, proven here on
plain PostgreSQL.

The whole flow runs through it (create, load, touch, write, merge, end, renew, a user's sessions,
the cap, sweep, the cache's notifications), and `EXPLAIN ANALYZE` shows which partitions each
statement reads or writes: every statement of a request on its own session touches exactly one,
with the plan made for the values (custom) and the plan PostgreSQL reuses for any values
(generic, pruned when it runs). The statements on a user's sessions (the cap's trim after a login,
listing, ending one by its handle, ending the others, ending all) select by `user_id` and so
read every partition: on a sharded cluster they are the multi-shard queries, one per login or
sessions page, never per request."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import SessionCache, create_schema
from aiohttp_session_postgres.tokens import id_hash_of
from support.library_app import STORAGE, USER, library_app, started, with_cookie

PARTITIONS = 4
NAMES = {f"sessions_p{i}" for i in range(PARTITIONS)}


@pytest.fixture
async def partitioned_url(empty_url: str) -> str:
    conn = await asyncpg.connect(empty_url)
    try:
        await create_schema(conn, partitions=PARTITIONS)
    finally:
        await conn.close()
    return empty_url


@pytest.fixture
async def pool(partitioned_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(partitioned_url, min_size=1, max_size=4) as pool:
        yield pool


@pytest.fixture
async def pg(partitioned_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(partitioned_url)
    yield conn
    await conn.close()


def id_hash(cookie: str) -> bytes:
    return id_hash_of(cookie.split(".")[0])


async def rows_per_partition(pg: asyncpg.Connection) -> dict[str, int]:
    rows = await pg.fetch("SELECT tableoid::regclass::text AS part, count(*) FROM sessions GROUP BY 1")
    return {row["part"]: row["count"] for row in rows}


async def test_the_table_is_hash_partitioned_by_id_hash(pg: asyncpg.Connection) -> None:
    strategy, key = await pg.fetchrow(
        "SELECT partstrat::text, pg_get_partkeydef('sessions'::regclass) FROM pg_partitioned_table"
        " WHERE partrelid = 'sessions'::regclass"
    )
    assert (strategy, key) == ("h", "HASH (id_hash)")
    parts = await pg.fetch(
        "SELECT inhrelid::regclass::text AS name FROM pg_inherits WHERE inhparent = 'sessions'::regclass"
    )
    assert {row["name"] for row in parts} == NAMES


async def test_the_whole_flow_runs_on_the_partitioned_table(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    cache = SessionCache()
    client = await library_app(aiohttp_client, pool, cache=cache, max_sessions_per_user=6)
    storage = client.app[STORAGE]

    # Sessions land in the partitions by their ID hash (the parent holds no row itself).
    cookies = [await started(client) for _ in range(6)]
    spread = await rows_per_partition(pg)
    assert sum(spread.values()) == 6
    assert set(spread) <= NAMES

    first = cookies[0]
    assert json.loads(await (await client.get("/read", headers=with_cookie(first))).text()) == {"user_id": USER}
    assert (await client.post("/write", headers=with_cookie(first))).status == 200
    assert (await client.post("/write", headers=with_cookie(first))).status == 200
    assert json.loads(await (await client.get("/read", headers=with_cookie(first))).text())["count"] == 2

    # Writes of one session at once, each to a key of its own: the version conflicts are merged
    # (the row locked in its partition), no key is lost.
    keys = [f"k{i}" for i in range(8)]
    await asyncio.gather(*(client.post(f"/mark?key={key}", headers=with_cookie(first)) for key in keys))
    data = json.loads(await (await client.get("/read", headers=with_cookie(first))).text())
    assert data == {"user_id": USER, "count": 2} | dict.fromkeys(keys, True)

    # Renewal: a new ID (most likely in another partition), the old one dead.
    renewed = await client.post("/renew", headers=with_cookie(first))
    second = renewed.cookies["session"].value
    assert json.loads(await (await client.get("/read", headers=with_cookie(second))).text()) == data
    assert json.loads(await (await client.get("/read", headers=with_cookie(first))).text()) == {}

    # A user's sessions: listed from every partition, one ended by its handle, the cap on login.
    handles = json.loads(await (await client.get("/sessions")).text())
    assert len(handles) == 6
    other = cookies[1]
    other_handle = next(h for h in handles if id_hash(other).hex().startswith(h))
    assert await (await client.post(f"/end-one?handle={other_handle}")).text() == "True"
    assert json.loads(await (await client.get("/read", headers=with_cookie(other))).text()) == {}
    extra = [await started(client) for _ in range(3)]  # 5 live + 3 = 8 > 6: the two oldest go
    assert len(json.loads(await (await client.get("/sessions")).text())) == 6
    assert json.loads(await (await client.get("/read", headers=with_cookie(extra[-1]))).text()) == {"user_id": USER}

    # Logout, "sign out everywhere else", "end all".
    assert (await client.post("/logout", headers=with_cookie(extra[-1]))).status == 200
    assert json.loads(await (await client.get("/read", headers=with_cookie(extra[-1]))).text()) == {}
    assert await (await client.post("/end-others", headers=with_cookie(second))).text() == "4"
    assert json.loads(await (await client.get("/sessions")).text()) == [storage_handle(second)]
    assert await (await client.post("/end-all")).text() == "1"
    assert json.loads(await (await client.get("/read", headers=with_cookie(second))).text()) == {}

    # The sweep removes what expired (the tombstones, once old enough) from every partition.
    await pg.execute("UPDATE sessions SET idle_expires_at = now() - interval '1 hour', replaced_at = NULL")
    left = await pg.fetchval("SELECT count(*) FROM sessions")
    assert left > 0
    assert await storage.sweep(batch_size=2) == left
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0


def storage_handle(cookie: str) -> str:
    from aiohttp_session_postgres.tokens import handle_of

    return handle_of(id_hash(cookie))


async def test_the_cache_hears_changes_made_in_any_partition(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    pool: asyncpg.Pool,
    pg: asyncpg.Connection,
    partitioned_url: str,
) -> None:
    # The notification triggers are the partitioned table's: a change made by another process
    # (here plain SQL) in whichever partition reaches the cache.
    cache = SessionCache()
    client = await library_app(aiohttp_client, pool, cache=cache, touch_interval=60, listen_dsn=partitioned_url)
    assert cache.enabled
    cookies = [await started(client) for _ in range(8)]
    assert len(cache) == 8
    await pg.execute("DELETE FROM sessions")
    for _ in range(100):
        if len(cache) == 0:
            break
        await asyncio.sleep(0.02)
    assert len(cache) == 0
    for cookie in cookies:
        assert json.loads(await (await client.get("/read", headers=with_cookie(cookie))).text()) == {}


async def test_a_truncate_of_one_partition_empties_the_caches(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    pool: asyncpg.Pool,
    pg: asyncpg.Connection,
    partitioned_url: str,
) -> None:
    cache = SessionCache()
    client = await library_app(aiohttp_client, pool, cache=cache, touch_interval=60, listen_dsn=partitioned_url)
    cookies = [await started(client) for _ in range(8)]
    assert len(cache) == 8
    await pg.execute("TRUNCATE sessions_p0, sessions_p1, sessions_p2, sessions_p3")
    for _ in range(100):
        if len(cache) == 0:
            break
        await asyncio.sleep(0.02)
    assert len(cache) == 0
    for cookie in cookies:
        assert json.loads(await (await client.get("/read", headers=with_cookie(cookie))).text()) == {}


async def test_a_partition_name_taken_by_another_table_is_refused(empty_url: str) -> None:
    # Left as it was, the hash values of that partition would have nowhere to go (every login
    # landing there a 500): the creation fails instead, and leaves nothing behind.
    conn = await asyncpg.connect(empty_url)
    try:
        await conn.execute("CREATE TABLE sessions_p1 (note text)")
        with pytest.raises(ValueError, match="has 3 partitions, not 4"):
            await create_schema(conn, partitions=PARTITIONS)
        assert await conn.fetchval("SELECT to_regclass('sessions')") is None
    finally:
        await conn.close()


# -- which partitions each statement touches ------------------------------------------------------


def executed(plan: Any) -> set[str]:
    """Relations of the plan's nodes that ran (EXPLAIN ANALYZE: `Actual Loops` above 0)."""
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if node.get("Relation Name") and node.get("Actual Loops", 0) > 0:
            found.add(node["Relation Name"])
        for child in node.get("Plans", []):
            walk(child)

    walk(plan[0]["Plan"])
    return found


def literal(value: object) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'::bytea"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    assert isinstance(value, int | float), value
    return repr(value)


async def partitions_touched(conn: asyncpg.Connection, mode: str, sql: str, *args: object) -> set[str]:
    """The partitions `sql` reads or writes, run for real and rolled back, as a prepared statement
    under plan_cache_mode `mode` ("force_custom_plan": planned for these values, as asyncpg's
    first executions are; "force_generic_plan": planned once for any values and pruned as it
    runs, as PostgreSQL may choose after five). Touched: a partition the plan scanned (EXPLAIN
    ANALYZE), or one whose backend statistics counted a scan or a written row meanwhile (an
    INSERT is routed to its partition without a scan node)."""
    # EXECUTE takes no bind parameters: the values go in as literals.
    placeholders = ", ".join(literal(arg) for arg in args)
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute(f"SET LOCAL plan_cache_mode = {mode}")
        await conn.execute(f"PREPARE probe AS {sql}")
        before = await activity(conn)
        plan = json.loads(await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE probe({placeholders})"))
        after = await activity(conn)
        written = {name for name, count in after.items() if count != before.get(name, 0)}
        return (executed(plan) | written) & NAMES
    finally:
        await tr.rollback()
        await conn.execute("DEALLOCATE probe")


async def activity(conn: asyncpg.Connection) -> dict[str, int]:
    # pg_stat_xact_* holds this backend's counts not yet reported (flushed at most once a
    # second), earlier transactions' included: so a difference, never the value itself.
    rows = await conn.fetch(
        "SELECT relname, coalesce(seq_scan, 0) + coalesce(idx_scan, 0) + n_tup_ins + n_tup_upd + n_tup_del AS n"
        " FROM pg_stat_xact_user_tables WHERE relname LIKE 'sessions_p%'"
    )
    return {row["relname"]: row["n"] for row in rows}


async def partition_of(conn: asyncpg.Connection, id_hash: bytes) -> int:
    for i in range(PARTITIONS):
        if await conn.fetchval(
            "SELECT satisfies_hash_partition('sessions'::regclass, $1::int, $2::int, $3::bytea)", PARTITIONS, i, id_hash
        ):
            return i
    raise AssertionError("in no partition")


@pytest.mark.parametrize("mode", ["force_custom_plan", "force_generic_plan"])
async def test_which_partitions_each_statement_touches(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, pg: asyncpg.Connection, mode: str
) -> None:
    client = await library_app(aiohttp_client, pool)
    storage = client.app[STORAGE]
    for _ in range(12):
        await started(client)
    live = await pg.fetchval("SELECT id_hash FROM sessions LIMIT 1")
    version = await pg.fetchval("SELECT version FROM sessions WHERE id_hash = $1", live)
    fresh = os.urandom(32)
    while await partition_of(pg, fresh) == await partition_of(pg, live):  # a new ID elsewhere
        fresh = os.urandom(32)
    sql = storage._rows.sql
    ip, agent, data = "203.0.113.7", "test", b"\x00" * 40
    one = {"id_hash": live, "idle_timeout": 1800.0, "client_ip": ip, "user_agent": agent}
    new = {**one, "id_hash": fresh, "user_id": USER, "principal": None, "data": data, "absolute_timeout": 43200.0}
    new |= {"tombstone_seconds": 10.0, "row_idle_timeout": None, "browser_session": False}
    keep = {"remember_idle_timeout": 1800.0, "lifetime": None, "row_idle_timeout": None, "browser_session": None}
    write = {
        "id_hash": live,
        "data": data,
        "user_id": USER,
        "principal": None,
        "idle_timeout": 1800.0,
        "version": version,
        **keep,
    }

    # A request on its own session: one partition, the session's.
    for what, (statement, args) in {
        "load (a read that touches)": (
            sql.load_and_touch,
            {**one, "touch_interval": 0.0, "remember_idle_timeout": 1800.0},
        ),
        "read (inside the touch interval)": (sql.load, {"id_hash": live}),
        "update (a write)": (sql.save, write),
        "update, durable_writes=False": (sql.save_async, write),
        "lock (the merge after a version conflict)": (sql.lock, {"id_hash": live}),
        "end (logout)": (sql.end, {"id_hash": live}),
        "create (a new session, no cookie before)": (sql.create_async, {**new, "replaced": None}),
    }.items():
        assert len(await partitions_touched(pg, mode, statement.sql, *statement.args(**args))) == 1, what

    # A login from a session, and a renewal: the used session's partition and the new one's.
    renew = {k: v for k, v in new.items() if k not in ("absolute_timeout", "tombstone_seconds")} | keep
    for what, (statement, args) in {
        "create (a login from a session)": (sql.create, {**new, "replaced": live}),
        "renew": (sql.renew, {**renew, "replaced": live, "table_key": storage._rows.names.channel}),
    }.items():
        assert len(await partitions_touched(pg, mode, statement.sql, *statement.args(**args))) == 2, what

    # What selects by user_id reads every partition: once per login (the cap) or sessions page.
    for what, (statement, args) in {
        "trim (the cap, after a login)": (sql.trim, {"user_id": USER, "max_sessions": 2}),
        "list a user's sessions": (sql.list_user, {"user_id": USER, "limit": 100}),
        "end one by its handle": (sql.end_by_handle, {"user_id": USER, "handle": live[:8]}),
        "end the others": (sql.end_user, {"user_id": USER, "keep_id_hash": live}),
        "end all": (sql.end_user, {"user_id": USER, "keep_id_hash": None}),
        # A str user's (the principal column): the same.
        "trim, str user": (sql.trim_principal, {"principal": "alice", "max_sessions": 2}),
        "list, str user": (sql.list_principal, {"principal": "alice", "limit": 100}),
        "end one, str user": (sql.end_by_handle_principal, {"principal": "alice", "handle": live[:8]}),
        "end all, str user": (sql.end_principal, {"principal": "alice", "keep_id_hash": None}),
    }.items():
        assert await partitions_touched(pg, mode, statement.sql, *statement.args(**args)) == NAMES, what
