"""The library on a real Citus cluster (a coordinator and two workers, built from source and run
by tests/support/citus.py), its table distributed by id_hash: every operation with the guarantees
it has on one PostgreSQL, where each statement runs, and a worker or the coordinator that goes
away. Through the library's own app (support/library_app.py), with citus=True.

Where Citus changes a guarantee (the README's "Beyond one database"), a test shows what happens
instead: a write checks expiry at its statement's start, since Citus refuses the clock in a
modification.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import (
    SCHEMA_VERSION,
    SessionCache,
    create_schema,
    schema_statements,
    schema_version,
)
from aiohttp_session_postgres.sql import TOMBSTONE_SECONDS, Statements
from aiohttp_session_postgres.tokens import handle_of, id_hash_of
from support.citus import CitusCluster, worker_of
from support.library_app import STORAGE, USER, library_app, read, started, with_cookie
from support.lifetime_app import lifetime_app, only_cookie, sent
from support.logs import LOGGER, LibraryLog
from support.paths import REPO_ROOT

pytestmark = pytest.mark.citus

Client = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def pool(citus_url: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(citus_url)
    try:
        await create_schema(conn, citus=True)
    finally:
        await conn.close()
    async with asyncpg.create_pool(citus_url, min_size=1, max_size=8) as pool:
        yield pool


@pytest.fixture
async def pg(pool: asyncpg.Pool, citus_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(citus_url)
    yield conn
    await conn.close()


async def on_citus(aiohttp_client: Client, pool: asyncpg.Pool, **options: Any) -> TestClient:
    return await library_app(aiohttp_client, pool, citus=True, **options)


def row_of(cookie: str) -> bytes:
    return id_hash_of(cookie.split(".")[0])


async def anonymous(client: TestClient) -> str:
    """A new anonymous session (a first write): its cookie."""
    return (await client.post("/mark?key=cart")).cookies["session"].value


async def live_sessions(pg: asyncpg.Connection) -> int:
    return await pg.fetchval("SELECT count(*) FROM sessions WHERE idle_expires_at > now()")


# -- the schema, three ways ---------------------------------------------------------------------


async def test_create_schema_distributes_the_table_by_id_hash_without_triggers(citus_url: str) -> None:
    conn = await asyncpg.connect(citus_url)
    try:
        assert await create_schema(conn, citus=True) is True
        assert await create_schema(conn, citus=True) is False  # applied again: nothing to do
        distributed = await conn.fetchrow(
            "SELECT partmethod::text, column_to_column_name(logicalrelid, partkey) AS key FROM pg_dist_partition"
            " WHERE logicalrelid = 'sessions'::regclass"
        )
        assert (distributed["partmethod"], distributed["key"]) == ("h", "id_hash")
        triggers = "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'sessions'::regclass AND NOT tgisinternal"
        assert await conn.fetchval(triggers) == 0
        for statement in schema_statements(citus=True):  # the printed SQL, again, on the distributed table
            await conn.execute(statement)  # as psql runs it: CREATE INDEX CONCURRENTLY outside a transaction
        assert await schema_version(conn) == SCHEMA_VERSION
    finally:
        await conn.close()


async def test_an_existing_table_with_its_triggers_and_rows_is_distributed(citus_url: str) -> None:
    conn = await asyncpg.connect(citus_url)
    try:
        await create_schema(conn, citus=False)  # the one-PostgreSQL layout, triggers and all
        await conn.execute(
            "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
            " SELECT sha256(i::text::bytea), '\\x00', now() + interval '1 hour', now() + interval '2 hours'"
            " FROM generate_series(1, 50) i"
        )
        assert await create_schema(conn, citus=True) is True
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 50
        assert await conn.fetchval("SELECT count(*) FROM pg_dist_partition") == 1
    finally:
        await conn.close()


def test_the_cli_prints_the_distributed_schema_and_sweeps_with_citus(citus_url: str) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "aiohttp_session_postgres", *args]
        return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False)

    printed = cli("schema", "--citus")
    assert printed.returncode == 0, printed.stderr
    assert "create_distributed_table" in printed.stdout
    assert "CREATE TRIGGER" not in printed.stdout

    async def apply() -> None:
        conn = await asyncpg.connect(citus_url)
        try:
            transactional, outside = printed.stdout.split("COMMIT;\n")  # as psql runs it
            await conn.execute(transactional + "COMMIT;")
            await conn.execute(outside)
            await conn.execute(
                "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
                " SELECT sha256(i::text::bytea), '\\x00', now() - interval '1 hour', now() + interval '1 hour'"
                " FROM generate_series(1, 30) i"
            )
        finally:
            await conn.close()

    asyncio.run(apply())
    swept = cli("sweep", "--dsn", citus_url, "--citus")
    assert (swept.returncode, swept.stdout.strip()) == (0, "removed 30 expired sessions"), swept.stderr


async def test_create_schema_distributes_by_itself_where_citus_is_installed_and_the_storage_finds_out(
    aiohttp_client: Client, citus_url: str, lib_log: LibraryLog
) -> None:
    """No keyword anywhere: create_schema sees the extension, the storage sees the distributed
    table at its first operation (and ignores durable_writes=False there, saying so)."""
    conn = await asyncpg.connect(citus_url)
    try:
        assert await create_schema(conn) is True
        assert await conn.fetchval("SELECT partmethod::text FROM pg_dist_partition") == "h"
    finally:
        await conn.close()
    async with asyncpg.create_pool(citus_url, min_size=1, max_size=4) as pool:
        client = await library_app(aiohttp_client, pool, durable_writes=False)
        first = await started(client)
        second = await started(client, await anonymous(client))
        assert (await client.post("/write", headers=with_cookie(first))).status == 200
        assert await (await client.post("/end-others", headers=with_cookie(second))).text() == "1"
        assert await read(client, first) == {}
        assert await read(client, second) == {"user_id": USER}
        assert await client.app[STORAGE].sweep() == 0
        # Told otherwise, the storage follows the table and says so.
        told = await library_app(aiohttp_client, pool, citus=False)
        third = await started(told)
        assert (await told.post("/write", headers=with_cookie(third))).status == 200
        assert await read(told, third) == {"user_id": USER, "count": 1}
    lines = lib_log.lines(LOGGER)
    assert "durable_writes=False cannot run on Citus: every write waits for the flush" in lines
    assert "citus=False, but the table public.sessions is distributed by Citus: following the table" in lines


async def test_the_printed_schema_for_citus_makes_nothing_where_citus_is_missing(empty_url: str) -> None:
    """The CLI's SQL is one transaction that starts by checking for the extension: run where it
    is missing (a slip of DATABASE_URL), it fails and leaves no table behind."""
    printed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aiohttp_session_postgres", "schema", "--citus"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    conn = await asyncpg.connect(empty_url)
    try:
        with pytest.raises(asyncpg.RaiseError, match="the citus extension is not installed"):
            await conn.execute(printed.stdout.split("COMMIT;\n")[0] + "COMMIT;")  # psql stops there
    finally:
        await conn.close()
    conn = await asyncpg.connect(empty_url)
    try:
        assert await conn.fetchval("SELECT to_regclass('sessions')") is None
    finally:
        await conn.close()


async def test_distributing_leaves_no_copy_of_the_rows_on_the_coordinator(citus_url: str) -> None:
    conn = await asyncpg.connect(citus_url)
    try:
        await create_schema(conn, citus=False)  # a table of the coordinator's own, with rows
        await conn.execute(
            "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
            " SELECT sha256(i::text::bytea), '\\x00', now() + interval '1 hour', now() + interval '2 hours'"
            " FROM generate_series(1, 200) i"
        )
        assert await create_schema(conn) is True
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 200  # on the shards
        assert await conn.fetchval("SELECT pg_relation_size('sessions')") == 0  # the coordinator's copy
    finally:
        await conn.close()


def test_the_storage_refuses_durable_writes_off_on_citus() -> None:
    from aiohttp_session_postgres import ArgumentError, PostgresStorage

    with pytest.raises(ArgumentError, match=r"^durable_writes=False cannot run on Citus \(citus=True\)$"):
        PostgresStorage(None, authentication_keys=[b"k" * 32], encryption_keys=[b"e" * 32], citus=True,  # type: ignore[arg-type]
                        durable_writes=False)  # fmt: skip


# -- every operation, through HTTP ------------------------------------------------------------


async def test_a_login_uses_up_its_session_on_another_worker_once(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    """The pre-login session and the new one on shards of different workers: one statement, a
    two-phase commit. The same pre-login cookie, sent by five logins at once (a double click,
    tabs), makes one session."""
    client = await on_citus(aiohttp_client, pool)
    workers = set()
    while len(workers) < 2:  # a login whose two sessions live on different workers
        before = await anonymous(client)
        after = await started(client, before)
        workers = {await worker_of(pg, row_of(before)), await worker_of(pg, row_of(after))}
    assert await read(client, after) == {"user_id": USER}
    assert await read(client, before) == {}  # used up
    assert await pg.fetchval("SELECT replaced_at IS NOT NULL FROM sessions WHERE id_hash = $1", row_of(before))

    planted = await anonymous(client)
    responses = await asyncio.gather(*(client.post("/start", headers=with_cookie(planted)) for _ in range(5)))
    assert sorted(r.status for r in responses) == [200] * 5
    made = [r.cookies["session"].value for r in responses if "session" in r.cookies]
    assert len(made) == 1
    assert await read(client, planted) == {}
    # Within the tombstone's time the same cookie still starts nothing.
    again = await client.post("/start", headers=with_cookie(planted))
    assert "session" not in again.cookies
    assert TOMBSTONE_SECONDS >= 5


async def test_reads_writes_and_concurrent_writes_of_one_session(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    """A read touches; a write is one versioned UPDATE; writes racing each other merge (each
    keeps its own key); a session ended meanwhile is not brought back by a write."""
    client = await on_citus(aiohttp_client, pool)
    cookie = await started(client)
    await pg.execute("UPDATE sessions SET last_seen_at = now() - interval '5 minutes'")
    assert await read(client, cookie) == {"user_id": USER}
    assert await pg.fetchval("SELECT now() - last_seen_at < interval '1 minute' FROM sessions")  # touched
    assert (await client.post("/write", headers=with_cookie(cookie))).status == 200
    keys = [f"k{i}" for i in range(8)]
    responses = await asyncio.gather(*(client.post(f"/mark?key={k}", headers=with_cookie(cookie)) for k in keys))
    assert {r.status for r in responses} == {200}
    data = await read(client, cookie)
    assert {k for k in keys if data.get(k) is True} == set(keys)  # every one of them merged in
    assert data["count"] == 1
    late = asyncio.ensure_future(client.post("/write-after?seconds=1", headers=with_cookie(cookie)))
    await asyncio.sleep(0.3)
    assert (await client.post("/logout", headers=with_cookie(cookie))).status == 200
    assert (await late).status == 200
    assert await read(client, cookie) == {}
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0


async def test_renewal_logout_and_a_users_sessions(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    client = await on_citus(aiohttp_client, pool)
    first = await started(client)
    assert (await client.post("/write", headers=with_cookie(first))).status == 200
    renewed = (await client.post("/renew", headers=with_cookie(first))).cookies["session"].value
    assert await read(client, first) == {}
    assert await read(client, renewed) == {"user_id": USER, "count": 1}
    others = [await started(client) for _ in range(3)]
    listed = await (await client.get("/sessions")).json()
    assert sorted(listed) == sorted(handle_of(row_of(c)) for c in [renewed, *others])
    assert await (await client.post(f"/end-one?handle={handle_of(row_of(others[0]))}")).text() == "True"
    assert await (await client.post(f"/end-one?handle={handle_of(row_of(others[0]))}")).text() == "False"
    assert await (await client.post("/end-others", headers=with_cookie(others[1]))).text() == "2"
    assert await read(client, others[1]) == {"user_id": USER}
    assert await (await client.post("/end-all")).text() == "1"
    assert await live_sessions(pg) == 0
    last = await started(client)
    logout = await client.post("/logout", headers=with_cookie(last))
    assert "Max-Age=0" in logout.headers["Set-Cookie"]
    assert await read(client, last) == {}


async def test_the_cap_holds_under_concurrent_logins(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    client = await on_citus(aiohttp_client, pool, max_sessions_per_user=3, database_timeout=5)
    responses = await asyncio.gather(*(client.post("/start") for _ in range(12)))
    assert {r.status for r in responses} == {200}
    assert await live_sessions(pg) == 3


async def test_ending_all_of_a_users_sessions_catches_a_renewal_in_flight(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection, citus_url: str
) -> None:
    """The renewal holds the user's lock (shared, on the coordinator) while its statement waits
    on the old row; the ending waits for that lock, so it sees the renewal's new session."""
    client = await on_citus(aiohttp_client, pool, touch_interval=60, database_timeout=8)
    stolen = await started(client)
    holder = await asyncpg.connect(citus_url)
    try:
        tr = holder.transaction()
        await tr.start()
        await holder.execute("SELECT 1 FROM sessions WHERE id_hash = $1 FOR UPDATE", row_of(stolen))
        renewing = asyncio.ensure_future(client.post("/renew", headers=with_cookie(stolen)))
        await asyncio.sleep(0.5)  # the renewal has its user lock and waits on the row
        ending = asyncio.ensure_future(client.post("/end-all"))
        await asyncio.sleep(0.5)  # the ending waits for the user lock
        assert not ending.done()
        await tr.rollback()
        renewed, ended = await renewing, await ending
    finally:
        await holder.close()
    assert renewed.status == 200
    assert "session" in renewed.cookies
    assert await ended.text() == "1"  # the renewal's new session, ended with the rest
    assert await live_sessions(pg) == 0


async def test_a_save_held_past_the_idle_deadline_does_not_bring_the_session_back(
    aiohttp_client: Client, pool: asyncpg.Pool
) -> None:
    client = await on_citus(aiohttp_client, pool, idle_timeout=2, absolute_timeout=60, touch_interval=1)
    cookie = await started(client)
    late = await client.post("/write-after?seconds=3", headers=with_cookie(cookie))
    assert late.status == 200
    assert "session" not in late.cookies
    assert await read(client, cookie) == {}


async def test_a_write_that_waited_for_the_row_past_the_idle_deadline_lands_on_citus(
    aiohttp_client: Client, pool: asyncpg.Pool, citus_url: str
) -> None:
    """The difference Citus makes (README): a write checks expiry against its statement's start
    (now(), which the coordinator sets; Citus refuses clock_timestamp() in a modification), so a
    write that began before the idle deadline and waited on the row's lock past it lands, and the
    session lives on until that start plus the idle timeout. The wait is bounded by
    database_timeout. On one PostgreSQL the same write lands nothing
    (tests/library/test_guarantees.py)."""
    client = await on_citus(aiohttp_client, pool, idle_timeout=3, absolute_timeout=60, touch_interval=2.9,
                            database_timeout=5)  # fmt: skip
    cookie = await started(client)
    await asyncio.sleep(2.2)  # 0.8 s before the idle deadline; no touch due (2.9 s)
    holder = await asyncpg.connect(citus_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM sessions WHERE id_hash = $1 FOR UPDATE", row_of(cookie))
            write = asyncio.ensure_future(client.post("/write", headers=with_cookie(cookie)))
            await asyncio.sleep(1.5)  # the write's statement waits on the worker; the deadline passes
            assert await holder.fetchval(
                "SELECT idle_expires_at < clock_timestamp() FROM sessions WHERE id_hash = $1", row_of(cookie)
            )
        response = await write
    finally:
        await holder.close()
    assert response.status == 200
    assert await read(client, cookie) == {"user_id": USER, "count": 1}  # back, past its old deadline


async def test_a_logout_through_one_process_is_refused_by_anothers_cache(
    aiohttp_client: Client, pool: asyncpg.Pool, citus_url: str
) -> None:
    """Two processes with caches listening on the coordinator: the library's own notification
    (no trigger on Citus) reaches the other within the bound the README gives (1 s here)."""
    a = await on_citus(aiohttp_client, pool, cache=SessionCache(max_age=60), listen_dsn=citus_url, touch_interval=60)
    b = await on_citus(aiohttp_client, pool, cache=SessionCache(max_age=60), listen_dsn=citus_url, touch_interval=60)
    cookie = await started(a)
    assert await read(b, cookie) == {"user_id": USER}  # now cached in b
    assert (await a.post("/write", headers=with_cookie(cookie))).status == 200
    await _until(lambda: read(b, cookie), {"user_id": USER, "count": 1})
    assert (await a.post("/logout", headers=with_cookie(cookie))).status == 200
    await _until(lambda: read(b, cookie), {})
    other = await started(a)
    assert await read(b, other) == {"user_id": USER}
    assert (await b.post("/end-all")).status == 200
    await _until(lambda: read(a, other), {})


async def _until(probe: Callable[[], Awaitable[object]], expected: object, within: float = 1.0) -> None:
    deadline = time.monotonic() + within
    while (seen := await probe()) != expected:
        assert time.monotonic() < deadline, f"still {seen!r} after {within} s"
        await asyncio.sleep(0.02)


# A worker that loses the coordinator's connections as soon as its part of a two-phase commit is
# prepared (between the coordinator's commit and its COMMIT PREPARED, the moment Citus only warns).
_TERMINATE_AFTER_PREPARE = """
DO $$
DECLARE
    until timestamptz := clock_timestamp() + interval '5 seconds';
BEGIN
    WHILE clock_timestamp() < until LOOP
        IF EXISTS (SELECT FROM pg_prepared_xacts WHERE database = current_database()) THEN
            PERFORM pg_terminate_backend(pid) FROM pg_stat_activity
            WHERE application_name LIKE 'citus_internal%' AND pid <> pg_backend_pid() AND datname = current_database();
            RAISE NOTICE 'terminated';
            RETURN;
        END IF;
    END LOOP;
END
$$;
"""


async def test_a_revocation_whose_commit_a_worker_missed_is_recovered_before_it_is_answered(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection, citus_cluster: CitusCluster, citus_url: str
) -> None:
    """Ending a user's sessions on both workers is a two-phase commit. When a worker loses its
    connection after PREPARE, Citus commits anyway and only warns; the worker's rows would stay
    live until its recovery, a minute later. The library recovers them at once, before it
    answers (or answers 503, and the browser asks again): no revoked session is served after the
    answer. The sabotage is a race the worker's poller usually wins; it is tried until it does."""
    client = await on_citus(aiohttp_client, pool, database_timeout=5, touch_interval=60)
    sabotaged = False
    for _ in range(5):
        cookies: list[str] = []
        while len(cookies) < 4 or len({await worker_of(pg, row_of(cookie)) for cookie in cookies}) < 2:
            cookies.append(await started(client))
        saboteur = await asyncpg.connect(citus_cluster.workers[0].url(citus_url.rsplit("/", 1)[1]))
        notices: list[str] = []
        saboteur.add_log_listener(lambda _c, message, seen=notices: seen.append(message.message))
        try:
            watching = asyncio.ensure_future(saboteur.execute(_TERMINATE_AFTER_PREPARE))
            await asyncio.sleep(0.3)
            ended = await client.post("/end-all")
            while ended.status == 503:  # not acknowledged: asked again, as a browser would
                ended = await client.post("/end-all")
            await asyncio.wait_for(watching, 10)
        finally:
            await saboteur.close()
        assert ended.status == 200
        for cookie in cookies:
            assert await read(client, cookie) == {}  # at once, not a minute later
        assert await live_sessions(pg) == 0
        if notices == ["terminated"]:  # the worker did lose the coordinator's connections
            sabotaged = True
            break
    assert sabotaged


async def test_what_spans_workers_is_notified_again_once_every_worker_has_committed(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection, citus_url: str
) -> None:
    """In a two-phase commit the coordinator commits before the workers: a notification in its
    transaction can wake a listener while a worker still shows the old row, and a load then
    would cache what was just revoked. So it is sent once more after the commit has returned;
    a write of one row (one worker, committed before the coordinator) is notified once."""
    client = await on_citus(aiohttp_client, pool)
    cookies: list[str] = []
    while len(cookies) < 6 or len({await worker_of(pg, row_of(cookie)) for cookie in cookies}) < 2:
        cookies.append(await started(client))
    heard: list[str] = []
    listener = await asyncpg.connect(citus_url)
    await listener.add_listener("public.sessions", lambda *args: heard.append(args[-1]))
    try:
        assert (await client.post("/write", headers=with_cookie(cookies[0]))).status == 200
        assert await (await client.post("/end-all")).text() == str(len(cookies))
        await _until(lambda: _count(heard), 1 + 2 * len(cookies))
    finally:
        await listener.close()
    assert heard[0] == f"{row_of(cookies[0]).hex()}:2"
    assert sorted(heard[1:]) == sorted(2 * [row_of(cookie).hex() for cookie in cookies])


async def _count(items: list[str]) -> int:
    return len(items)


@pytest.mark.slow
async def test_a_worker_that_crashes_under_writes_is_a_503_never_a_500(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection, citus_cluster: CitusCluster
) -> None:
    """A worker backend killed (PostgreSQL resets every connection of that worker): Citus
    reports it as an internal error (XX000), which the library counts as the database being
    unavailable."""
    client = await on_citus(aiohttp_client, pool, database_timeout=1.5, touch_interval=0)
    first = citus_cluster.workers[0].port
    cookies: list[str] = []
    while len(cookies) < 8:
        cookie = await started(client)
        if await worker_of(pg, row_of(cookie)) == first:
            cookies.append(cookie)
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def load(i: int) -> None:
        n = 0
        while not stop.is_set():
            cookie = cookies[(i + n) % len(cookies)]
            n += 1
            for method, path in (("POST", "/write"), ("GET", "/read"), ("POST", "/start")):
                statuses[(await client.request(method, path, headers=with_cookie(cookie))).status] += 1

    loads = [asyncio.ensure_future(load(i)) for i in range(6)]
    await asyncio.sleep(1)
    os.kill(_a_client_backend(citus_cluster.workers[0].data), signal.SIGKILL)
    await asyncio.sleep(5)
    stop.set()
    await asyncio.gather(*loads)
    assert 500 not in statuses, statuses
    assert statuses[200] > 0


def _a_client_backend(data: Path) -> int:
    """A backend serving a client (the coordinator) on the server whose data folder is `data`."""
    postmaster = int((data / "postmaster.pid").read_text().split()[0])
    children = [int(p) for p in Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()]
    return next(pid for pid in children if "postgres: postgres" in Path(f"/proc/{pid}/cmdline").read_text())


# -- where each statement runs ------------------------------------------------------------------


async def tasks_of(conn: asyncpg.Connection, sql: str, args: tuple[object, ...]) -> tuple[int, set[str]]:
    """(Citus's task count, the nodes those tasks run on) for `sql`, run and rolled back."""
    tr = conn.transaction()
    await tr.start()
    try:
        await conn.execute("SET LOCAL citus.explain_all_tasks = on")  # else one task of many is shown
        plan = [row[0] for row in await conn.fetch(f"EXPLAIN (ANALYZE, VERBOSE) {sql}", *args)]
    finally:
        await tr.rollback()
    counts = [int(line.split(":")[1]) for line in plan if "Task Count:" in line]
    nodes = {line.split("port=")[1].split()[0] for line in plan if "Node: host=" in line}
    return sum(counts), nodes


async def test_each_per_request_statement_runs_on_one_shard_of_one_worker(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    client = await on_citus(aiohttp_client, pool)
    cookie = await started(client)
    live = row_of(cookie)
    version = await pg.fetchval("SELECT version FROM sessions WHERE id_hash = $1", live)
    sql = Statements('"public"."sessions"', durable_writes=True, citus=True)
    client_details = {"client_ip": "203.0.113.7", "user_agent": "test"}
    keep_lifetime = {"remember_idle_timeout": 1800.0, "lifetime": None, "row_idle_timeout": None,
                     "browser_session": None}  # fmt: skip
    new_lifetime = {**keep_lifetime, "lifetime": 86400.0, "row_idle_timeout": 3600, "browser_session": False}
    per_request = {
        "load and touch": (sql.load_and_touch, {"id_hash": live, "touch_interval": 0.0, "idle_timeout": 1800.0,
                                                "remember_idle_timeout": 1800.0, **client_details}),
        "load": (sql.load, {"id_hash": live}),
        "save (a write)": (sql.save, {"id_hash": live, "data": b"\x00" * 40, "user_id": USER, "principal": None,
                                      "idle_timeout": 1800.0, "version": version, **keep_lifetime}),
        "save with a new lifetime (session.max_age)": (
            sql.save, {"id_hash": live, "data": b"\x00" * 40, "user_id": USER, "principal": None,
                       "idle_timeout": 1800.0, "version": version, **new_lifetime}),
        "lock (a merge)": (sql.lock, {"id_hash": live}),
        "end (logout)": (sql.end, {"id_hash": live}),
    }  # fmt: skip
    for what, (statement, values) in per_request.items():
        tasks, nodes = await tasks_of(pg, statement.sql, statement.args(**values))
        assert (tasks, len(nodes)) == (1, 1), what
    # What fans out: once per login (the cap), per sessions page, per ending of a user's sessions.
    fan_out = {
        "trim (the cap, after a login)": (sql.trim, {"user_id": USER, "max_sessions": 10}),
        "list a user's sessions": (sql.list_user, {"user_id": USER, "limit": 100}),
        "end all of a user's": (sql.end_user, {"user_id": USER, "keep_id_hash": None}),
        # The same for a str user (the principal column): routed the same way.
        "trim, str user": (sql.trim_principal, {"principal": "alice", "max_sessions": 10}),
        "list, str user": (sql.list_principal, {"principal": "alice", "limit": 100}),
        "end all, str user": (sql.end_principal, {"principal": "alice", "keep_id_hash": None}),
    }
    measured = {}
    for what, (statement, values) in fan_out.items():
        tasks, nodes = await tasks_of(pg, statement.sql, statement.args(**values))
        measured[what] = (tasks, len(nodes))
    # Every shard (32, Citus's default) of both workers; the trim reads the user's rows in one
    # pass (its ORDER BY ... OFFSET, planned on the coordinator) and deletes in a second.
    assert measured == {
        "trim (the cap, after a login)": (64, 2),
        "list a user's sessions": (32, 2),
        "end all of a user's": (32, 2),
        "trim, str user": (64, 2),
        "list, str user": (32, 2),
        "end all, str user": (32, 2),
    }


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_stopped_worker_costs_only_its_own_sessions_and_loses_nothing(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection, citus_cluster: CitusCluster
) -> None:
    client = await on_citus(aiohttp_client, pool, database_timeout=1.5, touch_interval=60)
    by_worker: dict[int, list[str]] = {}
    while min((len(v) for v in by_worker.values()), default=0) < 3 or len(by_worker) < 2:
        cookie = await started(client)
        assert (await client.post("/write", headers=with_cookie(cookie))).status == 200  # acknowledged
        by_worker.setdefault(await worker_of(pg, row_of(cookie)), []).append(cookie)
    ports = [int(url.rsplit(":", 1)[1].split("/")[0]) for url in citus_cluster.worker_urls]
    stopped = ports[0]
    citus_cluster.stop_worker(0)
    try:
        for cookie in by_worker[stopped]:
            started_at = time.monotonic()
            response = await client.get("/read", headers=with_cookie(cookie))
            assert response.status == 503
            assert time.monotonic() - started_at < 1.5 + 1.0  # the database timeout, and some slack
        for cookie in by_worker[ports[1]]:
            assert await read(client, cookie) == {"user_id": USER, "count": 1}
    finally:
        citus_cluster.start_worker(0)
    for cookies in by_worker.values():
        for cookie in cookies:
            await _until(lambda c=cookie: read(client, c), {"user_id": USER, "count": 1}, within=15)


@pytest.mark.slow
async def test_a_coordinator_restart_is_a_brief_outage(
    aiohttp_client: Client, pool: asyncpg.Pool, citus_cluster: CitusCluster
) -> None:
    client = await on_citus(aiohttp_client, pool, database_timeout=1.5, touch_interval=60)
    cookie = await started(client)
    assert (await client.post("/write", headers=with_cookie(cookie))).status == 200
    citus_cluster.restart_coordinator()
    await _until(lambda: _status(client, cookie), 200, within=15)  # 503s meanwhile, then served
    assert await read(client, cookie) == {"user_id": USER, "count": 1}


async def _status(client: TestClient, cookie: str) -> int:
    return (await client.get("/read", headers=with_cookie(cookie))).status


async def test_each_sessions_lifetime_on_citus(
    aiohttp_client: Client, pool: asyncpg.Pool, pg: asyncpg.Connection
) -> None:
    """session.max_age (issue 21): a remembered session, a change of lifetime on a loaded one and
    a renewal that keeps it, each statement as Citus takes it (no STABLE function on a column)."""
    client = await lifetime_app(
        aiohttp_client, pool, citus=True, idle_timeout=30, absolute_timeout=300,
        max_remember_timeout=3600, remember_idle_timeout=600,
    )  # fmt: skip
    response = await client.post("/login?max_age=3600")
    assert response.status == 200, await response.text()
    _name, morsel = only_cookie(response)
    cookie = morsel.value
    assert 3599 <= int(morsel["max-age"]) <= 3600
    lifetime = (
        "SELECT idle_timeout, browser_session, extract(epoch FROM absolute_expires_at - created_at)::int"
        " FROM sessions WHERE id_hash = $1"
    )
    assert tuple(await pg.fetchrow(lifetime, row_of(cookie))) == (600, False, 3600)
    assert (await (await client.post("/write", headers=sent("session", cookie))).json())["max_age"] == 3600
    info = await (await client.get("/info", headers=sent("session", cookie))).json()
    assert (info["data"], info["max_age"]) == ({"user_id": 1, "count": 1}, 3600)
    forget = await client.post("/max-age?value=none", headers=sent("session", cookie))
    assert forget.status == 200, await forget.text()
    assert "Max-Age" not in forget.headers["Set-Cookie"]
    assert tuple(await pg.fetchrow(lifetime, row_of(cookie))) == (None, True, 300)
    renewed = await client.post("/renew", headers=sent("session", cookie))
    _name, fresh = only_cookie(renewed)
    assert "Max-Age" not in renewed.headers["Set-Cookie"]
    assert tuple(await pg.fetchrow(lifetime, row_of(fresh.value))) == (None, True, 300)
