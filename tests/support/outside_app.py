"""A small aiohttp app of another shape than the demo, on the installed library alone: a JSON API
for a shop, whose accounts are keyed by text handles (mapped to integer numbers for the
session's user_id), its sessions in the table `shop.web_sessions` made by create_schema(), no
Alembic. test_library_outside.py copies it into a temporary folder and runs it with the python
of a fresh virtual environment, so it can import nothing of this checkout.

    DATABASE_URL=... PORT=... SESSION_CACHE=on|off IDLE_TIMEOUT=seconds python outside_app.py
"""

from __future__ import annotations

import os

import aiohttp_session
import asyncpg
from aiohttp import web
from aiohttp_session_postgres import (
    PostgresSession,
    PostgresStorage,
    SessionCache,
    create_schema,
    get_session,
    new_session,
    renew_session,
)

DSN = os.environ["DATABASE_URL"]
STORAGE = web.AppKey("storage", PostgresStorage)
CACHE = web.AppKey("cache", SessionCache)
POOL = web.AppKey("pool", asyncpg.Pool)
routes = web.RouteTableDef()


async def _account_number(pool: asyncpg.Pool, handle: str) -> int:
    async with pool.acquire() as conn:
        number: int = await conn.fetchval(
            "INSERT INTO shop.accounts (handle) VALUES ($1)"
            " ON CONFLICT (handle) DO UPDATE SET handle = EXCLUDED.handle RETURNING number",
            handle,
        )
    return number


async def _signed_in(request: web.Request) -> PostgresSession:
    session = await get_session(request)
    if "user_id" not in session:
        raise web.HTTPUnauthorized(text='{"error": "not signed in"}', content_type="application/json")
    return session


@routes.post("/signin")
async def signin(request: web.Request) -> web.Response:
    handle = (await request.json())["handle"]
    number = await _account_number(request.app[POOL], handle)
    session = await new_session(request)
    session["user_id"] = number
    session["handle"] = handle
    session["cart"] = []
    return web.json_response({"handle": handle, "number": number})


@routes.get("/me")
async def me(request: web.Request) -> web.Response:
    session = await _signed_in(request)
    return web.json_response({"handle": session["handle"], "cart": session["cart"], "admin": session.get("admin")})


@routes.post("/cart")
async def add_to_cart(request: web.Request) -> web.Response:
    session = await _signed_in(request)
    session["cart"].append((await request.json())["item"])  # changed in place
    return web.json_response({"cart": session["cart"]})


@routes.post("/elevate")
async def elevate(request: web.Request) -> web.Response:
    await _signed_in(request)
    session = await renew_session(request)
    session["admin"] = True
    return web.json_response({"admin": True})


@routes.post("/signout")
async def signout(request: web.Request) -> web.Response:
    session = await get_session(request)
    session.invalidate()
    return web.json_response({})


@routes.get("/devices")
async def devices(request: web.Request) -> web.Response:
    session = await _signed_in(request)
    listed = await request.app[STORAGE].list_sessions(session["user_id"])
    return web.json_response([{"handle": s.handle, "current": s.handle == session.handle} for s in listed])


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    cache = request.app.get(CACHE)
    return web.json_response({"cache": None if cache is None else cache.enabled})


async def create_app() -> web.Application:
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=4)
    async with pool.acquire() as conn:
        async with conn.transaction():  # its own tables; several processes start at once
            await conn.execute("SELECT pg_advisory_xact_lock(7)")
            await conn.execute(
                "CREATE SCHEMA IF NOT EXISTS shop;"
                " CREATE TABLE IF NOT EXISTS shop.accounts"
                " (handle text PRIMARY KEY, number bigint GENERATED ALWAYS AS IDENTITY UNIQUE)"
            )
        await create_schema(conn, table="web_sessions", schema="shop")
    cache = SessionCache(max_age=30) if os.environ.get("SESSION_CACHE") == "on" else None
    storage = PostgresStorage(
        pool,
        authentication_keys=[b"an outside app's own signing key, 32+ bytes"],
        encryption_keys=[b"an outside app's 32-byte AES key"],
        idle_timeout=int(os.environ.get("IDLE_TIMEOUT", "1800")),
        absolute_timeout=3600,
        touch_interval=1,
        cookie_name="shop_sid",
        table="web_sessions",
        schema="shop",
        cache=cache,
    )
    app = web.Application()
    app[STORAGE], app[POOL] = storage, pool
    aiohttp_session.setup(app, storage)
    app.router.add_routes(routes)
    app.cleanup_ctx.append(storage.sweeper(interval=1))
    if cache is not None:
        app[CACHE] = cache
        app.cleanup_ctx.append(storage.cache_listener(lambda: asyncpg.connect(DSN)))

    async def close(app: web.Application) -> None:
        await pool.close()

    app.on_cleanup.append(close)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(os.environ["PORT"]))
