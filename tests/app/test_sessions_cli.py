"""`python -m app sessions list|revoke` as an operator runs it, against sessions made through the
real app: one tab-separated line per live session, and revocation by handle or all at once."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from support.demo import add_user, login, run_app_command, session_cookie

AiohttpClient = Callable[..., Awaitable[TestClient]]

CHROME_LINUX = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
TABBED_AGENT = "Odd\tAgent/1.0"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def ok_lines(self, note: str = "") -> list[str]:
        """stdout's lines of a successful run; stderr must be empty, or exactly `note`."""
        assert self.returncode == 0, self
        assert self.stderr == (f"{note}\n" if note else ""), self.stderr
        return self.stdout.splitlines()

    def one_error_line(self) -> str:
        assert self.returncode != 0, self
        assert self.stdout == "", self.stdout
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("error:"), self.stderr
        return lines[0]


async def sessions_cli(*args: str, database_url: str) -> Result:
    return Result(*await run_app_command("sessions", *args, database_url=database_url))


def handle_of(client: TestClient) -> str:
    cookie = session_cookie(client)
    assert cookie is not None, "not logged in"
    return hashlib.sha256(cookie.split(".")[0].encode()).digest()[:8].hex()


async def is_anonymous(client: TestClient) -> bool:
    response = await client.get("/", allow_redirects=False)
    assert response.status in (200, 303), response.status
    return response.status == 303


@pytest.fixture
async def browser(client: TestClient, aiohttp_client: AiohttpClient) -> Callable[[str], Awaitable[TestClient]]:
    """`await browser(user_agent)`: another browser on the same app, with its own cookie jar."""

    async def make(user_agent: str) -> TestClient:
        return await aiohttp_client(client.server, headers={"User-Agent": user_agent})

    return make


@pytest.fixture
async def bob(pg: asyncpg.Connection) -> tuple[str, str]:
    password = secrets.token_urlsafe(12)
    await add_user(pg, "bob", password)
    return "bob", password


async def test_list_prints_one_line_per_live_session(
    browser: Callable[[str], Awaitable[TestClient]],
    user: tuple[str, str],
    bob: tuple[str, str],
    pg: asyncpg.Connection,
    db_url: str,
) -> None:
    chrome, odd, expired, bobs = [
        await browser(ua) for ua in (CHROME_LINUX, TABBED_AGENT, FIREFOX_WINDOWS, CHROME_LINUX)
    ]
    for device in (chrome, odd, expired):
        await login(device, *user)
    await login(bobs, *bob)
    await pg.execute(
        "UPDATE sessions SET idle_expires_at = now() - interval '1 second' WHERE substring(id_hash FROM 1 FOR 8) = $1",
        bytes.fromhex(handle_of(expired)),
    )

    lines = (await sessions_cli("list", "alice", database_url=db_url)).ok_lines()
    assert len(lines) == 2, lines
    by_handle = {}
    for line in lines:
        fields = line.split("\t")
        assert len(fields) == 5, line
        by_handle[fields[0]] = fields
    assert set(by_handle) == {handle_of(chrome), handle_of(odd)}

    now = datetime.now(UTC)
    for handle, created, seen, ip, _ in by_handle.values():
        assert len(handle) == 16
        for moment in (created, seen):
            parsed = datetime.fromisoformat(moment)
            assert parsed.tzinfo is not None
            assert abs(parsed - now) < timedelta(minutes=2)
        assert ip == "127.0.0.1"
    assert by_handle[handle_of(chrome)][4] == CHROME_LINUX
    assert by_handle[handle_of(odd)][4] == "Odd\\tAgent/1.0"  # escaped: a tab cannot break the columns

    # Bob's own listing (the name in any case), and a user with no sessions.
    await add_user(pg, "carol", "pw")
    bobs_list, carols_list = await asyncio.gather(
        sessions_cli("list", "BOB", database_url=db_url), sessions_cli("list", "carol", database_url=db_url)
    )
    assert [line.split("\t")[0] for line in bobs_list.ok_lines()] == [handle_of(bobs)]
    assert carols_list.ok_lines(note="carol has no live sessions") == []


async def test_revoke_one_handle_ends_exactly_that_session(
    browser: Callable[[str], Awaitable[TestClient]],
    user: tuple[str, str],
    bob: tuple[str, str],
    pg: asyncpg.Connection,
    db_url: str,
) -> None:
    chrome, firefox, bobs = [await browser(ua) for ua in (CHROME_LINUX, FIREFOX_WINDOWS, CHROME_LINUX)]
    await login(chrome, *user)
    await login(firefox, *user)
    await login(bobs, *bob)

    result = await sessions_cli("revoke", "alice", handle_of(firefox), database_url=db_url)
    assert len(result.ok_lines()) == 1
    assert await is_anonymous(firefox)
    assert not await is_anonymous(chrome)
    assert not await is_anonymous(bobs)
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 2
    remaining = (await sessions_cli("list", "alice", database_url=db_url)).ok_lines()
    assert [line.split("\t")[0] for line in remaining] == [handle_of(chrome)]


async def test_revoke_all_ends_every_session_of_that_user_only(
    browser: Callable[[str], Awaitable[TestClient]],
    user: tuple[str, str],
    bob: tuple[str, str],
    pg: asyncpg.Connection,
    db_url: str,
) -> None:
    chrome, firefox, bobs = [await browser(ua) for ua in (CHROME_LINUX, FIREFOX_WINDOWS, CHROME_LINUX)]
    await login(chrome, *user)
    await login(firefox, *user)
    await login(bobs, *bob)

    result = await sessions_cli("revoke", "alice", "--all", database_url=db_url)
    assert len(result.ok_lines()) == 1
    assert await is_anonymous(chrome)
    assert await is_anonymous(firefox)
    assert not await is_anonymous(bobs)
    user_ids = await pg.fetch("SELECT u.username FROM sessions s JOIN users u ON u.id = s.user_id")
    assert [r["username"] for r in user_ids] == ["bob"]
    assert (await sessions_cli("list", "alice", database_url=db_url)).ok_lines(note="alice has no live sessions") == []


async def test_unknown_user_is_one_error_line(user: tuple[str, str], db_url: str) -> None:
    results = await asyncio.gather(
        *(
            sessions_cli(*args, database_url=db_url)
            for args in (("list", "nobody"), ("revoke", "nobody", "0123456789abcdef"), ("revoke", "nobody", "--all"))
        )
    )
    for result in results:
        assert "nobody" in result.one_error_line()


async def test_unknown_handle_is_one_error_line_and_ends_nothing(
    browser: Callable[[str], Awaitable[TestClient]],
    user: tuple[str, str],
    bob: tuple[str, str],
    pg: asyncpg.Connection,
    db_url: str,
) -> None:
    chrome, expired, bobs = [await browser(ua) for ua in (CHROME_LINUX, FIREFOX_WINDOWS, CHROME_LINUX)]
    await login(chrome, *user)
    await login(expired, *user)
    await login(bobs, *bob)
    await pg.execute(
        "UPDATE sessions SET idle_expires_at = now() - interval '1 second' WHERE substring(id_hash FROM 1 FOR 8) = $1",
        bytes.fromhex(handle_of(expired)),
    )
    before = await pg.fetch("SELECT id_hash, version, idle_expires_at FROM sessions ORDER BY id_hash")
    handles = (
        secrets.token_hex(8),  # nobody's
        handle_of(bobs),  # another user's
        handle_of(expired),  # alice's, but over
        handle_of(chrome)[:8],  # a prefix of a live one
        "not-a-handle",
    )
    results = await asyncio.gather(*(sessions_cli("revoke", "alice", h, database_url=db_url) for h in handles))
    for result in results:
        result.one_error_line()
    after = await pg.fetch("SELECT id_hash, version, idle_expires_at FROM sessions ORDER BY id_hash")
    assert after == before
    assert not await is_anonymous(chrome)
    assert not await is_anonymous(bobs)
