"""An app a user of the library might write, on the installed wheel with its `[security]` and
`[metrics]` extras alone: users keyed by UUIDs, a site on app.example.com and a JSON API on
api.example.com sharing one session cookie (``Domain=example.com``), aiohttp-security for
sign-in with "remember me", a hook that records session events, and Prometheus metrics behind a
bearer token. test_example_com.py copies it into a temporary folder and runs one process per host
name (every process serves every route; the hosts differ only in name, as behind one load
balancer) with the python of a fresh virtual environment, so it can import nothing of this
checkout.

    DATABASE_URL=... PORT=... METRICS_TOKEN=... AUTHENTICATION_KEY=hex ENCRYPTION_KEY=hex python example_com_app.py
"""

from __future__ import annotations

import hmac
import os
import uuid

import aiohttp_security
import asyncpg
from aiohttp import web
from aiohttp_security.abc import AbstractAuthorizationPolicy
from aiohttp_session_postgres import (
    PostgresStorage,
    PrometheusMetrics,
    SessionCache,
    SessionEvent,
    create_schema,
    get_session,
    setup,
)
from aiohttp_session_postgres.security import PostgresIdentityPolicy
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

DSN = os.environ["DATABASE_URL"]
METRICS_TOKEN = os.environ["METRICS_TOKEN"]
REMEMBER = 30 * 24 * 3600  # "remember me": thirty days
POOL = web.AppKey("pool", asyncpg.Pool)
STORAGE = web.AppKey("storage", PostgresStorage)
REGISTRY = web.AppKey("registry", CollectorRegistry)
EVENTS = web.AppKey("events", list)


class Users(AbstractAuthorizationPolicy):
    """A user is anyone in `example_users`; every signed-in user may do everything."""

    def __init__(self, app: web.Application) -> None:
        self.app = app

    async def authorized_userid(self, identity: str) -> str | None:
        async with self.app[POOL].acquire() as conn:
            found = await conn.fetchval("SELECT id::text FROM example_users WHERE id::text = $1", identity)
        return found

    async def permits(self, identity: str | None, permission: str, context: object = None) -> bool:
        return identity is not None


routes = web.RouteTableDef()


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    form = await request.post()
    async with request.app[POOL].acquire() as conn:
        user = await conn.fetchval("SELECT id::text FROM example_users WHERE name = $1", form.get("name", ""))
    if user is None:
        raise web.HTTPUnauthorized(text="no such user")
    response = web.json_response({"user": user})
    max_age = REMEMBER if form.get("remember") == "on" else None  # None: a browser-session cookie
    await aiohttp_security.remember(request, response, user, max_age=max_age)
    return response


@routes.get("/me")
async def me(request: web.Request) -> web.Response:
    user = await aiohttp_security.authorized_userid(request)
    if user is None:
        raise web.HTTPUnauthorized(text="not signed in")
    session = await get_session(request)
    return web.json_response({"user": user, "host": request.host.split(":")[0], "max_age": session.max_age})


@routes.get("/sessions")
async def sessions(request: web.Request) -> web.Response:
    user = await aiohttp_security.check_authorized(request)
    listed = await request.app[STORAGE].list_sessions(user)
    return web.json_response([info.handle for info in listed])


@routes.post("/sessions/end-others")
async def end_others(request: web.Request) -> web.Response:
    user = await aiohttp_security.check_authorized(request)
    ended = await request.app[STORAGE].end_other_sessions(user, await get_session(request), reason="user_request")
    return web.json_response({"ended": ended})


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    await aiohttp_security.check_authorized(request)
    response = web.json_response({"signed_out": True})
    await aiohttp_security.forget(request, response)
    return response


@routes.get("/events")
async def events(request: web.Request) -> web.Response:
    return web.json_response(request.app[EVENTS])


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    offered = request.headers.get("Authorization", "").encode()
    if not hmac.compare_digest(offered, f"Bearer {METRICS_TOKEN}".encode()):
        raise web.HTTPUnauthorized(headers={"WWW-Authenticate": "Bearer"})
    return web.Response(body=generate_latest(request.app[REGISTRY]), headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def create_app() -> web.Application:
    pool = await asyncpg.create_pool(DSN, min_size=1, max_size=4)
    async with pool.acquire() as conn, conn.transaction():  # two processes start at once
        await conn.execute("SELECT pg_advisory_xact_lock(7)")
        await conn.execute("CREATE TABLE IF NOT EXISTS example_users (id uuid PRIMARY KEY, name text UNIQUE NOT NULL)")
        for name in ("ada", "grace"):
            await conn.execute(
                "INSERT INTO example_users VALUES ($1, $2) ON CONFLICT (name) DO NOTHING", uuid.uuid4(), name
            )
    async with pool.acquire() as conn:
        await create_schema(conn)
    registry = CollectorRegistry()
    storage = PostgresStorage(
        pool,
        authentication_keys=[bytes.fromhex(os.environ["AUTHENTICATION_KEY"])],
        encryption_keys=[bytes.fromhex(os.environ["ENCRYPTION_KEY"])],
        cookie_name="sid",
        domain="example.com",  # one cookie for app.example.com and api.example.com
        secure=False,  # plain HTTP in this test; deployed, leave it None (Secure over HTTPS)
        samesite="Lax",
        idle_timeout=1800,
        absolute_timeout=8 * 3600,
        max_remember_timeout=REMEMBER,
        remember_idle_timeout=7 * 24 * 3600,
        max_sessions_per_user=5,
        cache=SessionCache(),
        metrics=PrometheusMetrics(registry=registry),
    )
    app = web.Application()
    app[POOL], app[STORAGE], app[REGISTRY], app[EVENTS] = pool, storage, registry, []

    @storage.on_event.append
    async def record(event: SessionEvent) -> None:
        app[EVENTS].append({"name": event.name, "user_id": event.user_id, "reason": event.reason, "local": event.local})

    setup(app, storage)
    aiohttp_security.setup(app, PostgresIdentityPolicy(), Users(app))
    app.add_routes(routes)
    app.cleanup_ctx.append(storage.cache_listener(lambda: asyncpg.connect(DSN)))

    async def close(app: web.Application) -> None:
        await pool.close()

    app.on_cleanup.append(close)
    return app


if __name__ == "__main__":
    web.run_app(create_app(), host="127.0.0.1", port=int(os.environ["PORT"]))
