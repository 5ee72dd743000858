"""The benchmark's variant servers: one aiohttp app per variant, all serving the same routes.

    python -m bench.server VARIANT --port 8101 [--database-url URL] [--redis-url URL]

Variants (VARIANTS below). The minimal apps, one storage each behind aiohttp-session alone:
    none      no session middleware at all: the ceiling
    db        no session, one `SELECT 1` through the app's own pool per request: the database limit
    cookie    aiohttp-session EncryptedCookieStorage (all data in an encrypted cookie)
    redis     aiohttp-session RedisStorage on Redis
    pg        this project's PostgresStorage, cache off (built by app.server.create_app; behind the
              library's setup: aiohttp-session's middleware and its on_response_prepare hook)
    pgcache   the same with the in-process session cache on (Settings.cache=True)
The whole app (create_app with every middleware, the real pages, the app's runner and logging,
settings from the environment as on a dyno), with its session store swapped in the last three:
    app-pg         ours, shipped defaults
    app-pgnocache  ours, SESSION_CACHE=off
    app-pgasync    ours, SESSION_DURABLE_WRITES=off
    app-remotes    ours, the router's headers read by aiohttp-remotes instead of the app's middleware
    app-redis      aiohttp-session's RedisStorage
    app-cookie     aiohttp-session's EncryptedCookieStorage
    app-db         a session middleware that does one `SELECT 1` and hands over a signed-in session
(The shipped command itself, `python -m app serve`, is run by bench/harness.py: ship, ship-nocache,
ship-wc2.)

Routes, identical on every variant (only the session store behind them differs):
    GET  /bench/hello    greets the signed-in user from the session: "Hello <name>" (401 if none)
    GET  /bench/write    the same, and increments a counter in the session (a write per request)
    GET  /bench/new      starts a new session for user N, N = 1..NEW_SESSION_USERS in turn (a
                         login without the password check)
    GET  /bench/login?uid=N   signs in user N (session: user_id, username): the cookie for wrk
    POST /bench/logout   ends the request's session
    POST /bench/revoke?uid=N  ends every session of user N as the app's revocation does (ours)
    POST /bench/sweep    runs one sweep on this process's pool and loop (ours)
    GET  /bench/ping     "ok", touches nothing
    GET  /bench/stats    {"requests": benchmarked requests served, "cache_enabled": ...}, no session
The whole-app variants serve the app's own routes too (`GET /` is the page of scenario 1).

Ours is built by `app.server.create_app` itself, so the storage, its pool, its cache and the
cache's listener are exactly what production runs. For pg and pgcache every middleware but
aiohttp-session's is then removed, so all minimal variants run the same middleware stack.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import time
import warnings
from typing import Any

import aiohttp_session
from aiohttp import web
from aiohttp.web_exceptions import NotAppKeyWarning

warnings.filterwarnings("ignore", category=NotAppKeyWarning)

VARIANTS: dict[str, str] = {
    "none": "no session (ceiling)",
    "db": "SELECT 1 per request (DB limit)",
    "cookie": "EncryptedCookieStorage",
    "redis": "RedisStorage",
    "pg": "PostgresStorage, cache off",
    "pgcache": "PostgresStorage, cache on",
    # The whole app (create_app: every middleware, the real page, the app's runner and logging,
    # settings from the environment as shipped), with the session store swapped in the last four.
    "app-pg": "whole app, ours (shipped defaults)",
    "app-pgnocache": "whole app, ours, SESSION_CACHE=off",
    "app-pgasync": "whole app, ours, SESSION_DURABLE_WRITES=off",
    "app-remotes": "whole app, ours, aiohttp-remotes for the router's headers",
    "app-redis": "whole app on RedisStorage",
    "app-cookie": "whole app on EncryptedCookieStorage",
    "app-db": "whole app, no session, SELECT 1 per request",
}
# The whole-app variants: served as `python -m app serve` serves, through app.runner.
# The whole-app variants' settings beyond the shipped defaults.
VARIANT_ENV: dict[str, dict[str, str]] = {
    "app-pgnocache": {"SESSION_CACHE": "off"},
    "app-pgasync": {"SESSION_DURABLE_WRITES": "off"},
}
# GET /bench/new signs in users 1..NEW_SESSION_USERS in turn (run.py makes that many for it): at
# about 5,000 new sessions a second for 5 rounds of 7 s, no user gets near the cap of 10.
NEW_SESSION_USERS = 50_000
WHOLE_APP = frozenset(v for v in VARIANTS if v.startswith("app-"))
# Variants that keep sessions in the PostgreSQL database, or need one.
DB_VARIANTS = frozenset({"db", "pg", "pgcache", *WHOLE_APP})

AUTH_KEY = b"bench-authentication-key-0123456789abcdef"
ENC_KEY = b"bench-encryption-key-0123456789!"  # 32 bytes
COOKIE_STORAGE_KEY = b"bench-cookie-storage-key-32bytes"  # 32 bytes: Fernet key material

REQUESTS = web.AppKey("bench_requests", list)
BENCH_POOL = web.AppKey("bench_pool", object)
BENCH_STORAGE = web.AppKey("bench_storage", object)
BENCH_SETTINGS = web.AppKey("bench_settings", object)


def pg_settings(database_url: str, *, cache: bool, port: int = 0) -> Any:
    """The app's Settings for a bench server: production defaults, fixed keys, no sweeper run
    during measurements (the sweep scenario calls the sweeper itself)."""
    from app.config import Settings

    fields: dict[str, Any] = {
        "database_url": database_url,
        "authentication_keys": (AUTH_KEY,),
        "encryption_keys": (ENC_KEY,),
        "sweep_interval": 10**7,
        "host": "127.0.0.1",
        "port": port,
        "log_level": "WARNING",
    }
    fields["cache"] = cache
    return Settings(**fields)


def _greeting(session: Any) -> web.Response:
    name = session.get("username")
    if name is None:
        raise web.HTTPUnauthorized(text="not signed in\n")
    return web.Response(text=f"Hello {name}")


def _routes(variant: str) -> web.RouteTableDef:
    routes = web.RouteTableDef()
    with_session = variant not in ("none", "db")

    @routes.get("/bench/ping")
    async def ping(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    @routes.get("/bench/stats")
    async def stats(request: web.Request) -> web.Response:
        body: dict[str, Any] = {"requests": request.app[REQUESTS][0], "pid": os.getpid()}
        storage = request.app.get(BENCH_STORAGE)
        cache = getattr(storage, "cache", None)
        if cache is not None:
            body["cache_enabled"] = cache.enabled
            body["cache_entries"] = len(cache)
        return web.json_response(body)

    if variant == "none":

        @routes.get("/bench/hello")
        async def hello_none(request: web.Request) -> web.Response:
            request.app[REQUESTS][0] += 1
            return web.Response(text="Hello bench")

    elif variant == "db":

        @routes.get("/bench/hello")
        async def hello_db(request: web.Request) -> web.Response:
            request.app[REQUESTS][0] += 1
            async with request.app[BENCH_POOL].acquire() as conn:  # type: ignore[attr-defined]
                await conn.fetchval("SELECT 1")
            return web.Response(text="Hello bench")

    if with_session:

        @routes.get("/bench/hello")
        async def hello(request: web.Request) -> web.Response:
            request.app[REQUESTS][0] += 1
            return _greeting(await aiohttp_session.get_session(request))

        @routes.get("/bench/write")
        async def write(request: web.Request) -> web.Response:
            request.app[REQUESTS][0] += 1
            session = await aiohttp_session.get_session(request)
            if session.get("username") is None:
                raise web.HTTPUnauthorized(text="not signed in\n")
            session["count"] = session.get("count", 0) + 1
            return web.Response(text=f"Hello {session['username']} ({session['count']})")

        @routes.get("/bench/new")
        async def new(request: web.Request) -> web.Response:
            served = request.app[REQUESTS]
            served[0] += 1
            # A login per request, spread over the users as real logins are (the whole app's
            # per-user cap then ends each user's oldest session, as it would).
            uid = served[0] % NEW_SESSION_USERS + 1
            session = await aiohttp_session.new_session(request)
            session["user_id"] = uid
            session["username"] = f"user-{uid}"
            return web.Response(text=f"Hello user-{uid}")

        @routes.get("/bench/login")
        async def login(request: web.Request) -> web.Response:
            uid = int(request.query.get("uid", "1"))
            session = await aiohttp_session.new_session(request)
            session["user_id"] = uid
            session["username"] = f"user-{uid}"
            return web.Response(text=f"Hello user-{uid}")

        @routes.post("/bench/logout")
        async def logout(request: web.Request) -> web.Response:
            session = await aiohttp_session.get_session(request)
            session.invalidate()
            return web.Response(text="bye")

    if variant in ("pg", "pgcache", "app-pg", "app-pgnocache", "app-pgasync", "app-remotes"):

        @routes.post("/bench/revoke")
        async def revoke(request: web.Request) -> web.Response:
            storage = request.app[BENCH_STORAGE]
            ended = await storage.end_all_sessions(int(request.query["uid"]))  # type: ignore[attr-defined]
            return web.json_response({"ended": ended})

        @routes.post("/bench/sweep")
        async def sweep(request: web.Request) -> web.Response:
            settings = request.app[BENCH_SETTINGS]
            batch = int(request.query.get("batch", settings.sweep_batch_size))  # type: ignore[attr-defined]
            started = time.perf_counter()
            deleted = await request.app[BENCH_STORAGE].sweep(batch_size=batch)  # type: ignore[attr-defined]
            return web.json_response({"deleted": deleted, "seconds": time.perf_counter() - started, "batch": batch})

    return routes


async def build_app(
    variant: str,
    *,
    database_url: str | None = None,
    redis_url: str | None = None,
    redis_prefix: str | None = None,
) -> web.Application:
    """The variant's application, not yet started (startup runs its cleanup contexts)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: one of {', '.join(VARIANTS)}")
    if variant in DB_VARIANTS and not database_url:
        raise ValueError(f"variant {variant} needs a database URL")

    if variant in ("pg", "pgcache"):
        from app.appkeys import POOL, STORAGE
        from app.server import create_app

        settings = pg_settings(database_url, cache=variant == "pgcache")  # type: ignore[arg-type]
        app = await create_app(settings)
        # Keep only the session middleware, and no response signal but the library's own (part
        # of its setup, as aiohttp-session's middleware is of the others'): the same stack as
        # every other minimal variant.
        kept = [m for m in app.middlewares if _is_session_middleware(m)]
        if len(kept) != 1:
            raise RuntimeError(f"expected one session middleware in create_app's app, found {len(kept)}")
        app.middlewares.clear()
        app.middlewares.extend(kept)
        hooks = [h for h in app.on_response_prepare if h.__module__.startswith("aiohttp_session_postgres")]
        app.on_response_prepare.clear()
        app.on_response_prepare.extend(hooks)
        app[BENCH_POOL] = app[POOL]
        app[BENCH_STORAGE] = app[STORAGE]
        app[BENCH_SETTINGS] = settings
    else:
        app = web.Application()
        if variant == "db":
            from app.server import open_pool

            settings = pg_settings(database_url, cache=False)  # type: ignore[arg-type]
            pool = await open_pool(settings)  # the very pool the app's storage gets
            app[BENCH_POOL] = pool

            async def close_pool(app: web.Application) -> None:
                await pool.close()

            app.on_cleanup.append(close_pool)
        elif variant == "cookie":
            from aiohttp_session.cookie_storage import EncryptedCookieStorage

            aiohttp_session.setup(
                app,
                EncryptedCookieStorage(COOKIE_STORAGE_KEY, cookie_name="bench_cookie", httponly=True, samesite="Lax"),
            )
        elif variant == "redis":
            from aiohttp_session.redis_storage import RedisStorage
            from redis import asyncio as aioredis

            client = aioredis.from_url(redis_url or "redis://127.0.0.1:6379")
            await client.ping()
            # Keys are "<cookie_name>_<uuid>": one prefix per benchmark run, deleted by the harness.
            storage = RedisStorage(
                client,
                cookie_name=redis_prefix or f"bench_redis_{os.getpid()}",
                max_age=3600,
                httponly=True,
                samesite="Lax",
            )
            aiohttp_session.setup(app, storage)

            async def close_redis(app: web.Application) -> None:
                await client.aclose()

            app.on_cleanup.append(close_redis)
    app[REQUESTS] = [0]
    app.router.add_routes(_routes(variant))
    return app


async def build_whole_app(
    variant: str, settings: Any, redis_url: str | None, redis_prefix: str | None
) -> web.Application:
    """The app as `python -m app serve` builds it from `settings`; for app-redis, app-cookie and
    app-db the session middleware is swapped for aiohttp-session's with that store (or, app-db,
    for one that does `SELECT 1` and hands the page a signed-in session), in the same place of
    the same stack. The benchmark's routes are added beside the app's own."""
    from app.appkeys import POOL, STORAGE
    from app.server import create_app

    if variant == "app-remotes":
        # aiohttp-remotes takes over what TRUST_PROXY does: the client's address and scheme from
        # X-Forwarded-*, and the redirect to HTTPS (with HSTS), in front of everything else.
        from aiohttp_remotes import Secure, XForwardedRelaxed

        app = await create_app(dataclasses.replace(settings, trust_proxy=False))
        app.middlewares[:0] = [XForwardedRelaxed().middleware, Secure().middleware]
    else:
        app = await create_app(settings)
    index = next(i for i, m in enumerate(app.middlewares) if _is_session_middleware(m))
    if variant == "app-redis":
        from aiohttp_session.redis_storage import RedisStorage
        from redis import asyncio as aioredis

        client = aioredis.from_url(redis_url or "redis://127.0.0.1:6379")
        await client.ping()
        storage = RedisStorage(
            client,
            cookie_name=redis_prefix or f"bench_redis_{os.getpid()}",
            max_age=3600,
            httponly=True,
            samesite="Lax",
        )
        app.middlewares[index] = aiohttp_session.session_middleware(storage)

        async def close_redis(app: web.Application) -> None:
            await client.aclose()

        app.on_cleanup.append(close_redis)
    elif variant == "app-cookie":
        from aiohttp_session.cookie_storage import EncryptedCookieStorage

        storage = EncryptedCookieStorage(COOKIE_STORAGE_KEY, cookie_name="bench_cookie", httponly=True, samesite="Lax")
        app.middlewares[index] = aiohttp_session.session_middleware(storage)
    elif variant == "app-db":
        app.middlewares[index] = _select_one_session(app)
    if variant in ("app-redis", "app-cookie", "app-db"):
        # The library's response hook goes with its middleware: the other stores do not pay for it.
        hooks = [h for h in app.on_response_prepare if not h.__module__.startswith("aiohttp_session_postgres")]
        app.on_response_prepare.clear()
        app.on_response_prepare.extend(hooks)
    app[BENCH_POOL] = app[POOL]
    app[BENCH_STORAGE] = app[STORAGE]
    app[BENCH_SETTINGS] = settings
    app[REQUESTS] = [0]
    app.router.add_routes(_routes("db" if variant == "app-db" else variant))

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path == "/":
            request.app[REQUESTS][0] += 1
        return await handler(request)

    app.middlewares.append(count)
    return app


def _is_session_middleware(middleware: Any) -> bool:
    """aiohttp-session's middleware, or the library's (`aiohttp_session_postgres.setup`)."""
    return getattr(middleware, "__module__", "") in ("aiohttp_session", "aiohttp_session_postgres.streaming")


def _select_one_session(app: web.Application) -> Any:
    """In place of the session middleware: one `SELECT 1` per request through the storage's own
    connection (pool, fairness, deadline), and a signed-in session for the page, from no store."""
    from aiohttp_session import SESSION_KEY, Session

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        async with request.app[BENCH_STORAGE].connection() as conn:  # type: ignore[attr-defined]
            await conn.fetchval("SELECT 1")
        request[SESSION_KEY] = Session(  # type: ignore[index]
            "bench", data={"created": int(time.time()), "session": {"user_id": 1, "username": "user-1"}}, new=False
        )
        return await handler(request)

    return middleware


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.split("\n\n")[0])
    parser.add_argument("variant", choices=sorted(VARIANTS))
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379")
    parser.add_argument("--redis-prefix", help="RedisStorage cookie name, which prefixes its keys")
    args = parser.parse_args(argv)
    if args.variant in WHOLE_APP:
        # As `python -m app serve`: settings from the environment (the harness sets it as on a
        # dyno), the app's logging, the app's runner.
        from app import logs
        from app.config import load_settings
        from app.runner import serve

        settings = load_settings()
        logs.configure(settings.log_level)
        serve(settings, lambda s: build_whole_app(args.variant, s, args.redis_url, args.redis_prefix))
        return
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    app = loop.run_until_complete(
        build_app(
            args.variant, database_url=args.database_url, redis_url=args.redis_url, redis_prefix=args.redis_prefix
        )
    )

    async def ready(_app: web.Application) -> None:
        print(json.dumps({"ready": args.variant, "pid": os.getpid(), "port": args.port}), flush=True)

    app.on_startup.append(ready)
    web.run_app(
        app,
        host="127.0.0.1",
        port=args.port,
        loop=loop,
        access_log=None,
        print=None,
        shutdown_timeout=2,
        handle_signals=True,
    )


if __name__ == "__main__":
    main()
