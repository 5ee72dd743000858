"""A database that cannot be written, and a schema the code does not expect, while serving.

- A failover read-only: the app's URL points at a real hot standby (a streaming replica of an
  embedded PostgreSQL this module starts, read-only until promoted). Signed-in pages are served
  (the touch a read would write is skipped); logins and logouts answer 503 with Retry-After and
  a log line that says the database is read-only; no 500, no traceback. Once the standby is
  promoted, the same process logs in and out again, without a restart.
- `alembic downgrade` while serving: logins answer 503 and the log says the schema is not what
  the code expects, once; after `upgrade head` they succeed.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from support.demo import add_user
from support.postgres import admin, database_url, eventually, start_embedded
from support.servers import Servers, home, is_greeting, login, logout, new_http
from support.standby import Standby

from app import schema

PASSWORD = "correct horse"
DATABASE = "readonly"


@pytest.fixture(scope="module")
def primary() -> Iterator[Any]:
    server: Any = start_embedded("pgprimary-")
    try:
        asyncio.run(admin(server.get_uri(), f'CREATE DATABASE "{DATABASE}"'))
        schema.upgrade(database_url(server.get_uri(), DATABASE))
        yield server
    finally:
        server.cleanup()


@pytest.fixture
async def primary_db(primary: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url(primary.get_uri(), DATABASE))
    await conn.execute("TRUNCATE sessions, users, login_failures RESTART IDENTITY CASCADE")
    await add_user(conn, "alice", PASSWORD)
    yield conn
    await conn.close()


@pytest.fixture
def standby(primary: Any, primary_db: asyncpg.Connection) -> Iterator[Standby]:
    replica = Standby(primary).start()
    try:
        yield replica
    finally:
        replica.stop()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_http() as client:
        yield client


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(schema.alembic_config(url), revision)


async def _post(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, dict[str, str]]:
    async with http.post(url, allow_redirects=False, **kwargs) as response:
        await response.read()
        return response.status, dict(response.headers)


async def test_a_read_only_standby_serves_signed_in_pages_refuses_writes_with_503_and_recovers_when_promoted(
    primary: Any, primary_db: asyncpg.Connection, standby: Standby, servers: Servers, http: aiohttp.ClientSession
) -> None:
    writer = await servers.start(database_url(primary.get_uri(), DATABASE))
    cookie = (await login(http, writer.url, "alice", PASSWORD))[1]
    assert cookie is not None
    await standby.caught_up(DATABASE, "SELECT count(*) = 1 FROM sessions WHERE user_id IS NOT NULL")
    writer.stop()

    # A process whose URL now points at the standby (a failover not yet promoted). Its touch
    # memo is empty, so its first read of the session is due a touch: refused, skipped.
    server = await servers.start(standby.url(DATABASE), LOG_LEVEL="INFO")
    for _ in range(3):
        status, text, _ = await home(http, server.url, cookie)
        assert is_greeting(status, text, "alice"), status

    status, headers = await _post(http, server.url + "/login", data={"username": "alice", "password": PASSWORD})
    assert status == 503
    assert headers["Retry-After"] == "2"
    status, headers = await _post(http, server.url + "/logout", headers={"Cookie": f"session={cookie}"})
    assert status == 503
    assert headers["Retry-After"] == "2"
    status, text, _ = await home(http, server.url, cookie)
    assert is_greeting(status, text, "alice"), "a refused logout ended the session"
    log = server.log()
    assert "database is read-only" in log
    assert "Traceback" not in log
    assert " 500 " not in log

    await asyncio.to_thread(standby.promote)

    async def logged_in() -> bool:
        return (await login(http, server.url, "alice", PASSWORD))[1] is not None

    await eventually(logged_in, 15, "no login after the promotion")
    assert await logout(http, server.url, cookie) == 303
    status, _, _ = await home(http, server.url, cookie)
    assert status == 303  # logged out: the write reached the promoted database
    log = server.log()
    assert "database writable again" in log
    assert "Traceback" not in log


async def test_a_schema_downgraded_while_serving_answers_503_with_one_log_line_until_upgraded(
    primary: Any, primary_db: asyncpg.Connection, servers: Servers, http: aiohttp.ClientSession
) -> None:
    url = database_url(primary.get_uri(), DATABASE)
    server = await servers.start(url)
    assert (await login(http, server.url, "alice", PASSWORD))[1] is not None
    await asyncio.to_thread(_downgrade, url, "0004")  # drops login_failures.device
    try:
        for _ in range(5):
            status, headers = await _post(http, server.url + "/login", data={"username": "alice", "password": "wrong"})
            assert status == 503
            assert headers["Retry-After"] == "2"
        log = server.log()
        assert log.count("the schema is not what this code expects") == 1, log
        assert "Traceback" not in log
    finally:
        await asyncio.to_thread(schema.upgrade, url)
    assert (await login(http, server.url, "alice", PASSWORD))[1] is not None
