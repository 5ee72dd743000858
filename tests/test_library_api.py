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
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import (
    DatabaseUnavailable,
    PostgresStorage,
    create_schema,
    get_session,
    new_session,
    sweep,
)
from aiohttp_session_postgres.cache import SessionCache
from aiohttp_session_postgres.tokens import TokenSigner
from conftest import AUTH_KEY, ENC_KEY, AppLog
from library_envs import run_in

STORAGE = web.AppKey("storage", PostgresStorage)


@pytest.fixture
async def lib_url(empty_url: str) -> str:
    """A database with the library's table alone (no users table, no foreign key)."""
    conn = await asyncpg.connect(empty_url)
    try:
        await create_schema(conn)
    finally:
        await conn.close()
    return empty_url


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


@pytest.fixture
async def lib_pg(lib_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(lib_url)
    yield conn
    await conn.close()


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
    app_log: AppLog,
) -> None:
    client = await small_app(aiohttp_client, pool, database_timeout=0.5)
    dead, _ = TokenSigner((AUTH_KEY,)).new()  # validly signed, no such session
    for _ in range(3):
        assert await (await client.get("/read", headers={"Cookie": f"session={dead}"})).text() == "{}"
    assert len([line for line in app_log.events() if "expired_or_unknown" in line]) == 1
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
