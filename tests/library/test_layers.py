"""The layers of the split store, each tested where it is: the rows (rows.py), the cache in front
of them (cache.py's CachedRows) and its listener, the statements (sql.py), the cookie
(cookies.py), and what storage.py keeps of HTTP (the client details, the 503). Each test here
covers what a mutant of the split's mutation run survived (tests/MUTANTS.md, "The split into
layers"): a real PostgreSQL, no demo app.

Some cache tests listen on a channel nothing notifies (`deaf_cache`): the cache is on, and hears
of no change, as a process is until a notification arrives. What such a cache drops, this process
dropped itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, make_mocked_request
from aiohttp_session_postgres import DatabaseUnavailable, PostgresStorage, SessionCache
from aiohttp_session_postgres.cache import CachedRows
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.rows import Client, Created, Gone, NotCreated, NotSaved, Row, SessionRows
from aiohttp_session_postgres.schema import TableNames
from aiohttp_session_postgres.sql import TOMBSTONE_SECONDS, Statement
from support.keys import AUTH_KEY, ENC_KEY
from support.library_app import library_app, started, with_cookie
from support.logs import LibraryLog
from support.proxy import SilenceableProxy

KEY = b"k" * 32
CLIENT = Client("192.0.2.1", "test agent")


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


def settings(**overrides: Any) -> dict[str, Any]:
    return {
        "names": TableNames(),
        "idle_timeout": 1800.0,
        "absolute_timeout": 43200.0,
        "touch_interval": 60.0,
        "database_timeout": 2.0,
        "max_sessions_per_user": None,
        "durable_writes": True,
        **overrides,
    }


def rows_on(pool: asyncpg.Pool, **overrides: Any) -> SessionRows:
    return SessionRows(pool, DataCipher((KEY,)), **settings(**overrides))


def cached_on(pool: asyncpg.Pool, cache: SessionCache, **overrides: Any) -> CachedRows:
    return CachedRows(pool, DataCipher((KEY,)), cache=cache, **settings(**overrides))


def data(**values: object) -> bytes:
    return orjson.dumps(values)


def no_rebase(latest: bytes) -> tuple[bytes, int | None]:
    raise AssertionError("nobody saved in between: no merge expected")


def never_called() -> Client:
    raise AssertionError("the client details were asked for: the load touched")


async def created(rows: SessionRows, *, user_id: int | None = 1) -> bytes:
    id_hash = os.urandom(32)
    outcome = await rows.create(id_hash, data(n=1), user_id=user_id, replaces=None, client=CLIENT)
    assert isinstance(outcome, Created), outcome
    return id_hash


async def eventually(predicate: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "not within the time allowed"
        await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def listening(
    cache: SessionCache, connect: Callable[[], Awaitable[asyncpg.Connection]], channel: str, **options: float
) -> AsyncIterator[asyncio.Future[None]]:
    """`cache.listen(...)` running for the block; cancelled and awaited after it."""
    task = asyncio.ensure_future(cache.listen(connect, channel, **options))
    try:
        yield task
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@contextlib.asynccontextmanager
async def deaf_cache(url: str) -> AsyncIterator[SessionCache]:
    """A SessionCache that is on, its listener connected to a channel nothing notifies."""
    cache = SessionCache()
    async with listening(cache, lambda: asyncpg.connect(url), "nothing_notifies_here"):
        await eventually(lambda: cache.enabled)
        yield cache


# -- the rows ------------------------------------------------------------------------------------


async def test_a_used_cookie_bars_a_second_login_for_the_tombstone_time_only(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    """A login uses up the session it came with: a second login from that cookie creates nothing
    for TOMBSTONE_SECONDS (a double submit), and once they have passed, it may log in again."""
    rows = rows_on(pool)
    before = await created(rows, user_id=None)
    first = await rows.create(os.urandom(32), data(), user_id=1, replaces=before, client=CLIENT)
    assert isinstance(first, Created)
    again = await rows.create(os.urandom(32), data(), user_id=1, replaces=before, client=CLIENT)
    assert again is NotCreated.REPLACED_OR_ENDED
    await lib_pg.execute(
        "UPDATE sessions SET replaced_at = replaced_at - make_interval(secs => $2) WHERE id_hash = $1",
        before,
        TOMBSTONE_SECONDS + 1,
    )
    late = await rows.create(os.urandom(32), data(), user_id=1, replaces=before, client=CLIENT)
    assert isinstance(late, Created)


async def test_a_renewed_session_gets_the_idle_timeout_not_its_absolute_deadline(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    """A renewal keeps the absolute deadline, but its idle deadline is the idle timeout from now:
    a renewed session left alone ends as any other does."""
    rows = rows_on(pool, idle_timeout=600.0)
    old = await created(rows)
    fresh = os.urandom(32)
    renewed = await rows.renew(fresh, data(), user_id=1, replaces=old, client=CLIENT)
    assert isinstance(renewed, Created)
    idle = await lib_pg.fetchval(
        "SELECT extract(epoch FROM idle_expires_at - last_seen_at) FROM sessions WHERE id_hash = $1", fresh
    )
    assert idle == 600
    assert renewed.row.idle_deadline - renewed.row.touched_at == pytest.approx(600)


async def test_a_renewal_keeps_its_user_within_the_cap(pool: asyncpg.Pool) -> None:
    """max_sessions_per_user holds after a renewal too (it creates a session): a user over the
    cap (here, made so before the cap was set) is trimmed to it, least recently used first."""
    uncapped = rows_on(pool)
    oldest = await created(uncapped, user_id=9)
    renewing = await created(uncapped, user_id=9)
    capped = rows_on(pool, max_sessions_per_user=1)
    renewed = await capped.renew(os.urandom(32), data(), user_id=9, replaces=renewing, client=CLIENT)
    assert isinstance(renewed, Created)
    assert renewed.ended == (oldest,)
    assert len(await capped.list_user(9, limit=10)) == 1


@pytest.mark.parametrize("written_by", ["create", "save", "merge", "renew"])
async def test_what_this_process_wrote_needs_no_touch_within_the_touch_interval(
    pool: asyncpg.Pool, written_by: str
) -> None:
    """Every write touches the row (last_seen_at = now()), and the process remembers it: a load
    of that session within the touch interval sends no touch (and asks for no client details).
    The session is made by another process (`other`), so only the write under test is known."""
    rows, other = rows_on(pool), rows_on(pool)
    if written_by == "create":
        id_hash = await created(rows)
    else:
        id_hash = await created(other)
    if written_by == "save":
        assert isinstance(
            await rows.save(id_hash, data(a=1), user_id=1, version=1, durable=True, rebase=no_rebase), Row
        )
    elif written_by == "merge":
        await other.save(id_hash, data(b=2), user_id=1, version=1, durable=True, rebase=no_rebase)
        merged = await rows.save(
            id_hash, data(a=1), user_id=1, version=1, durable=True, rebase=lambda latest: (latest, 1)
        )
        assert isinstance(merged, Row)
        assert merged.version == 3
    elif written_by == "renew":
        old, id_hash = id_hash, os.urandom(32)
        assert isinstance(await rows.renew(id_hash, data(), user_id=1, replaces=old, client=CLIENT), Created)
    assert isinstance(await rows.load(id_hash, never_called), Row)


async def test_a_merged_save_is_sealed_under_the_newest_key(pool: asyncpg.Pool) -> None:
    """The row a merge writes is under the newest key, and says so: a cached row that said
    otherwise would be rewritten at every request that hits it."""
    rows = rows_on(pool)
    id_hash = await created(rows)
    await rows.save(id_hash, data(b=2), user_id=1, version=1, durable=True, rebase=no_rebase)
    merged = await rows.save(id_hash, data(a=1), user_id=1, version=1, durable=True, rebase=lambda latest: (latest, 1))
    assert isinstance(merged, Row)
    assert merged.current_key is True


# -- the cache in front of the rows (CachedRows) ---------------------------------------------------


@pytest.mark.parametrize("made_by", ["login", "renewal"])
async def test_with_a_cache_a_login_or_renewal_uses_up_its_session_and_drops_it_here_at_once(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection, lib_url: str, made_by: str
) -> None:
    """The session a login or renewal replaces is used up in the database, and this process's
    cache drops it at once, not when the notification comes (here: never)."""
    async with deaf_cache(lib_url) as cache:
        rows = cached_on(pool, cache)
        old = await created(rows)
        assert isinstance(await rows.load(old, never_called), Row)  # from the cache
        if made_by == "login":
            outcome = await rows.create(os.urandom(32), data(), user_id=1, replaces=old, client=CLIENT)
        else:
            outcome = await rows.renew(os.urandom(32), data(), user_id=1, replaces=old, client=CLIENT)
        assert isinstance(outcome, Created)
        assert await lib_pg.fetchval("SELECT replaced_at IS NOT NULL FROM sessions WHERE id_hash = $1", old)
        assert isinstance(await rows.load(old, lambda: CLIENT), Gone)


async def test_with_a_cache_a_guarded_login_runs_its_check(pool: asyncpg.Pool, lib_pg: asyncpg.Connection) -> None:
    """require()'s check runs in the creating transaction, cache or not: a check that says no
    creates nothing."""

    async def check(conn: asyncpg.Connection) -> bool:
        return False

    rows = cached_on(pool, SessionCache())
    outcome = await rows.create(os.urandom(32), data(), user_id=1, replaces=None, client=CLIENT, check=check)
    assert outcome is NotCreated.PRECONDITION
    assert await lib_pg.fetchval("SELECT count(*) FROM sessions") == 0


@pytest.mark.parametrize("cache", [False, True], ids=["no-cache", "cache"])
async def test_a_save_asked_to_be_durable_waits_for_the_flush(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection, cache: bool
) -> None:
    """With durable_writes=False, a save that ends something (`durable`, a change of user_id)
    still waits for the WAL flush: a trigger notes the transaction's synchronous_commit."""
    await lib_pg.execute(
        "CREATE TABLE commit_modes (n serial, mode text);"
        " CREATE FUNCTION note_commit_mode() RETURNS trigger LANGUAGE plpgsql AS"
        " $$ BEGIN INSERT INTO commit_modes (mode) VALUES (current_setting('synchronous_commit')); RETURN NULL; END $$;"
        " CREATE TRIGGER note_commit_mode AFTER UPDATE ON sessions FOR EACH ROW EXECUTE FUNCTION note_commit_mode()"
    )
    rows = cached_on(pool, SessionCache(), durable_writes=False) if cache else rows_on(pool, durable_writes=False)
    id_hash = await created(rows)
    await rows.save(id_hash, data(a=1), user_id=1, version=1, durable=False, rebase=no_rebase)
    await rows.save(id_hash, data(a=1), user_id=2, version=2, durable=True, rebase=no_rebase)
    assert [r["mode"] for r in await lib_pg.fetch("SELECT mode FROM commit_modes ORDER BY n")] == ["off", "on"]


@pytest.mark.parametrize("found_by", ["save", "load"])
async def test_a_session_found_ended_leaves_this_process_cache_at_once(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection, lib_url: str, found_by: str
) -> None:
    """A session ended elsewhere, whose notification has not come: the first operation of this
    process that finds it gone (a save, or a load that skips the cache: a cookie under an old
    key) drops it from the cache, and no later load is served it."""
    async with deaf_cache(lib_url) as cache:
        rows = cached_on(pool, cache)
        id_hash = await created(rows)
        await lib_pg.execute("DELETE FROM sessions WHERE id_hash = $1", id_hash)
        if found_by == "save":
            saved = await rows.save(id_hash, data(a=1), user_id=1, version=1, durable=True, rebase=no_rebase)
            assert saved is NotSaved.ENDED
        else:
            assert await rows.load(id_hash, lambda: CLIENT, cacheable=False) is Gone.EXPIRED_OR_UNKNOWN
        assert isinstance(await rows.load(id_hash, lambda: CLIENT), Gone)


# -- the cache's listener --------------------------------------------------------------------------


def warnings_of(lib_log: LibraryLog) -> list[str]:
    return [line.split(": ", 1)[1] for line in lib_log.lines() if line.startswith(("WARNING", "ERROR"))]


NOT_ENABLED = (
    "session cache not enabled (listener lost: ConnectionRefusedError): reading every session from the database"
)


async def test_a_listener_that_cannot_connect_retries_with_a_doubling_backoff_and_says_so_once(
    lib_log: LibraryLog,
) -> None:
    """Refused from the start: tried again after 0.5 s, then 1 s, then 2 s (not faster: a
    database that is down is not hammered), with one warning for all of it."""
    attempts: list[float] = []

    async def connect() -> asyncpg.Connection:
        attempts.append(time.monotonic())
        raise ConnectionRefusedError("refused")

    async with listening(SessionCache(), connect, "sessions"):
        await eventually(lambda: len(attempts) >= 4, 10)
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)][:3]
    assert 0.49 <= gaps[0] < 1.0, gaps
    assert 0.99 <= gaps[1] < 1.45, gaps
    assert 1.99 <= gaps[2] < 2.9, gaps
    assert warnings_of(lib_log) == [NOT_ENABLED]


async def test_a_listener_lost_after_it_was_up_retries_at_once_and_says_why(
    lib_url: str, lib_pg: asyncpg.Connection, lib_log: LibraryLog
) -> None:
    """Up, then closed by the server, then refused: the first retry comes 0.5 s after the loss
    (the backoff starts again once the listener was up), and the log says both what happened and
    why it is not back, once each."""
    attempts: list[float] = []
    conns: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        attempts.append(time.monotonic())
        if len(attempts) > 1:
            raise ConnectionRefusedError("refused")
        conns.append(await asyncpg.connect(lib_url))
        return conns[0]

    cache = SessionCache()
    async with listening(cache, connect, "sessions"):
        await eventually(lambda: cache.enabled)
        lost_at = time.monotonic()
        await lib_pg.execute("SELECT pg_terminate_backend($1)", conns[0].get_server_pid())
        await eventually(lambda: len(attempts) >= 3, 10)
    assert 0.49 <= attempts[1] - lost_at < 1.2
    assert 0.99 <= attempts[2] - attempts[1] < 1.45
    assert warnings_of(lib_log) == [
        "session cache disabled (listener connection closed): reading every session from the database",
        NOT_ENABLED,
    ]


async def test_a_healthy_listener_stays_up_and_once_stopped_closes_its_connection(lib_url: str) -> None:
    """Its checks (every 0.2 s here) answered, the listener keeps its one connection and the
    cache stays on; stopped (the app's shutdown), it closes that connection."""
    conns: list[asyncpg.Connection] = []

    async def connect() -> asyncpg.Connection:
        conns.append(await asyncpg.connect(lib_url))
        return conns[-1]

    cache = SessionCache()
    async with listening(cache, connect, "sessions", check_every=0.4):
        await eventually(lambda: cache.enabled)
        for _ in range(50):  # 1 s, some five checks
            assert cache.enabled
            await asyncio.sleep(0.02)
    assert not cache.enabled
    assert [conn.is_closed() for conn in conns] == [True]


async def test_a_listener_gone_silent_is_noticed_within_check_every(lib_url: str) -> None:
    """A listener connection that goes silent just after the listener came up is noticed within
    `check_every` (1 s here: a wait of half, then a check given the other half), whatever the
    phase of the checks."""
    async with SilenceableProxy(lib_url) as relay:
        cache = SessionCache()
        async with listening(cache, lambda: asyncpg.connect(relay.url()), "sessions", check_every=1.0):
            await eventually(lambda: cache.enabled)
            relay.silence()
            muted_at = time.monotonic()
            await eventually(lambda: not cache.enabled)
            assert time.monotonic() - muted_at < 1.6


# -- the statements (sql.py) -----------------------------------------------------------------------


def test_a_statement_of_one_parameter_gives_a_tuple_of_one() -> None:
    statement = Statement("SELECT $id_hash::bytea")
    assert statement.sql == "SELECT $1::bytea"
    assert statement.args(id_hash=b"\x01\x02") == (b"\x01\x02",)


def test_a_statement_called_wrong_names_what_it_takes_and_what_it_was_given() -> None:
    statement = Statement("SELECT $a::int + $b::int")
    with pytest.raises(TypeError) as raised:
        statement.args(a=1, b=2, c=3)
    assert str(raised.value) == "the statement takes a, b; given a, b, c"


# -- the cookie (cookies.py) -----------------------------------------------------------------------


async def test_a_cookie_value_runs_from_the_first_equals_sign_to_the_end_of_its_pair(pool: asyncpg.Pool) -> None:
    """RFC 6265, 5.2: a cookie's name is what comes before its first "=", and its value may hold
    more of them (no token does: such a value fails its signature, as any other garbage)."""
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])
    request = make_mocked_request("GET", "/", headers={"Cookie": "session=a=b; session=c"})
    assert storage.load_cookie(request) == "a=b"


# -- what the storage keeps of HTTP ----------------------------------------------------------------


async def test_client_details_that_are_not_utf8_are_stored_with_replacement_characters(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    """A User-Agent with bytes that are not UTF-8 (aiohttp hands them over as lone surrogates,
    which PostgreSQL's text cannot hold): stored with U+FFFD for each such byte, and the rest,
    UTF-8 included, as sent. A login, not a 500."""
    client = await library_app(aiohttp_client, pool)
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    writer.write(
        b"POST /start HTTP/1.1\r\nHost: x\r\nUser-Agent: caf\xc3\xa9 \xff\xfe probe\r\n"
        b"Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    response = await reader.read()
    writer.close()
    assert response.startswith(b"HTTP/1.1 200 "), response[:200]
    assert await pool.fetchval("SELECT user_agent FROM sessions") == "caf\u00e9 \ufffd\ufffd probe"


async def test_a_database_that_does_not_answer_gives_a_503_that_says_so_and_when_to_retry(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    """DatabaseUnavailable, unhandled, is the response: 503, Retry-After: 2, and its MESSAGE."""
    client = await library_app(aiohttp_client, pool)  # database_timeout 1 s
    cookie = await started(client)
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        response = await client.get("/read", headers=with_cookie(cookie))
        body = await response.text()
    assert response.status == 503
    assert response.headers["Retry-After"] == "2"
    assert body == DatabaseUnavailable.MESSAGE + "\n"
