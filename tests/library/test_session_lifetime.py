"""Each session's lifetime, aiohttp-session's way (issue 21, item 2): a handler sets
`session.max_age`. The default stays a persistent cookie of `absolute_timeout`; None is a
browser-session cookie (no Max-Age) the server still ends at its idle and absolute timeouts; N
is a cookie of Max-Age N and a session the server ends N seconds after its creation ("remember
me"), bounded by `max_remember_timeout`, idle-ended by `remember_idle_timeout`. Through HTTP
with the real library and PostgreSQL; time passes by moving the row's times into the past, as
the database's clock would see them after a wait, never by sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import ArgumentError, PostgresStorage, SessionCache
from aiohttp_session_postgres.tokens import id_hash_of
from support.keys import AUTH_KEY, ENC_KEY
from support.lifetime_app import lifetime_app, only_cookie, raw_set_cookie, sent

ClientMaker = Callable[..., Awaitable[TestClient]]

IDLE, ABSOLUTE, REMEMBER, REMEMBER_IDLE = 30, 300, 3600, 600
TIMEOUTS = {
    "idle_timeout": IDLE,
    "absolute_timeout": ABSOLUTE,
    "max_remember_timeout": REMEMBER,
    "remember_idle_timeout": REMEMBER_IDLE,
}


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


@pytest.fixture(params=["database", "cache"])
async def client(request: pytest.FixtureRequest, aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> TestClient:
    """The app with TIMEOUTS, reading every session from the database, or through a cache (its
    listener is not run: the cache stays disabled, but every write goes through CachedRows)."""
    cache = SessionCache() if request.param == "cache" else None
    return await lifetime_app(aiohttp_client, pool, cache=cache, **TIMEOUTS)


async def login(client: TestClient, max_age: str | None = None) -> tuple[str, Any, dict[str, Any]]:
    """A login (with `max_age` "none" or seconds, if given): (cookie value, morsel, body)."""
    response = await client.post("/login" + (f"?max_age={max_age}" if max_age else ""))
    assert response.status == 200, await response.text()
    name, morsel = only_cookie(response)
    assert name == "session"
    return morsel.value, morsel, await response.json()


async def info(client: TestClient, cookie: str) -> dict[str, Any]:
    response = await client.get("/info", headers=sent("session", cookie))
    assert response.status == 200
    return await response.json()


async def row(pg: asyncpg.Connection, cookie: str) -> asyncpg.Record:
    return await pg.fetchrow(
        "SELECT idle_timeout, browser_session,"
        " extract(epoch FROM absolute_expires_at - created_at)::float8 AS lifetime,"
        " extract(epoch FROM idle_expires_at - last_seen_at)::float8 AS idle,"
        " created_at, absolute_expires_at FROM sessions WHERE id_hash = $1 AND replaced_at IS NULL",
        id_hash_of(cookie.split(".")[0]),
    )


async def age(pg: asyncpg.Connection, seconds: float) -> None:
    """Every session as it would be `seconds` later, without a request meanwhile."""
    await pg.execute(
        "UPDATE sessions SET created_at = created_at - make_interval(secs => $1),"
        " last_seen_at = last_seen_at - make_interval(secs => $1),"
        " idle_expires_at = idle_expires_at - make_interval(secs => $1),"
        " absolute_expires_at = absolute_expires_at - make_interval(secs => $1)",
        float(seconds),
    )


# -- the three kinds ------------------------------------------------------------------------------


async def test_by_default_a_persistent_cookie_of_the_absolute_timeout(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie, morsel, body = await login(client)
    assert body["max_age"] == ABSOLUTE  # as aiohttp-session's storages set a new session's
    assert ABSOLUTE - 1 <= int(morsel["max-age"]) <= ABSOLUTE
    stored = await row(lib_pg, cookie)
    assert (stored["idle_timeout"], stored["browser_session"], stored["lifetime"]) == (None, False, ABSOLUTE)
    assert (await info(client, cookie))["max_age"] == ABSOLUTE


async def test_max_age_none_is_a_browser_session_cookie_the_server_still_ends(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie, _morsel, body = await login(client, "none")
    assert body["max_age"] is None
    header = raw_set_cookie(await client.post("/login?max_age=none"))
    assert "Max-Age" not in header
    assert "expires" not in header.lower()
    stored = await row(lib_pg, cookie)
    assert (stored["idle_timeout"], stored["browser_session"], stored["lifetime"]) == (None, True, ABSOLUTE)
    assert (await info(client, cookie))["max_age"] is None  # reported as loaded
    # The server's idle timeout still ends it...
    await age(lib_pg, IDLE + 1)
    assert (await info(client, cookie))["new"] is True
    # ...and its absolute timeout, however active.
    other, _morsel, _body = await login(client, "none")
    await lib_pg.execute(
        "UPDATE sessions SET absolute_expires_at = created_at + make_interval(secs => 0.5),"
        " idle_expires_at = least(idle_expires_at, created_at + make_interval(secs => 0.5))"
    )
    await age(lib_pg, 1)
    assert (await info(client, other))["new"] is True


async def test_max_age_n_remembers_the_session_for_n_seconds(client: TestClient, lib_pg: asyncpg.Connection) -> None:
    cookie, morsel, body = await login(client, str(REMEMBER))
    assert body["max_age"] == REMEMBER
    assert REMEMBER - 1 <= int(morsel["max-age"]) <= REMEMBER
    stored = await row(lib_pg, cookie)
    assert (stored["idle_timeout"], stored["browser_session"], stored["lifetime"]) == (
        REMEMBER_IDLE,
        False,
        REMEMBER,
    )
    assert stored["idle"] == pytest.approx(REMEMBER_IDLE, abs=1)
    assert (await info(client, cookie))["max_age"] == REMEMBER
    plain, _morsel, _body = await login(client)
    # Past the normal absolute timeout (and the normal idle timeout), a request every
    # REMEMBER_IDLE / 2: the remembered session lives on, an ordinary one does not.
    for _ in range(2 * ABSOLUTE // (REMEMBER_IDLE // 2) + 1):
        await age(lib_pg, REMEMBER_IDLE // 2)
        assert (await info(client, cookie))["data"] == {"user_id": 1}
    assert (await info(client, plain))["new"] is True
    # The touch slid its idle deadline by its own idle timeout.
    assert (await row(lib_pg, cookie))["idle"] == pytest.approx(REMEMBER_IDLE, abs=1)
    # Never past N from its creation, however active.
    lived = await lib_pg.fetchval("SELECT extract(epoch FROM now() - min(created_at)) FROM sessions")
    while lived + REMEMBER_IDLE // 2 < REMEMBER:
        await age(lib_pg, REMEMBER_IDLE // 2)
        lived += REMEMBER_IDLE // 2
        assert (await info(client, cookie))["data"] == {"user_id": 1}
        # The touch never slides the idle deadline past the absolute one.
        stored = await row(lib_pg, cookie)
        assert stored["lifetime"] == REMEMBER
    await age(lib_pg, REMEMBER - lived + 1)
    assert (await info(client, cookie))["new"] is True


async def test_a_remembered_session_ends_after_its_own_idle_timeout(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    remembered, _m, _b = await login(client, str(REMEMBER))
    plain, _m, _b = await login(client)
    await age(lib_pg, IDLE + 1)  # past the ordinary idle timeout
    assert (await info(client, plain))["new"] is True
    assert (await info(client, remembered))["data"] == {"user_id": 1}
    await age(lib_pg, REMEMBER_IDLE + 1)  # past its own
    assert (await info(client, remembered))["new"] is True


async def test_a_max_age_shorter_than_the_absolute_timeout_keeps_the_ordinary_idle_timeout(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie, morsel, _body = await login(client, "20")
    assert 19 <= int(morsel["max-age"]) <= 20
    stored = await row(lib_pg, cookie)
    assert (stored["idle_timeout"], stored["lifetime"]) == (None, 20)
    assert stored["idle"] == pytest.approx(20, abs=1)  # the idle deadline never passes the absolute one
    await age(lib_pg, 21)
    assert (await info(client, cookie))["new"] is True


# -- the bound --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "error"),
    [(str(REMEMBER + 1), "ValueError"), ("0", "ValueError"), ("-5", "ValueError"), ("str:60", "TypeError")],
)
async def test_a_max_age_over_the_bound_or_not_seconds_is_refused_at_the_assignment(
    client: TestClient, lib_pg: asyncpg.Connection, value: str, error: str
) -> None:
    cookie, _morsel, _body = await login(client)
    before = await row(lib_pg, cookie)
    response = await client.post(f"/max-age?value={value}", headers=sent("session", cookie))
    assert response.status == 400
    text = await response.text()
    assert text.startswith(error)
    assert "max_age" in text
    if value == str(REMEMBER + 1):
        assert "max_remember_timeout" in text
    assert "Set-Cookie" not in response.headers
    assert await row(lib_pg, cookie) == before


async def test_by_default_nothing_may_live_longer_than_the_absolute_timeout(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    client = await lifetime_app(aiohttp_client, pool, idle_timeout=IDLE, absolute_timeout=ABSOLUTE)
    response = await client.post(f"/login?max_age={ABSOLUTE + 1}")
    assert response.status == 500  # the handler's ValueError: the app allowed no longer session
    assert "Set-Cookie" not in response.headers
    assert (await client.post(f"/login?max_age={ABSOLUTE}")).status == 200


async def test_the_bounds_are_checked_at_construction(pool: asyncpg.Pool) -> None:
    def made(**options: int) -> PostgresStorage:
        options = {"idle_timeout": 60, "touch_interval": 10, **options}
        return PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], **options)

    for options, argument in (
        ({"absolute_timeout": 600, "max_remember_timeout": 599}, "max_remember_timeout"),
        ({"idle_timeout": 60, "remember_idle_timeout": 59}, "remember_idle_timeout"),
        ({"absolute_timeout": 600, "max_remember_timeout": 0}, "max_remember_timeout"),
        ({"max_remember_timeout": 86400, "remember_idle_timeout": 86401}, "remember_idle_timeout"),
        ({"absolute_timeout": 600, "remember_idle_timeout": 601}, "remember_idle_timeout"),
    ):
        with pytest.raises(ArgumentError) as raised:
            made(**options)
        assert raised.value.argument == argument
    made(max_remember_timeout=86400 * 30, remember_idle_timeout=86400 * 7)


# -- a change of a loaded session's lifetime --------------------------------------------------------


async def test_setting_max_age_on_a_loaded_session_saves_it_and_sends_the_cookie_again(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    cookie, _morsel, _body = await login(client)
    await age(lib_pg, 10)
    response = await client.post(f"/max-age?value={REMEMBER}", headers=sent("session", cookie))
    assert response.status == 200
    name, morsel = only_cookie(response)
    assert (name, morsel.value) == ("session", cookie)  # the same session, a new lifetime
    assert REMEMBER - 11 <= int(morsel["max-age"]) <= REMEMBER - 10  # counted from its creation
    stored = await row(lib_pg, cookie)
    assert (stored["idle_timeout"], stored["browser_session"], stored["lifetime"]) == (
        REMEMBER_IDLE,
        False,
        REMEMBER,
    )
    assert (await info(client, cookie))["max_age"] == REMEMBER
    # Then "forget me": a browser-session cookie, the ordinary lifetime again.
    response = await client.post("/max-age?value=none", headers=sent("session", cookie))
    assert "Max-Age" not in raw_set_cookie(response)
    stored = await row(lib_pg, cookie)
    assert (stored["idle_timeout"], stored["browser_session"], stored["lifetime"]) == (None, True, ABSOLUTE)
    # The same value again changes nothing: nothing saved, no cookie.
    response = await client.post("/max-age?value=none", headers=sent("session", cookie))
    assert "Set-Cookie" not in response.headers


async def test_a_lifetime_its_age_has_passed_ends_the_session(client: TestClient, lib_pg: asyncpg.Connection) -> None:
    cookie, _morsel, _body = await login(client)
    await age(lib_pg, 25)
    response = await client.post("/max-age?value=20", headers=sent("session", cookie))
    assert response.status == 200
    assert only_cookie(response)[1]["max-age"] == "0"
    assert (await info(client, cookie))["new"] is True


# -- renewal and key rotation keep the kind ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["none", str(REMEMBER), "default"])
async def test_a_renewal_keeps_the_kind_and_the_absolute_deadline(
    client: TestClient, lib_pg: asyncpg.Connection, kind: str
) -> None:
    cookie, _morsel, _body = await login(client, None if kind == "default" else kind)
    before = await row(lib_pg, cookie)
    await age(lib_pg, 5)
    response = await client.post("/renew", headers=sent("session", cookie))
    assert response.status == 200
    expected = {"none": None, "default": ABSOLUTE}.get(kind, REMEMBER)
    assert (await response.json())["max_age"] == expected
    _name, morsel = only_cookie(response)
    assert morsel.value != cookie
    if kind == "none":
        assert "Max-Age" not in raw_set_cookie(response)
    else:
        assert expected - 6 <= int(morsel["max-age"]) <= expected - 5
    after = await row(lib_pg, morsel.value)
    assert (after["idle_timeout"], after["browser_session"], after["lifetime"]) == (
        before["idle_timeout"],
        before["browser_session"],
        before["lifetime"],
    )
    assert after["absolute_expires_at"] == before["absolute_expires_at"] - timedelta(seconds=5)
    assert (await info(client, morsel.value))["max_age"] == expected


async def test_a_renewal_with_a_new_max_age_takes_it(client: TestClient, lib_pg: asyncpg.Connection) -> None:
    cookie, _morsel, _body = await login(client)
    response = await client.post(f"/max-age?value={REMEMBER}", headers=sent("session", cookie))
    assert response.status == 200
    renewed = await client.post("/renew", headers=sent("session", cookie))
    morsel = only_cookie(renewed)[1]
    assert (await row(lib_pg, morsel.value))["lifetime"] == REMEMBER


@pytest.mark.parametrize("kind", ["none", str(REMEMBER)])
async def test_a_cookie_re_signed_after_a_key_rotation_keeps_its_kind(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool, kind: str
) -> None:
    old_key = b"o" * 32
    before = await lifetime_app(aiohttp_client, pool, keys=(old_key,), **TIMEOUTS)
    cookie, _morsel, _body = await login(before, kind)
    after = await lifetime_app(aiohttp_client, pool, keys=(AUTH_KEY, old_key), **TIMEOUTS)
    response = await after.get("/info", headers=sent("session", cookie))
    assert (await response.json())["data"] == {"user_id": 1}
    _name, morsel = only_cookie(response)
    assert morsel.value != cookie  # re-signed under the new key
    if kind == "none":
        assert "Max-Age" not in raw_set_cookie(response)
    else:
        assert REMEMBER - 2 <= int(morsel["max-age"]) <= REMEMBER


# -- rows of the previous schema ------------------------------------------------------------------


async def test_a_row_without_lifetime_columns_set_is_an_ordinary_session(
    client: TestClient, lib_pg: asyncpg.Connection
) -> None:
    """As a process of schema 1 writes rows (the columns NULL): the storage's timeouts, a
    persistent cookie, through load, touch, write and renewal."""
    cookie, _morsel, _body = await login(client)
    await lib_pg.execute("UPDATE sessions SET idle_timeout = NULL, browser_session = NULL")
    assert (await info(client, cookie))["max_age"] == ABSOLUTE
    assert (await client.post("/write", headers=sent("session", cookie))).status == 200
    assert (await row(lib_pg, cookie))["idle"] == pytest.approx(IDLE, abs=1)
    renewed = await client.post("/renew", headers=sent("session", cookie))
    assert ABSOLUTE - 2 <= int(only_cookie(renewed)[1]["max-age"]) <= ABSOLUTE
