"""One clock: the app's host may be minutes off the database's, and nothing a user sees changes.

Each test runs real `python -m app serve` processes under libfaketime (Debian's `libfaketime`:
LD_PRELOAD shifts every clock the process reads, wall and monotonic, by FAKETIME), against the
suite's PostgreSQL, whose clock is the true one. The machine's clock is never changed. Every
expiry, touch and cache decision must come from the database's clock; the app's own clock is
good only for intervals it measures itself (a constant shift leaves those alone).
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from support.demo import add_user
from support.postgres import eventually
from support.servers import Servers, home, is_greeting, login

LIBFAKETIME = next(iter(sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))), Path("libfaketime.so.1"))
PASSWORD = "correct horse"

# Under CI (CI=true), where .ci/run installs it, a missing libfaketime fails these tests.
pytestmark = pytest.mark.skipif(
    not LIBFAKETIME.exists() and not os.environ.get("CI"),
    reason="libfaketime is not installed (apt-get install libfaketime)",
)


def skewed(offset: str) -> dict[str, str]:
    """The environment that runs a process `offset` (e.g. "-60s", "+2h") off the true clock."""
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset, "FAKETIME_NO_CACHE": "1"}


@pytest.fixture(scope="module")
def skew_url(create_database: Callable[..., str]) -> str:
    return create_database()


@pytest.fixture
async def db(skew_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(skew_url)
    await conn.execute("TRUNCATE sessions, users, login_failures RESTART IDENTITY CASCADE")
    await add_user(conn, "alice", PASSWORD)
    yield conn
    await conn.close()


async def test_the_process_under_test_really_runs_on_a_shifted_clock() -> None:
    """The premise of this module: libfaketime shifts what Python's time.time() reads."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import time; print(time.time())", env=skewed("-1h"), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert abs(float(out) - (time.time() - 3600)) < 60


@pytest.mark.parametrize("offset", ["-60s", "+60s"])
async def test_an_active_user_stays_signed_in_past_the_idle_timeout_whichever_way_the_clock_is_off(
    offset: str, servers: Servers, db: asyncpg.Connection, skew_url: str, http: aiohttp.ClientSession
) -> None:
    """Requests every half second for twice the idle timeout (3 s) keep the session: each touch,
    due by the database's clock, slides its idle deadline. (An app 60 s behind once never
    touched: its clock said the last touch was in the future.) Left alone, it then expires at
    the idle timeout, not a minute early or late."""
    server = await servers.start(
        skew_url,
        SESSION_IDLE_TIMEOUT="3",
        SESSION_TOUCH_INTERVAL="1",
        SESSION_CACHE_MAX_AGE="1",
        **skewed(offset),
    )
    status, cookie = await login(http, server.url, "alice", PASSWORD)
    assert cookie is not None, status
    started = time.monotonic()
    while time.monotonic() - started < 6:
        status, text, _ = await home(http, server.url, cookie)
        assert is_greeting(status, text, "alice"), f"signed out {time.monotonic() - started:.1f} s in ({status})"
        await asyncio.sleep(0.5)
    await asyncio.sleep(4.5)  # past the idle timeout with no request
    status, _, _ = await home(http, server.url, cookie)
    assert status == 303


@pytest.mark.parametrize("offset", ["+2h", "-2h"])
async def test_a_logins_cookie_lives_the_absolute_timeout_whatever_the_apps_clock(
    offset: str, servers: Servers, db: asyncpg.Connection, skew_url: str, http: aiohttp.ClientSession
) -> None:
    """Max-Age is the database's absolute deadline less the database's now: an app 2 h ahead
    (more than the 1 h absolute timeout) once sent Max-Age=0, 2 h behind three hours."""
    # "Remember me" ticked, for a cookie with a Max-Age (unticked it has none); of the absolute
    # timeout's length, so that the session's lifetime is the ordinary one.
    server = await servers.start(
        skew_url, SESSION_ABSOLUTE_TIMEOUT="3600", SESSION_REMEMBER_TIMEOUT="3600", **skewed(offset)
    )
    async with http.post(
        server.url + "/login",
        data={"username": "alice", "password": PASSWORD, "remember": "on"},
        allow_redirects=False,
    ) as response:
        assert response.status == 303
        max_age = int(response.cookies["session"]["max-age"])
        cookie = response.cookies["session"].value
    assert 3590 <= max_age <= 3600
    status, text, _ = await home(http, server.url, cookie)
    assert is_greeting(status, text, "alice")
    row = await db.fetchrow("SELECT created_at, absolute_expires_at FROM sessions WHERE replaced_at IS NULL")
    assert (row["absolute_expires_at"] - row["created_at"]).total_seconds() == 3600


@pytest.mark.parametrize("offset", ["+120s", "-120s"])
async def test_the_cache_serves_a_session_while_the_table_is_locked_whatever_the_apps_clock(
    offset: str, servers: Servers, db: asyncpg.Connection, skew_url: str, http: aiohttp.ClientSession
) -> None:
    """A cache hit asks no database: with the sessions table locked, a signed-in page is still
    served. (An app 120 s ahead once found every entry's touch older than the touch interval
    and asked the database every time: here that would wait out DATABASE_TIMEOUT and answer 503.)"""
    server = await servers.start(skew_url, DATABASE_TIMEOUT="1", **skewed(offset))

    async def listening() -> bool:
        return bool(
            await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        )

    await eventually(listening, 15, "the server's cache never listened")
    await asyncio.sleep(0.2)  # the listener enables the cache just after LISTEN returns
    status, cookie = await login(http, server.url, "alice", PASSWORD)
    assert cookie is not None, status
    status, text, _ = await home(http, server.url, cookie)  # cached by the login's write, or now
    assert is_greeting(status, text, "alice")
    async with db.transaction():
        await db.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        status, text, _ = await home(http, server.url, cookie)
    assert is_greeting(status, text, "alice"), status
