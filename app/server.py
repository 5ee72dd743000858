"""Assembling the aiohttp application from Settings, and serving it."""

from __future__ import annotations

import asyncio
import logging
import warnings
from collections.abc import Awaitable, Callable
from functools import partial

import asyncpg
from aiohttp import web
from aiohttp.web_exceptions import NotAppKeyWarning
from aiohttp_session_postgres import UNAVAILABLE_ERRORS, PostgresStorage, SessionCache, StorageMetrics
from aiohttp_session_postgres import setup as setup_sessions

from . import db, handlers, schema, useragent
from .appkeys import DEVICES, HASHER, POOL, SETTINGS, STORAGE
from .config import Settings
from .devices import DeviceCookies
from .middlewares import front
from .passwords import PasswordHasher

log = logging.getLogger(__name__)

# aiohttp-session itself still keys the request with strings; every key of ours is an AppKey.
warnings.filterwarnings("ignore", category=NotAppKeyWarning, module="aiohttp_session")

PUBLIC_DIR = schema.ROOT / "public"
# Seconds between two samples of the metrics' gauges (live sessions: a count of the table, one
# query per process each time).
METRICS_SAMPLE_INTERVAL = 60.0


class StartupError(Exception):
    """The app cannot start; the message is one line saying what to fix."""


async def open_pool(settings: Settings) -> asyncpg.Pool:
    """The pool, connected and on the expected schema revision, or StartupError."""
    assert settings.database_url is not None
    where = db.describe(settings.database_url)
    try:
        pool = await db.create_pool(
            settings.database_url,
            on_heroku=settings.on_heroku,
            max_size=settings.database_pool_max,
            timeout=max(settings.database_timeout, 5.0),  # a cold start may be slower than a request
            pgbouncer=settings.pgbouncer,
            init=_keepalive(settings),
        )
    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError, ValueError) as exc:
        raise StartupError(
            f"cannot connect to the database at {where} ({db.reason(exc)}): check DATABASE_URL"
        ) from None
    try:
        async with pool.acquire() as conn:
            await schema.check(conn)
    except schema.SchemaOutOfDate as exc:
        await pool.close()
        raise StartupError(str(exc)) from None
    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
        # Connected, then failed: the server went away, or (prepared statements) PgBouncer.
        pool.terminate()
        reason = db.reason(exc)
        hint = "check DATABASE_URL"
        if isinstance(exc, _PREPARED_STATEMENT_ERRORS) and not settings.pgbouncer:
            hint = "behind PgBouncer in transaction pooling, set DATABASE_PGBOUNCER=on"
        raise StartupError(f"cannot use the database at {where} ({reason}): {hint}") from None
    return pool


# What asyncpg's named prepared statements run into behind PgBouncer in transaction pooling.
_PREPARED_STATEMENT_ERRORS = (
    asyncpg.exceptions.DuplicatePreparedStatementError,
    asyncpg.exceptions.InvalidSQLStatementNameError,
)


async def build_storage(
    settings: Settings, pool: asyncpg.Pool, *, metrics: StorageMetrics | None = None
) -> PostgresStorage:
    """The session storage these settings describe, on `pool`: on a Citus coordinator whose
    sessions table is distributed (migration 0006 does it there), the storage for Citus.
    `metrics`: where it reports (/metrics). StartupError when the database cannot be asked, or
    refuses these settings."""
    try:
        async with pool.acquire() as conn:
            citus = await schema.distributed(conn)
    except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
        raise StartupError(f"cannot use the database ({db.reason(exc)}): check DATABASE_URL") from None
    if citus:
        if not settings.durable_writes:
            raise StartupError(
                "SESSION_DURABLE_WRITES=off cannot run on Citus (the sessions table is distributed): unset it"
            )
        log.info("the sessions table is distributed by Citus: the storage runs in its Citus mode")
    cache = (
        SessionCache(
            max_entries=settings.cache_size, max_bytes=settings.cache_max_bytes, max_age=settings.cache_max_age
        )
        if settings.cache
        else None
    )
    return PostgresStorage(
        pool,
        authentication_keys=settings.authentication_keys,
        encryption_keys=settings.encryption_keys,
        next_authentication_keys=settings.next_authentication_keys,
        next_encryption_keys=settings.next_encryption_keys,
        idle_timeout=settings.idle_timeout,
        absolute_timeout=settings.absolute_timeout,
        touch_interval=settings.touch_interval,
        cookie_name=settings.cookie_name,
        domain=settings.cookie_domain,
        samesite=settings.cookie_samesite,
        max_remember_timeout=settings.remember_timeout,
        remember_idle_timeout=settings.remember_idle_timeout,
        database_timeout=settings.database_timeout,
        max_sessions_per_user=settings.max_sessions_per_user,
        cache=cache,
        durable_writes=settings.durable_writes,
        citus=citus,
        max_data_bytes=settings.max_data_bytes,
        metrics=metrics,
    )


async def create_app(settings: Settings) -> web.Application:
    pool = await open_pool(settings)
    registry = None
    metrics = None
    if settings.metrics_token is not None:
        from . import metrics as app_metrics  # prometheus-client, only when /metrics is served

        metrics, registry = app_metrics.storage_metrics(settings)
    try:
        storage = await build_storage(settings, pool, metrics=metrics)
    except StartupError:
        await pool.close()
        raise
    app = web.Application(middlewares=[front(settings.trust_proxy)])
    app[SETTINGS] = settings
    app[POOL] = pool
    app[HASHER] = PasswordHasher(settings.password_cost)
    app[STORAGE] = storage
    # Next keys verify device cookies too (after the keys: the first still signs).
    app[DEVICES] = DeviceCookies(settings.authentication_keys + settings.next_authentication_keys)
    # aiohttp-session's middleware, saving streamed, websocket and file responses' sessions too;
    # innermost: after the proxy clone.
    setup_sessions(app, storage)
    app.router.add_routes(handlers.routes)
    if registry is not None:
        app_metrics.add_route(app, registry)
        app.cleanup_ctx.append(storage.metrics_sampler(interval=METRICS_SAMPLE_INTERVAL))
    app.router.add_static("/public", PUBLIC_DIR)
    app.cleanup_ctx.append(
        storage.sweeper(
            interval=settings.sweep_interval,
            batch_size=settings.sweep_batch_size,
            timeout=max(settings.database_timeout, 5.0),
        )
    )
    if settings.cache:
        app.cleanup_ctx.append(storage.cache_listener(partial(_listener_connection, settings)))
    app.on_startup.append(_warm_up)
    app.on_cleanup.append(_close)
    return app


async def _warm_up(app: web.Application) -> None:
    await asyncio.to_thread(useragent.warm_up)


async def _listener_connection(settings: Settings) -> asyncpg.Connection:
    assert settings.database_url is not None
    kwargs = db.connect_kwargs(settings.database_url, on_heroku=settings.on_heroku)
    conn = await asyncpg.connect(**kwargs, timeout=max(settings.database_timeout, 5.0))
    await _keepalive(settings)(conn)
    return conn


def _keepalive(settings: Settings) -> Callable[[asyncpg.Connection], Awaitable[bool]]:
    return db.keepalive(
        settings.database_keepalive_idle, settings.database_keepalive_interval, settings.tcp_user_timeout
    )


async def _close(app: web.Application) -> None:
    app[HASHER].close()
    await app[POOL].close()
    log.info("stopped: database pool closed")
