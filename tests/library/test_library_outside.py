"""The library outside this repository: `pip install <checkout>` into a fresh virtual environment,
and an app of another shape than the demo (outside_app.py: a JSON API, text account handles,
its own table names, the table made by create_schema(), no Alembic of ours), two processes of it
on one database, driven through HTTP, with the session cache off and on."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from support.library_envs import Program
from support.paths import REPO_ROOT
from support.ports import free_port

COOKIE = "shop_sid"
IDLE_TIMEOUT = 3


class Client:
    """Sends exactly the cookie it is given; returns (status, JSON body, the cookie set: a value,
    "" when expired, None when untouched)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http

    async def call(
        self, program: Program, method: str, path: str, cookie: str | None = None, body: Any = None
    ) -> tuple[int, Any, str | None]:
        headers = {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}
        async with self.http.request(method, program.url + path, headers=headers, json=body) as response:
            data = await response.json(content_type=None)
            morsel = response.cookies.get(COOKIE)
            return response.status, data, None if morsel is None else morsel.value


async def within(seconds: float, check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (not within {seconds} s)")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("cache", ["off", "on"])
async def test_an_app_of_another_shape_on_the_installed_library(
    cache: str, checkout_python: Path, empty_url: str, tmp_path: Path
) -> None:
    url = empty_url
    shutil.copy(REPO_ROOT / "tests" / "support" / "outside_app.py", tmp_path / "outside_app.py")
    env = {"DATABASE_URL": url, "SESSION_CACHE": cache, "IDLE_TIMEOUT": str(IDLE_TIMEOUT)}
    a = Program(checkout_python, tmp_path, "outside_app.py", free_port(), **env)
    b = Program(checkout_python, tmp_path, "outside_app.py", free_port(), **env)
    conn = await asyncpg.connect(url)
    try:
        await a.ready("/health")
        await b.ready("/health")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            client = Client(http)
            for program in (a, b):

                async def cache_state(program: Program = program) -> bool:
                    return (await client.call(program, "GET", "/health"))[1]["cache"] == (
                        True if cache == "on" else None
                    )

                await within(10, cache_state, "the cache listener came up")
            await flows(client, a, b, conn, cached=cache == "on")
    finally:
        await conn.close()
        outputs = a.stop() + b.stop()
    assert "Traceback" not in outputs, outputs


async def flows(client: Client, a: Program, b: Program, conn: asyncpg.Connection, *, cached: bool) -> None:
    async def rows() -> int:
        """Session rows; the tombstones of sessions used up by a login or renewal do not count."""
        return await conn.fetchval("SELECT count(*) FROM shop.web_sessions WHERE replaced_at IS NULL")

    async def refused(program: Program, cookie: str) -> bool:
        return (await client.call(program, "GET", "/me", cookie))[0] == 401

    # With the cache, another process learns of an end by notification: give it a moment.
    settle = 2.0 if cached else 0.0

    # Create: the session's user_id is the account's number.
    status, body, first = await client.call(a, "POST", "/signin", body={"handle": "alice@example.com"})
    assert status == 200
    assert first
    assert await conn.fetchval("SELECT user_id FROM shop.web_sessions") == body["number"]
    assert await conn.fetchval("SELECT to_regclass('public.sessions')") is None  # only its own table

    # Load, through the other process too; change in place, seen by both.
    assert (await client.call(b, "GET", "/me", first))[1] == {"handle": "alice@example.com", "cart": [], "admin": None}
    assert (await client.call(a, "POST", "/cart", first, {"item": "apple"}))[0] == 200

    async def b_sees_the_apple() -> bool:
        return (await client.call(b, "GET", "/me", first))[1]["cart"] == ["apple"]

    await within(settle + 0.5, b_sees_the_apple, "the change reached the other process")

    # new_session replaces the identity the request came with: the old cookie loads nothing.
    status, _, second = await client.call(a, "POST", "/signin", first, {"handle": "bob"})
    assert status == 200
    assert second
    assert second != first
    for program in (a, b):
        await within(settle + 0.5, lambda program=program: refused(program, first), "the replaced session ended")
    assert await rows() == 1

    # renew_session: a new ID, the same data; the old ID is dead everywhere.
    status, _, third = await client.call(b, "POST", "/elevate", second)
    assert status == 200
    assert third
    assert third != second
    for program in (a, b):
        await within(settle + 0.5, lambda program=program: refused(program, second), "the renewed session's old ID")
    assert (await client.call(a, "GET", "/me", third))[1] == {"handle": "bob", "cart": [], "admin": True}
    listed = (await client.call(a, "GET", "/devices", third))[1]
    assert len(listed) == 1
    assert listed[0]["current"] is True

    # invalidate: the row goes, the cookie is expired, every process refuses it.
    status, _, expired = await client.call(a, "POST", "/signout", third)
    assert status == 200
    assert expired == ""
    assert await rows() == 0
    for program in (a, b):
        await within(settle + 0.5, lambda program=program: refused(program, third), "the ended session")

    # Unknown and malformed cookies: refused, nothing created, no error.
    for cookie in ("garbage", "A" * 43 + "." + "B" * 43, third):
        assert await refused(a, cookie)
    assert await rows() == 0

    # Expiry: idle for longer than the idle timeout ends the session; the sweeper removes the row.
    _, _, fourth = await client.call(b, "POST", "/signin", body={"handle": "carol"})
    assert fourth
    assert not await refused(a, fourth)
    await asyncio.sleep(IDLE_TIMEOUT + 0.5)
    assert await refused(a, fourth)
    assert await refused(b, fourth)

    async def swept() -> bool:
        return await rows() == 0

    await within(5, swept, "the sweeper removed the expired row")

    async def no_tombstones() -> bool:
        return await conn.fetchval("SELECT count(*) FROM shop.web_sessions") == 0

    await within(15, no_tombstones, "the sweeper removed the tombstones once their time was up")
