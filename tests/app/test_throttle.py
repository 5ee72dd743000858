"""Login throttling through the real app: failed logins counted in PostgreSQL per (username, IP),
per IP and per username; past a limit, 429 with Retry-After, whatever the password."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from support.demo import AppLog, add_user, make_settings

from app import usernames
from app.throttle import Limits

MakeClient = Callable[..., Awaitable[TestClient]]

LOGIN_FAILED = "/public/login.html?error=1"


def via(ip: str | None) -> dict[str, str]:
    """Headers that make a trusting app see the request as coming from `ip` over HTTPS."""
    if ip is None:
        return {}
    return {"X-Forwarded-Proto": "https", "X-Forwarded-For": ip}


async def attempt(client: TestClient, username: str, password: str, ip: str | None = None) -> ClientResponse:
    response = await client.post(
        "/login", data={"username": username, "password": password}, headers=via(ip), allow_redirects=False
    )
    await response.read()
    return response


def assert_failed(response: ClientResponse) -> None:
    assert response.status == 303, response.status
    assert response.headers["Location"] == LOGIN_FAILED
    assert "Set-Cookie" not in response.headers


def assert_succeeded(response: ClientResponse) -> None:
    assert response.status == 303, response.status
    assert response.headers["Location"] == "/"
    assert "Set-Cookie" in response.headers


async def assert_throttled(response: ClientResponse, window: int) -> int:
    """A proper 429: Retry-After in whole seconds within the window, and an HTML page leading
    back to the login form. Returns Retry-After."""
    assert response.status == 429, response.status
    retry_after = response.headers["Retry-After"]
    assert re.fullmatch(r"[0-9]+", retry_after), retry_after
    assert 1 <= int(retry_after) <= window
    assert response.content_type == "text/html"
    assert 'href="/public/login.html"' in await response.text()
    assert "Set-Cookie" not in response.headers
    return int(retry_after)


async def failures(pg: asyncpg.Connection, username: str | None = None, ip: str | None = None) -> int:
    """Recorded failures for `username` (as the throttle counts it: its user, if it has one) and
    `ip`, each if given."""
    name_key = usernames.key_or_none(username) if username is not None else None
    return await pg.fetchval(
        "SELECT count(*) FROM login_failures"
        " WHERE ($1::text IS NULL OR username_key = coalesce("
        "    (SELECT 'user:' || id FROM users WHERE username_key = $3), $4))"
        " AND ($2::text IS NULL OR client_ip = $2)",
        username,
        ip,
        name_key,
        usernames.throttle_key(username) if username is not None else None,
    )


def throttled_limits(app_log: AppLog) -> list[str]:
    """The `limit=` of every login.throttled event logged so far."""
    return [m.group(1) for line in app_log.lines() if (m := re.search(r"event=login\.throttled limit=(\w+)", line))]


async def test_sixth_attempt_is_refused_even_with_the_right_password(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    username, password = user
    for _ in range(5):
        assert_failed(await attempt(client, username, "wrong"))
    assert await failures(pg, "alice", "127.0.0.1") == 5

    response = await attempt(client, username, password)
    retry_after = await assert_throttled(response, 900)
    # The failures just happened: the oldest leaves the 15-minute window in about 15 minutes.
    assert retry_after > 900 - 60
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0
    # Any spelling of the name is the same account.
    await assert_throttled(await attempt(client, "ALICE", password), 900)


async def test_same_username_from_another_ip_still_works(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    client = await make_client(make_settings(db_url, trust_proxy=True))
    username, password = user
    for _ in range(5):
        assert_failed(await attempt(client, username, "wrong", ip="10.0.0.1"))
    await assert_throttled(await attempt(client, username, password, ip="10.0.0.1"), 900)

    assert_succeeded(await attempt(client, username, password, ip="10.0.0.2"))
    # The success cleared only its own (username, IP) pair.
    assert await failures(pg, "alice", "10.0.0.1") == 5
    await assert_throttled(await attempt(client, username, password, ip="10.0.0.1"), 900)


async def test_many_usernames_from_one_ip_block_that_ip(
    make_client: MakeClient,
    db_url: str,
    user: tuple[str, str],
    pg: asyncpg.Connection,
    app_log: AppLog,
) -> None:
    client = await make_client(make_settings(db_url, trust_proxy=True))
    for i in range(20):
        assert_failed(await attempt(client, f"victim{i}", "guess", ip="10.0.0.9"))
    assert await failures(pg, ip="10.0.0.9") == 20

    await assert_throttled(await attempt(client, "fresh-name", "guess", ip="10.0.0.9"), 900)
    await assert_throttled(await attempt(client, *user, ip="10.0.0.9"), 900)
    assert throttled_limits(app_log) == ["ip", "ip"]
    # Other places are unaffected.
    assert_failed(await attempt(client, "fresh-name", "guess", ip="10.0.0.10"))
    assert_succeeded(await attempt(client, *user, ip="10.0.0.10"))


async def test_one_username_from_many_ips_blocks_that_username(
    make_client: MakeClient,
    db_url: str,
    user: tuple[str, str],
    pg: asyncpg.Connection,
    app_log: AppLog,
) -> None:
    client = await make_client(make_settings(db_url, trust_proxy=True, login_limits=Limits(per_username=3)))
    username, password = user
    for i in range(3):
        assert_failed(await attempt(client, username, "wrong", ip=f"10.1.0.{i}"))
    await assert_throttled(await attempt(client, username, password, ip="10.1.0.200"), 900)
    assert throttled_limits(app_log) == ["username"]
    assert await failures(pg, "alice") == 3
    # The same new IP can still try other accounts.
    await add_user(pg, "bob", "bobs-password")
    assert_succeeded(await attempt(client, "bob", "bobs-password", ip="10.1.0.200"))


async def test_a_success_clears_its_own_pair_only(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    client = await make_client(make_settings(db_url, trust_proxy=True))
    username, password = user
    await add_user(pg, "bob", "bobs-password")
    for _ in range(4):
        assert_failed(await attempt(client, username, "wrong", ip="10.2.0.1"))
    assert_failed(await attempt(client, username, "wrong", ip="10.2.0.2"))
    assert_failed(await attempt(client, "bob", "wrong", ip="10.2.0.1"))

    assert_succeeded(await attempt(client, "Alice", password, ip="10.2.0.1"))
    assert await failures(pg, "alice", "10.2.0.1") == 0
    assert await failures(pg, "alice", "10.2.0.2") == 1
    assert await failures(pg, "bob", "10.2.0.1") == 1

    # Counting starts over: four more failures are not refused, and the owner still gets in.
    for _ in range(4):
        assert_failed(await attempt(client, username, "wrong", ip="10.2.0.1"))
    assert_succeeded(await attempt(client, username, password, ip="10.2.0.1"))


async def test_malformed_bodies_count_nothing(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    client = await make_client(make_settings(db_url, login_limits=Limits(per_username_ip=1, per_ip=1)))
    bodies: list[tuple[bytes, str]] = [
        (b"username=alice&password=x", "text/plain"),
        (b'{"username": "alice", "password": "x"}', "application/json"),
        (b"username=alice", "application/x-www-form-urlencoded"),
        (b"password=x", "application/x-www-form-urlencoded"),
        (b"username=alice&username=bob&password=x", "application/x-www-form-urlencoded"),
        (b"username=alice&password=%ff%fe", "application/x-www-form-urlencoded"),
        (b"username=alice&password=\xff", "application/x-www-form-urlencoded"),
        (b"username=alice&password=" + b"x" * 9000, "application/x-www-form-urlencoded"),
        (b"", "application/x-www-form-urlencoded"),
    ]
    for body, content_type in bodies:
        response = await client.post("/login", data=body, headers={"Content-Type": content_type}, allow_redirects=False)
        assert response.status == 400, (body[:40], response.status)
    assert await failures(pg) == 0
    # With limits of one, a single counted failure would have locked the owner out.
    assert_succeeded(await attempt(client, *user))


async def test_refused_attempts_are_not_recorded(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    for _ in range(5):
        assert_failed(await attempt(client, user[0], "wrong"))
    for _ in range(5):
        await assert_throttled(await attempt(client, user[0], "wrong"), 900)
    assert await failures(pg) == 5


async def test_counters_hold_across_app_instances(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    settings = make_settings(db_url)
    first, second = await make_client(settings), await make_client(settings)
    assert first.app is not second.app
    for i in range(5):
        assert_failed(await attempt(first if i % 2 else second, user[0], "wrong"))
    await assert_throttled(await attempt(first, *user), 900)
    await assert_throttled(await attempt(second, *user), 900)
    assert await failures(pg) == 5


async def test_block_lifts_once_the_window_has_passed(
    make_client: MakeClient, db_url: str, user: tuple[str, str]
) -> None:
    # A two-second window: both failures are surely inside it even on a slow machine.
    client = await make_client(make_settings(db_url, login_limits=Limits(window=2, per_username_ip=2)))
    for _ in range(2):
        assert_failed(await attempt(client, user[0], "wrong"))
    retry_after = await assert_throttled(await attempt(client, *user), 2)
    # Retry-After is honest: once it has passed, the oldest failure has left the window.
    await asyncio.sleep(retry_after + 0.25)
    assert_succeeded(await attempt(client, *user))


async def test_unknown_and_known_usernames_are_counted_alike(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    known = await attempt(client, user[0], "wrong")
    unknown = await attempt(client, "nobody", "wrong")
    implausible = await attempt(client, "x" * 65, "wrong")
    for response in (known, unknown, implausible):
        assert_failed(response)
    rows = await pg.fetch("SELECT username_key, client_ip FROM login_failures ORDER BY id")
    alice_id = await pg.fetchval("SELECT id FROM users WHERE username = 'alice'")
    assert [tuple(r) for r in rows] == [
        (f"user:{alice_id}", "127.0.0.1"),  # a user is counted as the user, whatever the spelling
        ("name:nobody", "127.0.0.1"),
        ("name:" + "x" * 65, "127.0.0.1"),
    ]
    # An attacker cannot tell from the throttle either: a made-up name is refused the same way.
    for _ in range(4):
        assert_failed(await attempt(client, "nobody", "wrong"))
    await assert_throttled(await attempt(client, "nobody", "wrong"), 900)


@pytest.mark.parametrize("username", ["nul\x00byte", "\x00", "tab\there", "x" * 300 + "\x00"])
async def test_usernames_no_user_can_have_are_throttled_not_crashed(
    make_client: MakeClient, db_url: str, pg: asyncpg.Connection, username: str
) -> None:
    """Any string can arrive in the form; control characters (NUL included, which PostgreSQL
    text cannot hold) are counted like any other failure, never a 500."""
    client = await make_client(make_settings(db_url, login_limits=Limits(per_username_ip=2)))
    for _ in range(2):
        assert_failed(await attempt(client, username, "wrong"))
    assert await failures(pg) == 2
    await assert_throttled(await attempt(client, username, "wrong"), 900)
