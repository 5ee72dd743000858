"""Several server processes on one database, as Heroku runs them: separate `python -m app serve`
processes on their own ports (dynos), and WEB_CONCURRENCY=2 (gunicorn workers on one port).

A session made through any process is valid through every other; a logout or revocation through
any of them is refused by every other on the very next request with the session cache off, and
once the notification arrives (within a second, normally milliseconds) with it on, the default.
Bad settings still stop `serve` with one line before any worker starts, and SIGTERM lets a
request in flight finish before the process exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator

import aiohttp
import asyncpg
import pytest
from support.demo import add_user
from support.keys import AUTH_KEY, ENC_KEY
from support.postgres import connections, database_name, eventually, wait_for_lock_waiters
from support.servers import (
    LOGIN_PAGE,
    Server,
    Servers,
    children,
    cmdline,
    handle,
    home,
    is_greeting,
    is_gunicorn,
    logout,
    new_http,
    revoke,
    row_exists,
    run_app,
    sessions_page,
    signed_in,
)
from support.traffic import NOTIFY_WINDOW

PASSWORD = "correct horse"


@pytest.fixture(scope="module")
def mp_url(create_database: Callable[..., str]) -> str:
    return create_database()


@pytest.fixture(scope="module")
def fleet_url(create_database: Callable[..., str]) -> str:
    """The shared fleet's database: apart, so that other tests can count their own connections."""
    return create_database()


async def emptied_with_users(url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(url)
    await conn.execute("TRUNCATE sessions, users, login_failures RESTART IDENTITY CASCADE")
    await add_user(conn, "alice", PASSWORD)
    await add_user(conn, "bob", PASSWORD)
    return conn


@pytest.fixture
async def db(mp_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the module's database, emptied, with users alice and bob."""
    conn = await emptied_with_users(mp_url)
    yield conn
    await conn.close()


@pytest.fixture
async def fleet_db(fleet_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await emptied_with_users(fleet_url)
    yield conn
    await conn.close()


@pytest.fixture(scope="module", params=["on", "off"], ids=["cache-on", "cache-off"])
def fleet(
    request: pytest.FixtureRequest, fleet_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Server]]:
    """Two single-process servers and one running two gunicorn workers, all on the module's
    database, shared by the tests that only log in and out; with the session cache on (the
    default) and off."""
    started = Servers(tmp_path_factory.mktemp("fleet"))
    try:
        for env in ({}, {}, {"WEB_CONCURRENCY": "2"}):
            server = Server(fleet_url, started.log_dir, SESSION_CACHE=request.param, **env).start()
            started.started.append(server)
        yield [server.ready_sync() for server in started.started]
    finally:
        started.stop_all()


async def assert_valid_everywhere(http: aiohttp.ClientSession, fleet: list[Server], cookie: str, user: str) -> None:
    for server in fleet:
        status, text, _ = await home(http, server.url, cookie)
        assert is_greeting(status, text, user), f"{server.url} did not accept the session: {status}"


async def assert_refused_everywhere(
    http: aiohttp.ClientSession, fleet: list[Server], cookie: str, *, ended_by: Server | None = None
) -> None:
    """Refused by every process on its very next request; with the session cache on, a process
    other than `ended_by` refuses once the notification arrives (within NOTIFY_WINDOW)."""
    ended_at = time.monotonic()
    for server in fleet:
        status, _, _ = await home(http, server.url, cookie)
        other_process = server is not ended_by or "WEB_CONCURRENCY" in server.env  # workers: own caches
        while status == 200 and other_process and server.env["SESSION_CACHE"] == "on":
            assert time.monotonic() - ended_at < NOTIFY_WINDOW, f"{server.url} still served an ended session"
            await asyncio.sleep(0.005)
            status, _, _ = await home(http, server.url, cookie)
        assert status == 303, f"{server.url} still served an ended session ({status})"
        status, _ = await sessions_page(http, server.url, cookie)
        assert status == 303


async def test_a_session_made_through_any_process_is_valid_through_every_other(
    fleet: list[Server], fleet_db: asyncpg.Connection, http: aiohttp.ClientSession
) -> None:
    db = fleet_db
    cookies = []
    for origin in fleet:
        cookie = await signed_in(http, origin.url, "alice", PASSWORD)
        cookies.append(cookie)
        await assert_valid_everywhere(http, fleet, cookie, "alice")
    # Each process lists all three, whichever made them.
    for server in fleet:
        status, text = await sessions_page(http, server.url, cookies[0])
        assert status == 200
        assert all(handle(c) in text for c in cookies), text
    assert await db.fetchval("SELECT count(*) FROM sessions") == 3


async def test_a_logout_through_one_process_is_refused_by_every_other_at_once(
    fleet: list[Server], fleet_db: asyncpg.Connection, http: aiohttp.ClientSession
) -> None:
    db = fleet_db
    for i, origin in enumerate(fleet):
        # Made through another process, and read through every one, before the logout.
        cookie = await signed_in(http, fleet[i - 1].url, "alice", PASSWORD)
        await assert_valid_everywhere(http, fleet, cookie, "alice")
        assert await logout(http, origin.url, cookie) == 303
        await assert_refused_everywhere(http, fleet, cookie, ended_by=origin)
        assert not await row_exists(db, cookie)


async def test_a_revocation_through_one_process_is_refused_by_every_other_at_once(
    fleet: list[Server], fleet_db: asyncpg.Connection, http: aiohttp.ClientSession
) -> None:
    db = fleet_db
    a, b, c = fleet
    laptop = await signed_in(http, a.url, "alice", PASSWORD)
    phone = await signed_in(http, b.url, "alice", PASSWORD)
    tablet = await signed_in(http, c.url, "alice", PASSWORD)
    bobs = await signed_in(http, a.url, "bob", PASSWORD)
    for cookie in (laptop, phone, tablet):
        await assert_valid_everywhere(http, fleet, cookie, "alice")

    # The laptop ends the phone's session through process c.
    assert await revoke(http, c.url, laptop, handle(phone)) == 303
    await assert_refused_everywhere(http, fleet, phone, ended_by=c)

    # "Sign out everywhere else" through b, from the tablet.
    async with http.post(
        b.url + "/sessions/revoke-others", headers={"Cookie": f"session={tablet}"}, allow_redirects=False
    ) as response:
        assert response.status == 303
    await assert_refused_everywhere(http, fleet, laptop, ended_by=b)
    await assert_valid_everywhere(http, fleet, tablet, "alice")

    # An operator's revocation from yet another process (the CLI, as a one-off dyno runs it).
    result = await asyncio.to_thread(a.run_command, "sessions", "revoke", "alice", "--all")
    assert result.returncode == 0, result.stderr
    await assert_refused_everywhere(http, fleet, tablet)
    # Bob was never touched.
    await assert_valid_everywhere(http, fleet, bobs, "bob")
    assert await db.fetchval("SELECT count(*) FROM sessions") == 1


async def test_web_concurrency_runs_that_many_gunicorn_workers_on_one_port(
    servers: Servers, mp_url: str, db: asyncpg.Connection, http: aiohttp.ClientSession
) -> None:
    server = await servers.start(mp_url, WEB_CONCURRENCY="3", DATABASE_POOL_MAX="2")
    # `serve` became gunicorn's master (exec: same PID, so signals reach gunicorn directly).
    assert is_gunicorn(server.pid), cmdline(server.pid)

    async def three_workers() -> bool:
        return len(children(server.pid)) == 3

    await eventually(three_workers, 10, f"gunicorn does not run 3 workers: {children(server.pid)}")
    # Each worker has its own pool: its first connection is open, and none is over its max.
    database = database_name(mp_url)

    async def every_worker_connected() -> bool:
        return await connections(db, database) >= 3

    await eventually(every_worker_connected, 10, "not every worker opened its pool")
    assert await connections(db, database) <= 3 * (2 + 1)  # per worker: its pool, its cache's listener

    # Many connections, spread over the workers by the kernel: all see the same sessions.
    cookie = await signed_in(http, server.url, "alice", PASSWORD)
    assert cookie is not None
    connector = aiohttp.TCPConnector(force_close=True)
    async with new_http(connector=connector) as fresh:
        results = await asyncio.gather(*(home(fresh, server.url, cookie) for _ in range(30)))
    assert all(is_greeting(status, text, "alice") for status, text, _ in results)
    assert await logout(http, server.url, cookie) == 303
    async with new_http(connector=aiohttp.TCPConnector(force_close=True)) as fresh:
        results = await asyncio.gather(*(home(fresh, server.url, cookie) for _ in range(30)))
    assert {status for status, _, _ in results} == {303}


def serve_once(env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    values: dict[str, str | None] = {
        "SESSION_AUTHENTICATION_KEY": AUTH_KEY.decode(),
        "SESSION_ENCRYPTION_KEY": ENC_KEY.decode(),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": "2",
        **env,
    }
    return run_app("serve", env=values)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WEB_CONCURRENCY": "0"}, "error: WEB_CONCURRENCY must be between 1 and 100, got 0"),
        ({"WEB_CONCURRENCY": "two"}, "error: WEB_CONCURRENCY must be a whole number, got 'two'"),
        ({"DATABASE_POOL_MAX": "0"}, "error: DATABASE_POOL_MAX must be between 1 and 100, got 0"),
        ({"SESSION_AUTHENTICATION_KEY": "short"}, "error: SESSION_AUTHENTICATION_KEY key 1 is 5 bytes"),
        ({"DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nothing"}, "error: cannot connect to the database at"),
    ],
)
def test_a_bad_setting_with_several_workers_is_one_line_before_any_worker_starts(
    mp_url: str, env: dict[str, str | None], expected: str
) -> None:
    result = serve_once({"DATABASE_URL": mp_url, **env})
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert result.stderr.startswith(expected), result.stderr
    assert "gunicorn" not in result.stdout + result.stderr


def test_an_unmigrated_database_with_several_workers_is_one_line(create_database: Callable[..., str]) -> None:
    result = serve_once({"DATABASE_URL": create_database(migrate=False)})
    assert result.returncode == 1, result
    assert result.stderr.splitlines() == [result.stderr.strip()], result.stderr
    assert "run `alembic upgrade head`" in result.stderr
    assert "gunicorn" not in result.stdout + result.stderr


@pytest.mark.parametrize("web_concurrency", [1, 2])
async def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(
    servers: Servers, mp_url: str, db: asyncpg.Connection, http: aiohttp.ClientSession, web_concurrency: int
) -> None:
    # The cache off: the read below must reach the database to be held there in flight.
    server = await servers.start(
        mp_url, WEB_CONCURRENCY=str(web_concurrency), DATABASE_TIMEOUT="20", LOG_LEVEL="INFO", SESSION_CACHE="off"
    )
    cookie = await signed_in(http, server.url, "alice", PASSWORD)
    assert cookie is not None

    # Hold the sessions table so that the next request waits inside the database.
    lock = db.transaction()
    await lock.start()
    try:
        await db.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        in_flight = asyncio.create_task(home(http, server.url, cookie))
        await wait_for_lock_waiters(db, database_name(mp_url), 1)
        sigterm_at = time.monotonic()
        server.signal(signal.SIGTERM)
        await asyncio.sleep(2.5)
        assert server.alive, "the process exited with a request in flight"
        assert not in_flight.done(), "the request in flight was cut short"
        # It no longer takes new connections (the router sends them to the new dyno).
        with pytest.raises(aiohttp.ClientError):
            async with new_http() as fresh:
                await fresh.get(server.url + LOGIN_PAGE)
    finally:
        await lock.rollback()

    status, text, _ = await asyncio.wait_for(in_flight, 10)
    assert is_greeting(status, text, "alice"), status
    assert await server.wait(timeout=30 - (time.monotonic() - sigterm_at)) == 0
    log = server.log()
    # Every process stopped its sweeper and closed its pool, without a traceback.
    assert log.count("stopped: database pool closed") == web_concurrency, log
    assert "Traceback" not in log, log
    assert "Task was destroyed" not in log, log
    assert await connections(db, database_name(mp_url)) == 0


async def test_sigterm_while_workers_are_still_starting_stops_them_at_once(
    servers: Servers, mp_url: str, db: asyncpg.Connection
) -> None:
    """uvloop sees signals only while its loop runs: a SIGTERM that reaches a worker still
    importing the app must not be lost (it would serve on until killed at the graceful timeout)."""
    server = Server(mp_url, servers.log_dir, WEB_CONCURRENCY="2", LOG_LEVEL="INFO").start()
    servers.started.append(server)

    async def workers_forked() -> bool:
        return is_gunicorn(server.pid) and len(children(server.pid)) == 2

    await eventually(workers_forked, 30, "gunicorn did not fork its workers")
    sigterm_at = time.monotonic()
    server.signal(signal.SIGTERM)
    assert await server.wait(timeout=20) == 0
    took = time.monotonic() - sigterm_at
    assert took < 10, f"took {took:.1f} s: a worker missed the SIGTERM and was killed at the graceful timeout"
    assert "Traceback" not in server.log(), server.log()
    assert await connections(db, database_name(mp_url)) == 0
