"""Any user identity: `session["user_id"]` may be an int (the `user_id` column, as before) or a str
(a UUID as its string, a username: the `principal` column), and listing, ending one, ending the
others, ending all, the per-user cap and the per-user lock work for both, through HTTP and the
library's public API. 7 and "7" are two users. A value that is neither is a TypeError naming the
key (in the handler) or the argument (in the public methods); a str out of bounds a TypeError at
assignment, a ValueError in the methods. Against the real PostgreSQL, with and without the cache.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp_session
import asyncpg
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import (
    PostgresSession,
    PostgresStorage,
    SessionCache,
    get_session,
    new_session,
    renew_session,
)
from aiohttp_session_postgres.tokens import id_hash_of
from support.keys import AUTH_KEY, ENC_KEY

Client = Callable[..., Awaitable[TestClient]]
STORAGE = web.AppKey("storage", PostgresStorage)
UUID_USER = str(uuid.UUID("6f1c2a4e-8b0d-4c1e-9a57-3d2f1e0b9c8a"))


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=8) as pool:
        yield pool


def user_of(request: web.Request) -> int | str:
    """?int=7 an int user; ?str=alice a str one."""
    return int(request.query["int"]) if "int" in request.query else request.query["str"]


async def identity_app(aiohttp_client: Client, pool: asyncpg.Pool, **options: Any) -> TestClient:
    storage = PostgresStorage(
        pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], database_timeout=5, **options
    )
    app = web.Application()
    app[STORAGE] = storage
    aiohttp_session.setup(app, storage)
    routes = web.RouteTableDef()

    @routes.post("/login")
    async def login(request: web.Request) -> web.Response:
        (await new_session(request))["user_id"] = user_of(request)
        return web.Response(text="ok")

    @routes.post("/login-bad")
    async def login_bad(request: web.Request) -> web.Response:
        session = await new_session(request)
        try:
            session["user_id"] = 7.0
        except TypeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.Response(text="stored")

    @routes.get("/read")
    async def read(request: web.Request) -> web.Response:
        return web.json_response(dict(await get_session(request)))

    @routes.post("/renew")
    async def renew(request: web.Request) -> web.Response:
        await renew_session(request)
        return web.Response(text="renewed")

    @routes.get("/sessions")
    async def sessions(request: web.Request) -> web.Response:
        session = await get_session(request)
        listed = await request.app[STORAGE].list_sessions(session["user_id"])
        return web.json_response([s.handle for s in listed])

    @routes.post("/end")
    async def end(request: web.Request) -> web.Response:
        session = await get_session(request)
        ended = await request.app[STORAGE].end_session(session["user_id"], request.query["handle"])
        return web.json_response(ended)

    @routes.post("/end-others")
    async def end_others(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.json_response(await request.app[STORAGE].end_other_sessions(session["user_id"], session))

    @routes.post("/end-all")
    async def end_all(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.json_response(await request.app[STORAGE].end_all_sessions(session["user_id"]))

    app.add_routes(routes)
    return await aiohttp_client(app, cookie_jar=DummyCookieJar())


def sent(cookie: str) -> dict[str, str]:
    return {"Cookie": f"session={cookie}"}


async def login(client: TestClient, **user: object) -> str:
    response = await client.post("/login", params={k: str(v) for k, v in user.items()})
    assert response.status == 200, await response.text()
    return response.cookies["session"].value


async def handles(client: TestClient, cookie: str) -> list[str]:
    response = await client.get("/sessions", headers=sent(cookie))
    assert response.status == 200
    result: list[str] = await response.json()
    return result


async def signed_in(client: TestClient, cookie: str) -> bool:
    return "user_id" in await (await client.get("/read", headers=sent(cookie))).json()


async def columns_of(pg: asyncpg.Connection, cookie: str) -> tuple[object, object]:
    row = await pg.fetchrow(
        "SELECT user_id, principal FROM sessions WHERE id_hash = $1", id_hash_of(cookie.split(".")[0])
    )
    return row["user_id"], row["principal"]


@pytest.mark.parametrize("cached", [False, True], ids=["no-cache", "cache"])
async def test_str_and_int_users_are_listed_and_ended_apart(
    aiohttp_client: Client, pool: asyncpg.Pool, lib_pg: asyncpg.Connection, cached: bool
) -> None:
    client = await identity_app(aiohttp_client, pool, cache=SessionCache() if cached else None)
    uuid_sessions = [await login(client, str=UUID_USER) for _ in range(3)]
    seven_int = await login(client, int=7)
    seven_str = await login(client, str="7")
    other = await login(client, str=UUID_USER.upper())  # another spelling: another user
    # Each in its own column; the str user's id_hash is not in the int user's list, and back.
    assert await columns_of(lib_pg, uuid_sessions[0]) == (None, UUID_USER)
    assert await columns_of(lib_pg, seven_int) == (7, None)
    assert await columns_of(lib_pg, seven_str) == (None, "7")
    assert len(await handles(client, uuid_sessions[0])) == 3
    assert len(await handles(client, seven_int)) == 1
    assert len(await handles(client, seven_str)) == 1
    assert len(await handles(client, other)) == 1
    assert (await (await client.get("/read", headers=sent(uuid_sessions[1]))).json()) == {"user_id": UUID_USER}

    # End one: by its handle, scoped to the user (a handle of another user's session ends nothing).
    seven_handle = (await handles(client, seven_str))[0]
    assert await (await client.post("/end", params={"handle": seven_handle}, headers=sent(seven_int))).json() is False
    assert await signed_in(client, seven_str)
    listed = await handles(client, uuid_sessions[0])
    mine = (await handles(client, uuid_sessions[2]))[0]  # the most recently active: the one just read
    victim = next(h for h in listed if h != mine)
    assert await (await client.post("/end", params={"handle": victim}, headers=sent(uuid_sessions[2]))).json() is True
    assert len(await handles(client, uuid_sessions[2])) == 2

    # End the others, then all: only the user's own; the int 7 and str "7" users are untouched.
    assert await (await client.post("/end-others", headers=sent(uuid_sessions[2]))).json() == 1
    assert await handles(client, uuid_sessions[2]) == [mine]
    renewed = (await client.post("/renew", headers=sent(uuid_sessions[2]))).cookies["session"].value
    assert await columns_of(lib_pg, renewed) == (None, UUID_USER)
    assert await (await client.post("/end-all", headers=sent(renewed))).json() == 1
    assert not await signed_in(client, renewed)
    assert not await signed_in(client, uuid_sessions[2])
    assert await signed_in(client, seven_int)
    assert await signed_in(client, seven_str)
    assert await signed_in(client, other)
    assert await (await client.post("/end-all", headers=sent(seven_str))).json() == 1
    assert await signed_in(client, seven_int)


async def test_the_cap_holds_for_str_and_int_users_under_concurrent_logins(
    aiohttp_client: Client, pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    client = await identity_app(aiohttp_client, pool, max_sessions_per_user=3)
    logins = [login(client, str=UUID_USER) for _ in range(12)] + [login(client, int=7) for _ in range(12)]
    logins += [login(client, str="7") for _ in range(12)]
    await asyncio.gather(*logins)
    live = "SELECT count(*) FROM sessions WHERE {} AND idle_expires_at > now()"
    assert await lib_pg.fetchval(live.format("principal = $1"), UUID_USER) == 3
    assert await lib_pg.fetchval(live.format("principal = $1"), "7") == 3
    assert await lib_pg.fetchval(live.format("user_id = $1"), 7) == 3


async def test_a_renewal_in_flight_is_ended_with_its_str_user(
    aiohttp_client: Client, pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    """The per-user lock for a str user: a renewal that holds it (shared) while it waits on its
    row is ended by end_all_sessions, which waits for it, instead of leaving a new session behind."""
    client = await identity_app(aiohttp_client, pool)
    cookie = await login(client, str="alice")
    storage: PostgresStorage = client.app[STORAGE]
    id_hash = id_hash_of(cookie.split(".")[0])
    async with lib_pg.transaction():
        await lib_pg.execute("SELECT FROM sessions WHERE id_hash = $1 FOR UPDATE", id_hash)  # the row held
        renewal = asyncio.ensure_future(client.post("/renew", headers=sent(cookie)))
        waiting = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ShareLock' AND granted"
        for _ in range(500):
            if await lib_pg.fetchval(waiting):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the renewal never took the user's lock")
        ending = asyncio.ensure_future(storage.end_all_sessions("alice"))
        queued = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock' AND NOT granted"
        for _ in range(500):
            if await lib_pg.fetchval(queued):
                break
            await asyncio.sleep(0.01)
        else:
            pytest.fail("the ending never waited for the user's lock")
    response = await renewal
    assert response.status == 200
    await ending
    assert (
        await lib_pg.fetchval("SELECT count(*) FROM sessions WHERE principal = 'alice' AND idle_expires_at > now()")
        == 0
    )


async def test_int_7_and_str_7_take_different_user_locks(pool: asyncpg.Pool, lib_pg: asyncpg.Connection) -> None:
    """Ending all of int 7's sessions does not wait for a transaction holding str "7"'s lock."""
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], database_timeout=2)
    async with pool.acquire() as holder, holder.transaction():
        await storage.end_all_sessions("7", conn=holder)  # takes "7"'s lock until this commits
        assert await asyncio.wait_for(storage.end_all_sessions(7), timeout=1.5) == 0
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(storage.end_all_sessions("7"), timeout=0.3)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (True, TypeError, "user_id: it must be an int or a str user id, not bool"),
        (7.0, TypeError, "user_id: it must be an int or a str user id, not float"),
        (None, TypeError, "user_id: it must be an int or a str user id, not NoneType"),
        (b"7", TypeError, "user_id: it must be an int or a str user id, not bytes"),
        (2**63, ValueError, "user_id: an int user id must be within 64 bits (PostgreSQL's bigint)"),
        ("", ValueError, "user_id: a str user id must be 1 to 255 bytes of UTF-8, not 0"),
        ("é" * 128, ValueError, "user_id: a str user id must be 1 to 255 bytes of UTF-8, not 256"),
        ("a\x00b", ValueError, "user_id: a str user id cannot contain NUL"),
        ("\ud800", ValueError, "user_id: a str user id must be valid UTF-8 (no unpaired surrogates)"),
    ],
)
async def test_the_methods_refuse_what_is_no_user_naming_the_argument(
    pool: asyncpg.Pool, value: object, error: type[Exception], message: str
) -> None:
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])
    keep = PostgresSession(id_hash=b"\x01" * 32, data={}, snapshot={})
    calls = (
        storage.list_sessions(value),  # type: ignore[arg-type]
        storage.end_session(value, "0" * 16),  # type: ignore[arg-type]
        storage.end_other_sessions(value, keep),  # type: ignore[arg-type]
        storage.end_all_sessions(value),  # type: ignore[arg-type]
    )
    for call in calls:
        with pytest.raises(error) as raised:
            await call
        assert str(raised.value) == message


async def test_the_other_arguments_are_checked_too(pool: asyncpg.Pool) -> None:
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])
    with pytest.raises(TypeError, match=r"^handle must be a str, not int$"):
        await storage.end_session("alice", 5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^keep must be a PostgresSession \(the request's own\), not dict$"):
        await storage.end_other_sessions("alice", {})  # type: ignore[arg-type]
    # The longest str identity and the extreme ints are users (nothing to end).
    for user in ("é" * 127 + "x", 2**63 - 1, -(2**63), UUID_USER):
        assert await storage.end_all_sessions(user) == 0
        assert await storage.list_sessions(user) == []


async def test_a_bad_user_id_in_a_handler_is_a_type_error_naming_the_key(
    aiohttp_client: Client, pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    client = await identity_app(aiohttp_client, pool)
    response = await client.post("/login-bad")
    assert response.status == 400
    assert (await response.json())["error"] == (
        "session['user_id'] ties the session to a user (None: to no user):"
        " it must be an int or a str user id, not float"
    )
    assert await lib_pg.fetchval("SELECT count(*) FROM sessions") == 0
    session = PostgresSession()
    for bad in ("", "x" * 256, "a\x00", True, uuid.uuid4()):  # a UUID: pass str(uuid)
        with pytest.raises(TypeError, match=r"^session\['user_id'\] ties the session to a user \(None: to no user\): "):
            session["user_id"] = bad
    assert session.empty


async def test_the_table_keeps_one_user_column_per_row(lib_pg: asyncpg.Connection) -> None:
    """The CHECK the library's writes rely on: a row has a user_id or a principal, never both, and a
    principal of 1 to 255 bytes (what a write made outside the library meets too)."""
    insert = (
        "INSERT INTO sessions (id_hash, user_id, principal, data, idle_expires_at, absolute_expires_at)"
        " VALUES (sha256(random()::text::bytea), $1, $2, '\\x00',"
        " now() + interval '1 hour', now() + interval '2 hours')"
    )
    for user_id, principal in ((7, "7"), (None, ""), (None, "x" * 256)):
        with pytest.raises(asyncpg.CheckViolationError, match="sessions_principal_check"):
            await lib_pg.execute(insert, user_id, principal)
    await lib_pg.execute(insert, None, "é" * 127 + "x")
    await lib_pg.execute(insert, 7, None)
