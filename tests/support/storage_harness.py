"""A small aiohttp app on the real PostgresStorage, with the routes the product app lacks, for tests
that must hold a request between loading its session and saving it.

The client sends cookies only when told (`cookies(value)`): its jar keeps nothing, so concurrent
responses cannot change what the next request carries.

Holding a request: `?hold=NAME` makes the handler, once its session is loaded, signal
`control.loaded[NAME]` and wait for `control.release(NAME)`; `?barrier=1` makes it wait at
`control.barrier`. Either way the session is saved only after the handler returns, so a held
request saves after everything that completed while it waited.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp_session
import asyncpg
from aiohttp import ClientResponse, DummyCookieJar, web
from aiohttp.test_utils import TestClient
from aiohttp_session import get_session, new_session
from aiohttp_session_postgres import PostgresSession, PostgresStorage, renew_session
from aiohttp_session_postgres.cache import SessionCache
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.tokens import id_hash_of

from support.keys import AUTH_KEY, ENC_KEY

COOKIE = "session"
WAIT = 15.0  # seconds a held request or a test waits before failing instead of hanging


class Control:
    """What the test uses to steer the app's handlers, in the same process and event loop."""

    def __init__(self) -> None:
        self.gates: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.loaded: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.barrier: asyncio.Barrier | None = None
        # Handed to /put and filled by /dump, keyed by a ticket: values never cross HTTP, so
        # they can be anything (a set, NaN) and come back with their exact Python types.
        self.to_put: dict[str, dict[str, Any]] = {}
        self.seen: dict[str, Any] = {}
        # Run by /mutate on the loaded session: changes made in place, bypassing __setitem__.
        self.mutations: dict[str, Callable[[PostgresSession], None]] = {}

    def release(self, name: str) -> None:
        self.gates[name].set()

    async def wait_loaded(self, *names: str) -> None:
        async with asyncio.timeout(WAIT):
            for name in names:
                await self.loaded[name].wait()


CONTROL = web.AppKey("control", Control)
STORAGE = web.AppKey("storage", PostgresStorage)
routes = web.RouteTableDef()


async def _hold(request: web.Request) -> None:
    control = request.app[CONTROL]
    name = request.query.get("hold")
    if name:
        control.loaded[name].set()
        async with asyncio.timeout(WAIT):
            await control.gates[name].wait()
    if "barrier" in request.query:
        assert control.barrier is not None
        async with asyncio.timeout(WAIT):
            await control.barrier.wait()


async def _loaded(request: web.Request) -> PostgresSession:
    session = await get_session(request)  # loads now: aiohttp-session loads lazily
    assert isinstance(session, PostgresSession)
    return session


@routes.post("/start")
async def start(request: web.Request) -> web.Response:
    """A fresh session holding the JSON body's keys (login-ish: user_id is mirrored)."""
    session = await new_session(request)
    for key, value in (await request.json()).items():
        session[key] = value
    return web.json_response({})


@routes.get("/data")
async def data(request: web.Request) -> web.Response:
    session = await _loaded(request)
    return web.json_response(
        {
            "data": dict(session),
            "id_hash": session.id_hash and session.id_hash.hex(),
            "created": session.created,
            "new": session.new,
            "identity": session.identity,
        }
    )


@routes.post("/set/{key}")
async def set_key(request: web.Request) -> web.Response:
    value = await request.json()
    session = await _loaded(request)
    await _hold(request)
    session[request.match_info["key"]] = value
    return web.json_response({})


@routes.post("/del/{key}")
async def del_key(request: web.Request) -> web.Response:
    session = await _loaded(request)
    await _hold(request)
    del session[request.match_info["key"]]
    return web.json_response({})


@routes.post("/cart/add")
async def cart_add(request: web.Request) -> web.Response:
    item = await request.json()
    session = await _loaded(request)
    await _hold(request)
    session["cart"]["items"].append(item)  # in place: no top-level assignment
    return web.json_response({})


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    session = await _loaded(request)
    await _hold(request)
    session.invalidate()
    return web.json_response({})


@routes.post("/renew")
async def renew(request: web.Request) -> web.Response:
    await _loaded(request)
    await _hold(request)
    await renew_session(request)
    return web.json_response({})


@routes.post("/put")
async def put(request: web.Request) -> web.Response:
    """Assign the ticket's values; on TypeError answer 400 with the message (nothing is saved)."""
    control = request.app[CONTROL]
    ticket = request.query["ticket"]
    session = await _loaded(request)
    await _hold(request)
    for key, value in control.to_put.pop(ticket).items():
        try:
            session[key] = value
        except TypeError as exc:
            control.seen[ticket] = {"message": str(exc), "key_present": key in session}
            return web.json_response({"error": str(exc)}, status=400)
    return web.json_response({})


@routes.post("/mutate")
async def mutate(request: web.Request) -> web.Response:
    session = await _loaded(request)
    request.app[CONTROL].mutations.pop(request.query["ticket"])(session)
    return web.json_response({})


@routes.get("/dump")
async def dump(request: web.Request) -> web.Response:
    """Hand the loaded session's mapping to the test as Python objects."""
    session = await _loaded(request)
    request.app[CONTROL].seen[request.query["ticket"]] = dict(session)
    return web.json_response({})


def build_app(pool: asyncpg.Pool, *, cache_url: str | None = None, **storage_options: Any) -> web.Application:
    """The app on `pool`; with `cache_url`, with the in-process SessionCache listening there."""
    options: dict[str, Any] = {"database_timeout": 10.0, **storage_options}
    app = web.Application()
    app[CONTROL] = Control()
    if cache_url is not None:
        options.setdefault("cache", SessionCache())  # or the one the test made
    storage = PostgresStorage(pool, **{"authentication_keys": [AUTH_KEY], "encryption_keys": [ENC_KEY], **options})
    if cache_url is not None:
        app.cleanup_ctx.append(storage.cache_listener(partial(asyncpg.connect, cache_url)))
    app[STORAGE] = storage
    aiohttp_session.setup(app, storage)
    app.router.add_routes(routes)

    async def close_pool(app: web.Application) -> None:
        await pool.close()

    app.on_cleanup.append(close_pool)
    return app


async def open_client(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    db_url: str,
    *,
    pool_max: int = 20,
    cache: bool = False,
    **storage_options: Any,
) -> tuple[TestClient, Control]:
    """A test client on `build_app` (with the cache: once its listener is up); the pool closes
    with the app."""
    pool = await asyncpg.create_pool(db_url, min_size=1, max_size=pool_max)
    try:
        app = build_app(pool, cache_url=db_url if cache else None, **storage_options)
        client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    except BaseException:
        await pool.close()
        raise
    if cache:
        await cache_ready(app)
    return client, app[CONTROL]


async def cache_ready(app: web.Application) -> None:
    session_cache = app[STORAGE].cache
    assert session_cache is not None
    async with asyncio.timeout(WAIT):
        while not session_cache.enabled:  # noqa: ASYNC110 - the cache offers no event to wait on
            await asyncio.sleep(0.02)


# -- cookies and rows ----------------------------------------------------------------------


def cookies(value: str | None) -> dict[str, str]:
    """Request headers sending exactly this session cookie (or none)."""
    return {"Cookie": f"{COOKIE}={value}"} if value is not None else {}


def set_cookies(response: ClientResponse) -> list[str]:
    return response.headers.getall("Set-Cookie", [])


def new_cookie(response: ClientResponse) -> str:
    """The live session cookie the response sets."""
    morsel = response.cookies[COOKIE]
    assert morsel.value, set_cookies(response)
    assert morsel["max-age"] not in ("", "0"), set_cookies(response)
    return morsel.value


def expires_cookie(response: ClientResponse) -> bool:
    """The response sets exactly one session cookie, and it deletes it."""
    headers = set_cookies(response)
    if len(headers) != 1 or COOKIE not in response.cookies:
        return False
    morsel = response.cookies[COOKIE]
    return morsel.value == "" and morsel["max-age"] == "0"


def id_hash(cookie: str) -> bytes:
    return id_hash_of(cookie.split(".")[0])


async def stored(pg: asyncpg.Connection, cookie: str) -> tuple[dict[str, Any], int] | None:
    """(decrypted data, version) of the cookie's row, or None when there is no row."""
    row = await pg.fetchrow("SELECT data, version FROM sessions WHERE id_hash = $1", id_hash(cookie))
    if row is None:
        return None
    opened = DataCipher((ENC_KEY,)).open(row["data"], id_hash(cookie))
    assert opened is not None
    return json.loads(opened[0]), row["version"]


async def session_count(pg: asyncpg.Connection) -> int:
    """Session rows, not counting tombstones (the rows of sessions a login or renewal used up)."""
    return await pg.fetchval("SELECT count(*) FROM sessions WHERE replaced_at IS NULL")


async def make_user(pg: asyncpg.Connection, name: str = "u") -> int:
    """A users row (sessions.user_id references it); the password is never checked here."""
    return await pg.fetchval("INSERT INTO users (username, password_hash) VALUES ($1, 'x') RETURNING id", name)
