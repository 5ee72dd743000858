"""A small aiohttp app on the library alone (not the demo), for tests that drive every kind of
session operation through HTTP: start (a login), read, write (a counter, or a key of the
caller's choosing: /mark?key=), change or remove the user_id,
logout, renew, and a user's sessions (list, end one, end the others, end all), plus the sweep.

    client = await library_app(aiohttp_client, pool, durable_writes=False)
    cookie = await started(client)
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_session
import asyncpg
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler
from aiohttp_session_postgres import PostgresStorage, get_session, new_session, renew_session

from support.keys import AUTH_KEY, ENC_KEY

STORAGE = web.AppKey("storage", PostgresStorage)
USER = 1


async def library_app(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    pool: asyncpg.Pool,
    *,
    listen_dsn: str | None = None,
    **options: Any,
) -> TestClient:
    """The app on `pool`, its storage made with `options` (database_timeout 1 s and
    touch_interval 0, so that every read touches, unless given). `listen_dsn`: run the cache's
    listener on a connection of its own to that database, as an app does (cleanup_ctx), and
    return once it listens."""
    options = {"database_timeout": 1.0, "touch_interval": 0, **options}
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], **options)
    app = web.Application(middlewares=[_remote_from_header])
    app[STORAGE] = storage
    aiohttp_session.setup(app, storage)
    if listen_dsn is not None:
        app.cleanup_ctx.append(storage.cache_listener(lambda: asyncpg.connect(listen_dsn)))
    routes = web.RouteTableDef()

    @routes.post("/start")
    async def start(request: web.Request) -> web.Response:
        (await new_session(request))["user_id"] = USER
        return web.Response(text="started")

    @routes.post("/start-after-read")
    async def start_after_read(request: web.Request) -> web.Response:
        # A login that looked at the request's session first (loaded it), then replaces it.
        await get_session(request)
        (await new_session(request))["user_id"] = USER
        return web.Response(text="started")

    @routes.post("/start-guarded")
    async def start_guarded(request: web.Request) -> web.Response:
        session = await new_session(request)
        session["user_id"] = USER

        async def check(conn: asyncpg.Connection) -> bool:
            return bool(await conn.fetchval("SELECT true"))

        session.require(check, otherwise=web.HTTPForbidden())
        return web.Response(text="started")

    @routes.post("/start-refused")
    async def start_refused(request: web.Request) -> web.Response:
        # A login whose check fails in the creating transaction: nothing is created.
        session = await new_session(request)
        session["user_id"] = USER

        async def check(conn: asyncpg.Connection) -> bool:
            return bool(await conn.fetchval("SELECT false"))

        session.require(check, otherwise=web.HTTPForbidden())
        return web.Response(text="started")

    @routes.get("/read")
    async def read(request: web.Request) -> web.Response:
        return web.json_response(dict(await get_session(request)))

    @routes.post("/write")
    async def write(request: web.Request) -> web.Response:
        session = await get_session(request)
        session["count"] = session.get("count", 0) + 1
        return web.Response(text="written")

    @routes.post("/mark")
    async def mark(request: web.Request) -> web.Response:
        # One key of the caller's choosing: concurrent marks of one session each change their own.
        (await get_session(request))[request.query["key"]] = True
        return web.Response(text="marked")

    @routes.post("/write-after")
    async def write_after(request: web.Request) -> web.Response:
        # Loads the session, waits (a slow handler), then changes it: the save comes late.
        session = await get_session(request)
        await asyncio.sleep(float(request.query["seconds"]))
        session["late"] = True
        return web.Response(text="written late")

    @routes.post("/renew-after")
    async def renew_after(request: web.Request) -> web.Response:
        # As /write-after, but the late change is a renewal (a new ID for the session).
        await get_session(request)
        await asyncio.sleep(float(request.query["seconds"]))
        await renew_session(request)
        return web.Response(text="renewed late")

    @routes.post("/switch-after")
    async def switch_after(request: web.Request) -> web.Response:
        # As /write-after, but the late change is of the user_id.
        session = await get_session(request)
        await asyncio.sleep(float(request.query["seconds"]))
        session["user_id"] = USER + 1
        return web.Response(text="switched late")

    @routes.post("/switch")
    async def switch(request: web.Request) -> web.Response:
        (await get_session(request))["user_id"] = USER + 1
        return web.Response(text="switched")

    @routes.post("/sign-out-by-data")
    async def sign_out_by_data(request: web.Request) -> web.Response:
        session = await get_session(request)
        del session["user_id"]
        session["signed_out"] = True
        return web.Response(text="signed out")

    @routes.post("/logout")
    async def logout(request: web.Request) -> web.Response:
        (await get_session(request)).invalidate()
        return web.Response(text="bye")

    @routes.post("/replace-and-invalidate")
    async def replace_and_invalidate(request: web.Request) -> web.Response:
        # A fresh session, invalidated before it was ever saved: the request's own session ends.
        (await new_session(request)).invalidate()
        return web.Response(text="bye")

    @routes.post("/renew")
    async def renew(request: web.Request) -> web.Response:
        await renew_session(request)
        return web.Response(text="renewed")

    @routes.get("/sessions")
    async def sessions(request: web.Request) -> web.Response:
        return web.json_response([info.handle for info in await request.app[STORAGE].list_sessions(USER)])

    @routes.post("/end-one")
    async def end_one(request: web.Request) -> web.Response:
        ended = await request.app[STORAGE].end_session(USER, request.query["handle"])
        return web.Response(text=str(ended))

    @routes.post("/end-others")
    async def end_others(request: web.Request) -> web.Response:
        ended = await request.app[STORAGE].end_other_sessions(USER, await get_session(request))
        return web.Response(text=str(ended))

    @routes.post("/end-all")
    async def end_all(request: web.Request) -> web.Response:
        return web.Response(text=str(await request.app[STORAGE].end_all_sessions(USER)))

    app.add_routes(routes)
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    if listen_dsn is not None:
        await _listening(storage)
    return client


@web.middleware
async def _remote_from_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    # As an app's forwarded-header middleware does: X-Test-Remote sets request.remote.
    if "X-Test-Remote" in request.headers:
        request = request.clone(remote=request.headers["X-Test-Remote"])
    return await handler(request)


async def _listening(storage: PostgresStorage) -> None:
    # The listener connects in the background once the app starts; until then the cache is off.
    cache = storage.cache
    assert cache is not None, "listen_dsn needs a cache"
    for _ in range(100):
        if cache.enabled:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the cache's listener never connected")


def with_cookie(cookie: str) -> dict[str, str]:
    return {"Cookie": f"session={cookie}"}


async def started(client: TestClient, cookie: str | None = None) -> str:
    """POST /start (with `cookie`, a login from that session); the new session's cookie."""
    response = await client.post("/start", headers=with_cookie(cookie) if cookie else None)
    assert response.status == 200, response.status
    return response.cookies["session"].value


async def read(client: TestClient, cookie: str) -> dict[str, object]:
    """GET /read with `cookie`: the session's data as that request sees it ({} when anonymous)."""
    response = await client.get("/read", headers=with_cookie(cookie))
    assert response.status == 200
    return await response.json()
