"""The library's own API, on a small app of the test's own (not the demo): the connection's 503
for the database's failures only, the `secure` option, the memory of dead session IDs, the
public sweep and its command."""

from __future__ import annotations

import asyncio
import os
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_session
import asyncpg
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient, make_mocked_request
from aiohttp_session_postgres import (
    DatabaseUnavailable,
    PostgresStorage,
    get_session,
    new_session,
    sweep,
)
from aiohttp_session_postgres.cache import SessionCache
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.tokens import TokenSigner, fingerprint_of, id_hash_of
from support.keys import AUTH_KEY, ENC_KEY
from support.library_app import STORAGE as LIBRARY_STORAGE
from support.library_app import USER, library_app, read, started, with_cookie
from support.library_envs import run_in
from support.logs import LibraryLog
from support.postgres import database_name, wait_for_lock_waiters

STORAGE = web.AppKey("storage", PostgresStorage)


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


async def small_app(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, **options: Any
) -> TestClient:
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], **options)
    app = web.Application()
    app[STORAGE] = storage
    aiohttp_session.setup(app, storage)

    async def start(request: web.Request) -> web.Response:
        (await new_session(request))["user_id"] = 1
        return web.Response(text="started")

    async def read(request: web.Request) -> web.Response:
        return web.Response(text=str(dict(await get_session(request))))

    app.router.add_post("/start", start)
    app.router.add_get("/read", read)
    return await aiohttp_client(app, cookie_jar=DummyCookieJar())


async def test_the_connection_turns_only_the_databases_failures_into_a_503(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], database_timeout=0.5)
    with pytest.raises(OSError, match="another service refused"):
        async with storage.connection():
            raise OSError("another service refused")  # not the database's doing: passes through
    with pytest.raises(DatabaseUnavailable):
        async with storage.connection() as conn:
            await conn.execute("SELECT pg_sleep(5)")  # past the deadline: the database's
    with pytest.raises(DatabaseUnavailable):
        async with storage.connection() as conn:
            await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")  # the connection dies
    async with storage.connection() as conn:  # and the pool is fine afterwards
        assert await conn.fetchval("SELECT 1") == 1


@pytest.mark.parametrize("secure", [True, False, None])
async def test_secure_makes_the_cookie_secure_whatever_aiohttp_sees(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, secure: bool | None
) -> None:
    client = await small_app(aiohttp_client, pool, secure=secure)
    response = await client.post("/start")  # plain HTTP, as behind a TLS proxy without middleware
    (header,) = response.headers.getall("Set-Cookie")
    if secure:
        assert header.startswith("__Host-session=")
        assert "Secure" in header
        cookie = header.split(";")[0].split("=", 1)[1]
        read = await client.get("/read", headers={"Cookie": f"__Host-session={cookie}"})
        assert await read.text() == "{'user_id': 1}"
    else:
        assert header.startswith("session=")
        assert "Secure" not in header


async def test_a_dead_cookie_costs_one_lookup_per_process(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    pool: asyncpg.Pool,
    lib_pg: asyncpg.Connection,
    lib_log: LibraryLog,
) -> None:
    client = await small_app(aiohttp_client, pool, database_timeout=0.5)
    dead, _ = TokenSigner((AUTH_KEY,)).new()  # validly signed, no such session
    for _ in range(3):
        assert await (await client.get("/read", headers={"Cookie": f"session={dead}"})).text() == "{}"
    assert len([line for line in lib_log.events() if "expired_or_unknown" in line]) == 1
    # Known dead: answered while the table is locked, so without asking the database.
    async with lib_pg.transaction():
        await lib_pg.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        response = await asyncio.wait_for(client.get("/read", headers={"Cookie": f"session={dead}"}), 5)
        assert response.status == 200


async def test_sweep_needs_only_a_pool_and_the_command_only_a_dsn(
    pool: asyncpg.Pool, lib_pg: asyncpg.Connection, lib_url: str, checkout_python: Path, tmp_path: Path
) -> None:
    async def expired(count: int) -> None:
        await lib_pg.execute(
            "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
            " SELECT id, '\\x00'::bytea, now() - interval '1 minute', now() + interval '1 hour'"
            " FROM unnest($1::bytea[]) AS id",
            [os.urandom(32) for _ in range(count)],
        )

    await expired(7)
    assert await sweep(pool, batch_size=3) == 7
    await expired(4)
    result = await asyncio.to_thread(
        run_in, checkout_python, tmp_path, "-m", "aiohttp_session_postgres", "sweep", "--dsn", lib_url
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "removed 4 expired sessions"
    result = await asyncio.to_thread(
        run_in,
        checkout_python,
        tmp_path,
        "-m",
        "aiohttp_session_postgres",
        "sweep",
        "--dsn",
        lib_url,
        "--table",
        "nope",
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: the database refused or did not answer (relation")
    assert len(result.stderr.strip().splitlines()) == 1


async def test_concurrent_logins_and_revocations_of_one_user_never_deadlock(
    aiohttp_client: Callable[..., Awaitable[TestClient]], lib_url: str, lib_pg: asyncpg.Connection
) -> None:
    # Trims of one user's sessions and "end all" lock the user's rows in one order (id_hash), so
    # however many run at once none fails with a deadlock, and once all are answered the cap holds.
    async with asyncpg.create_pool(lib_url, min_size=8, max_size=8) as wide:
        client = await small_app(aiohttp_client, wide, max_sessions_per_user=2, database_timeout=10)
        storage = client.app[STORAGE]
        for _ in range(5):
            answers = await asyncio.gather(
                *(client.post("/start") for _ in range(200)),
                *(storage.end_all_sessions(1) for _ in range(4)),
                return_exceptions=True,
            )
            failures = [a for a in answers if isinstance(a, BaseException)]
            assert not failures, failures[:3]
            assert {a.status for a in answers if not isinstance(a, int)} == {200}
            await client.post("/start")  # the last login trims after every other has committed
            live = await lib_pg.fetchval("SELECT count(*) FROM sessions WHERE user_id = 1 AND idle_expires_at > now()")
            assert live == 2


async def test_cached_sessions_hold_their_size_not_the_encoders_buffer(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    # orjson's output keeps a 4 KB buffer per value: cached as it is, 10,000 sessions (the
    # default cache size) held 41 MB of a 125 MB process; copied to their size, 0.8 MB.
    cache = SessionCache()
    client = await small_app(aiohttp_client, pool, cache=cache)
    cache._enabled = True  # as its listener does once LISTEN is in place (not run here)
    await client.post("/start")  # warm: statement caches, first allocations
    count = 1000
    tracemalloc.start()
    try:
        for _ in range(count):
            assert (await client.post("/start")).status == 200
        # What the library's own lines allocated and still hold (the test client keeps responses).
        stats = tracemalloc.take_snapshot().statistics("filename")
        held = sum(st.size for st in stats if "/aiohttp_session_postgres/" in st.traceback[0].filename)
    finally:
        tracemalloc.stop()
    assert len(cache) == count + 1
    assert 0 < held / count < 1500, f"{held / count:.0f} bytes per cached session"


# -- found by a review: races at the edges ---------------------------------------------------------


async def test_a_touch_in_flight_never_revives_a_session_a_login_used_up(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_pg: asyncpg.Connection, lib_url: str
) -> None:
    # A read with the old cookie (its touch due) reads the row as live, then waits on the row
    # lock while a login from that cookie turns the row into a tombstone and commits. The touch
    # then meets the changed row: it must leave it dead, not slide its deadline.
    client = await library_app(aiohttp_client, pool)  # touch_interval 0: every read touches
    cookie = await started(client)
    row = id_hash_of(cookie.split(".")[0])
    holder = await asyncpg.connect(lib_url)
    try:
        tr = holder.transaction()
        await tr.start()
        await holder.execute("SELECT 1 FROM sessions WHERE id_hash = $1 FOR UPDATE", row)
        reading = asyncio.ensure_future(client.get("/read", headers=with_cookie(cookie)))
        await wait_for_lock_waiters(lib_pg, database_name(lib_url), 1)
        # What a login from this cookie does to it (CREATE_SQL's `used`).
        await holder.execute(
            "UPDATE sessions SET data = '\\x', user_id = NULL, version = version + 1, replaced_at = now(),"
            " idle_expires_at = now() WHERE id_hash = $1",
            row,
        )
        await tr.commit()
        assert (await reading).status == 200  # it began before the login: served as it was
    finally:
        await holder.close()
    assert await lib_pg.fetchval("SELECT idle_expires_at <= now() FROM sessions WHERE id_hash = $1", row)
    # And the old cookie is refused, cleanly (a tombstone's empty data opens to nothing).
    after = await client.get("/read", headers=with_cookie(cookie))
    assert after.status == 200
    assert await after.json() == {}


async def test_a_deadlock_is_a_503_not_a_500(pool: asyncpg.Pool, lib_pg: asyncpg.Connection) -> None:
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], database_timeout=10)
    await lib_pg.execute(
        "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
        " SELECT sha256(n::text::bytea), '\\x00', now() + interval '1 hour', now() + interval '1 hour'"
        " FROM generate_series(1, 2) AS n"
    )
    first, second = (await lib_pg.fetch("SELECT id_hash FROM sessions ORDER BY id_hash"))[:2]
    lock = "UPDATE sessions SET version = version + 1 WHERE id_hash = $1"
    outsider_locked = asyncio.Event()

    async def outsider() -> None:  # locks the second row, then wants the first
        async with lib_pg.transaction():
            await lib_pg.execute(lock, second["id_hash"])
            outsider_locked.set()
            await asyncio.sleep(0.3)
            await lib_pg.execute(lock, first["id_hash"])

    async def through_the_storage() -> None:  # locks the first row, then wants the second
        async with storage.connection() as conn, conn.transaction():
            await conn.execute(lock, first["id_hash"])
            await outsider_locked.wait()
            await conn.execute(lock, second["id_hash"])

    # The storage's side waits first, so its deadlock check (after deadlock_timeout, 1 s) finds
    # the cycle and PostgreSQL rolls it back: a 503, and the outsider goes on.
    outcome, storage_side = await asyncio.gather(outsider(), through_the_storage(), return_exceptions=True)
    assert outcome is None
    assert isinstance(storage_side, DatabaseUnavailable), storage_side


async def test_ending_a_users_sessions_leaves_the_expired_ones_to_the_sweeper(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    # So "end all" and "sign out everywhere else" never lock the rows the sweeper deletes.
    client = await library_app(aiohttp_client, pool)
    cookies = [await started(client) for _ in range(3)]
    await lib_pg.execute(
        "UPDATE sessions SET idle_expires_at = now() - interval '1 minute' WHERE id_hash = $1",
        id_hash_of(cookies[0].split(".")[0]),
    )
    assert await (await client.post("/end-all")).text() == "2"
    assert await lib_pg.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", USER) == 1
    assert await sweep(pool) == 1


def test_data_too_short_to_have_been_sealed_opens_to_nothing() -> None:
    # A tombstone's data is empty: were one ever read, it is no session, not an error.
    cipher = DataCipher((ENC_KEY,))
    row = os.urandom(32)
    assert cipher.open(b"", row) is None
    assert cipher.open(b"\x00" * 27, row) is None
    assert cipher.open(cipher.seal(b"{}", row), row) == (b"{}", True)


@pytest.mark.parametrize("secure", [False, True, None], ids=["never-secure", "always-secure", "per-request"])
async def test_load_cookie_returns_the_first_cookie_of_the_storage_name(
    pool: asyncpg.Pool, secure: bool | None
) -> None:
    """aiohttp-session's `load_cookie`, for code that calls it: the first value of the session
    cookie, under the name the storage sets (`__Host-` in front when Secure; per request, a
    plain-HTTP one here, by default), never another's."""
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], secure=secure)
    ours, other = ("__Host-session", "session") if secure else ("session", "__Host-session")
    request = make_mocked_request("GET", "/", headers={"Cookie": f"{other}=theirs; {ours}=first; {ours}=second"})
    assert storage.load_cookie(request) == "first"
    assert storage.load_cookie(make_mocked_request("GET", "/", headers={"Cookie": f"{other}=theirs"})) is None
    assert storage.load_cookie(make_mocked_request("GET", "/")) is None


async def test_a_trim_that_deadlocks_is_tried_again_and_the_cap_holds(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str
) -> None:
    """The per-user cap's trim locks its rows in id_hash order, but an outsider (a cascade, a
    hand-written statement) may lock them in the other order. PostgreSQL then rolls back one of
    them: here the trim, which changed nothing, and is tried again: the login succeeds and the
    cap holds."""
    plain = await library_app(aiohttp_client, pool)
    older = [id_hash_of((await started(plain)).split(".")[0]) for _ in range(2)]
    low, high = sorted(older)
    # Which side PostgreSQL rolls back is the one whose deadlock check (once, deadlock_timeout
    # after it began to wait) finds the cycle. The trim's check comes 5 s after it waits, time
    # enough for the outsider to close the cycle on a busy machine; the outsider's never comes.
    trim_pool = await asyncpg.create_pool(lib_url, min_size=1, max_size=2, server_settings={"deadlock_timeout": "5s"})
    capped = await library_app(aiohttp_client, trim_pool, max_sessions_per_user=1, database_timeout=20)
    outsider, watcher = await asyncpg.connect(lib_url), await asyncpg.connect(lib_url)
    await outsider.execute("SET deadlock_timeout = '600s'")
    lock = "UPDATE sessions SET last_seen_at = last_seen_at WHERE id_hash = $1"
    try:
        held = outsider.transaction()
        await held.start()
        await outsider.execute(lock, high)
        login = asyncio.ensure_future(capped.post("/start"))
        await wait_for_lock_waiters(watcher, database_name(lib_url), 1)  # the trim: `low` locked, waits on `high`
        await outsider.execute(lock, low)  # the cycle: the trim is rolled back, this goes on
        await held.commit()
        response = await login
    finally:
        await outsider.close()
        await watcher.close()
        await trim_pool.close()
    assert response.status == 200
    live = await pool.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1 AND replaced_at IS NULL", USER)
    assert live == 1


async def test_a_login_uses_up_the_session_the_request_loaded_not_merely_the_first_cookie(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    """Two cookies of the session's name, a dead one first (a stale one from another path, say):
    a login that loaded the request's session uses up the live one it loaded, so no live
    session from before the login is left behind."""
    client = await library_app(aiohttp_client, pool)
    dead, live = await started(client), await started(client)
    assert (await client.post("/logout", headers=with_cookie(dead))).status == 200
    response = await client.post("/start-after-read", headers={"Cookie": f"session={dead}; session={live}"})
    assert response.status == 200
    assert await read(client, live) == {}
    assert await read(client, response.cookies["session"].value) == {"user_id": USER}


async def test_the_memories_of_touched_and_dead_sessions_stay_bounded_and_work_when_full(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_log: LibraryLog
) -> None:
    """Each process remembers at most 10,000 touch times and 10,000 dead session IDs (about 2 MB
    in all), dropping the oldest: when full, a new one still goes in (the oldest goes), and a
    dead cookie is still looked up and logged only once. Filled directly here: 10,000 real
    sessions would take minutes."""
    client = await library_app(aiohttp_client, pool, touch_interval=60)
    storage = client.app[LIBRARY_STORAGE]
    storage._rows._touch_times.update((os.urandom(32), 0.0) for _ in range(10_000))
    storage._rows._dead.update((os.urandom(32), None) for _ in range(9_999))
    oldest_touch, oldest_dead = next(iter(storage._rows._touch_times)), next(iter(storage._rows._dead))
    cookie = await started(client)  # its touch time is remembered: the oldest goes
    assert (len(storage._rows._touch_times), oldest_touch in storage._rows._touch_times) == (10_000, False)
    assert await read(client, cookie) == {"user_id": USER}
    assert id_hash_of(cookie.split(".")[0]) in storage._rows._touch_times

    other = await started(client)
    for dead in (cookie, other):
        assert (await client.post("/logout", headers=with_cookie(dead))).status == 200
        for _ in range(2):
            assert await read(client, dead) == {}
        # The first fills the memory to 10,000 exactly; the second makes the oldest go.
        assert (len(storage._rows._dead), oldest_dead in storage._rows._dead) == (10_000, dead is cookie)
        fp = fingerprint_of(id_hash_of(dead.split(".")[0]))
        looked_up = [line for line in lib_log.events() if line.startswith(f"event=session.expired_or_unknown fp={fp}")]
        assert len(looked_up) == 1


async def test_the_documented_defaults_are_the_defaults(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    """PostgresStorage(pool, keys...) alone: the cookie `session` (HttpOnly, SameSite=Lax, Path=/,
    Max-Age the absolute timeout, not Secure over plain HTTP), idle timeout 1,800 s, absolute
    timeout 43,200 s (12 hours), touch interval 60 s, the user_id key `user_id`, no per-user cap."""
    client = await small_app(aiohttp_client, pool)
    response = await client.post("/start")
    morsel = response.cookies["session"]
    assert (morsel["max-age"], morsel["path"], morsel["httponly"], morsel["samesite"], morsel["secure"]) == (
        "43200",
        "/",
        True,
        "Lax",
        "",
    )
    cookie = morsel.value
    row = id_hash_of(cookie.split(".")[0])
    deadlines = await pool.fetchrow(
        "SELECT extract(epoch FROM idle_expires_at - created_at) AS idle,"
        " extract(epoch FROM absolute_expires_at - created_at) AS absolute, user_id FROM sessions WHERE id_hash = $1",
        row,
    )
    assert (round(deadlines["idle"]), round(deadlines["absolute"]), deadlines["user_id"]) == (1800, 43200, 1)

    # The touch interval, read by processes that have not seen the session yet: 59.7 s after the
    # last touch a read writes nothing, 60.3 s after it slides the idle deadline.
    for ago, touched in ((59.7, False), (60.3, True)):
        reader = await small_app(aiohttp_client, pool)
        seen = await pool.fetchval(
            "UPDATE sessions SET last_seen_at = now() - make_interval(secs => $2) WHERE id_hash = $1"
            " RETURNING last_seen_at",
            row,
            ago,
        )
        assert (await reader.get("/read", headers=with_cookie(cookie))).status == 200
        assert (await pool.fetchval("SELECT last_seen_at FROM sessions WHERE id_hash = $1", row) != seen) is touched

    # No per-user cap: eleven sessions of one user all live.
    for _ in range(10):
        assert (await client.post("/start")).status == 200
    assert await pool.fetchval("SELECT count(*) FROM sessions WHERE user_id = 1 AND replaced_at IS NULL") == 11


@pytest.mark.parametrize(
    ("headers", "stored"),
    [
        ({"User-Agent": "x" * 5000, "X-Test-Remote": "2001:db8::" + "f" * 100}, ("2001:db8::" + "f" * 54, "x" * 512)),
        ({"X-Test-Remote": ""}, ("", "")),
    ],
    ids=["long", "none"],
)
async def test_the_client_details_are_stored_cut_to_size_or_empty(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    pool: asyncpg.Pool,
    headers: dict[str, str],
    stored: tuple[str, str],
) -> None:
    """What a session row keeps of its client (its sessions page shows it): the address and the
    User-Agent, cut to 64 and 512 characters; none sent, an empty string (not a 500)."""
    client = await library_app(aiohttp_client, pool)
    response = await client.post("/start", headers=headers, skip_auto_headers=["User-Agent"])
    assert response.status == 200
    row = await pool.fetchrow(
        "SELECT client_ip, user_agent FROM sessions WHERE id_hash = $1",
        id_hash_of(response.cookies["session"].value.split(".")[0]),
    )
    assert (row["client_ip"], row["user_agent"]) == stored
