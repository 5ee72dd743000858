"""The session cache across real server processes (`python -m app serve` with SESSION_CACHE=on,
each its own process, LISTEN connection and memory): what one process or an operator ends, every
other process refuses once the notification arrives, well inside SESSION_CACHE_MAX_AGE."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from support.servers import Server, Servers, home, is_greeting, new_http, signed_in

# Long enough that a process relying on the maximum age alone would fail every check below.
MAX_AGE = "60"
NOTIFIED_WITHIN = 2.0  # seconds


@pytest.fixture
async def cached_pair(db_url: str, tmp_path: Path, user: tuple[str, str]) -> AsyncIterator[tuple[Server, Server]]:
    servers = Servers(tmp_path)
    try:
        a = await servers.start(db_url, SESSION_CACHE="on", SESSION_CACHE_MAX_AGE=MAX_AGE)
        b = await servers.start(db_url, SESSION_CACHE="on", SESSION_CACHE_MAX_AGE=MAX_AGE)
        yield a, b
    finally:
        servers.stop_all()


@contextlib.asynccontextmanager
async def sessions_locked(db_url: str) -> AsyncIterator[None]:
    """The sessions table locked: any read that asks the database waits (then 503s)."""
    conn = await asyncpg.connect(db_url)
    try:
        async with conn.transaction():
            await conn.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await conn.close()


async def served_from_cache(http: aiohttp.ClientSession, server: Server, cookie: str, db_url: str) -> None:
    """Until `server` greets `cookie` while the database could not answer: then it is cached."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        await home(http, server.url, cookie)  # a read through it, to cache the session
        async with sessions_locked(db_url):
            with contextlib.suppress(TimeoutError, aiohttp.ClientError):
                async with asyncio.timeout(1.0):
                    status, text, _ = await home(http, server.url, cookie)
                    if is_greeting(status, text, "alice"):
                        return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{server.url} never served the session from its cache")


async def refused_within(http: aiohttp.ClientSession, server: Server, cookie: str, seconds: float) -> float:
    started = time.monotonic()
    while True:
        status, text, _ = await home(http, server.url, cookie)
        if not is_greeting(status, text, "alice"):
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{server.url} still greets the ended session after {seconds} s")
        await asyncio.sleep(0.05)


async def test_truncating_the_table_empties_every_processes_cache(
    cached_pair: tuple[Server, Server], db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    a, b = cached_pair
    async with new_http() as http:
        cookie = await signed_in(http, a.url, *user)
        for server in (a, b):
            await served_from_cache(http, server, cookie, db_url)
        await pg.execute("TRUNCATE sessions")
        for server in (a, b):
            await refused_within(http, server, cookie, NOTIFIED_WITHIN)
