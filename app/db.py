"""The connection pool, and the one bound every database operation runs under.

A request that needs the database either gets an answer within `DATABASE_TIMEOUT` seconds or a
503 (`DatabaseUnavailable`): waiting for a pool connection, connecting and the statements all
count against the same deadline. asyncpg's own defaults (60 s connect, no command timeout)
would hang a request far past Heroku's 30 s router limit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from aiohttp import web

log = logging.getLogger(__name__)

# Errors that mean "the database cannot be reached or cannot answer now", not "our SQL is wrong".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # connection closed under us, pool closing
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, starting up, query canceled
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections
    asyncpg.exceptions.LockNotAvailableError,
    # The server ended the connection (a restart) while it sat in the pool: the next statement
    # meets the half-read error ("cannot switch to state ...") before asyncpg sees it closed.
    asyncpg.exceptions.InternalClientError,
)


class DatabaseUnavailable(web.HTTPServiceUnavailable):
    """Raised (as an HTTP 503) when the database does not answer in time."""

    def __init__(self) -> None:
        super().__init__(
            text="The service is briefly unavailable. Please try again in a moment.\n",
            headers={"Retry-After": "2"},
        )


def connect_kwargs(url: str, *, on_heroku: bool) -> dict[str, Any]:
    """asyncpg connection arguments for DATABASE_URL.

    Heroku Postgres requires TLS with a self-signed certificate: "require" encrypts without
    verifying. An explicit ?sslmode= in the URL wins (asyncpg reads it); elsewhere asyncpg's
    default ("prefer") lets a plain local server work.
    """
    kwargs: dict[str, Any] = {"dsn": url}
    if on_heroku and "sslmode" not in parse_qs(urlsplit(url).query):
        kwargs["ssl"] = "require"
    return kwargs


def describe(url: str) -> str:
    """host:port/database of a URL, for messages: never the password."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host", ["localhost"])[0])
    port = parts.port or 5432
    return f"{host}:{port}{parts.path or '/'}"


async def create_pool(
    url: str, *, on_heroku: bool, max_size: int, timeout: float, pgbouncer: bool = False
) -> asyncpg.Pool:
    """Open the pool, connecting once so a wrong URL fails at start, not at the first request.

    `pgbouncer`: PgBouncer in transaction pooling hands each transaction to any server
    connection, so named prepared statements (asyncpg's statement cache) cannot be used. All
    timeouts here are client-side, so nothing is sent as a startup parameter PgBouncer rejects.
    """
    return await asyncpg.create_pool(
        **connect_kwargs(url, on_heroku=on_heroku),
        min_size=1,
        max_size=max_size,
        timeout=timeout,  # connect
        command_timeout=timeout,  # default per statement
        max_inactive_connection_lifetime=60,
        statement_cache_size=0 if pgbouncer else 100,
        reset=_keep_session_state,
    )


async def _keep_session_state(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *,
    RESET ALL): a second round trip on every request that measurably halved throughput. The app
    keeps no session state on pooled connections: no SET, no cursors, no LISTEN (the cache
    listens on a connection of its own), only transaction-level advisory locks. asyncpg still
    rolls back a transaction left open before calling this."""


@asynccontextmanager
async def connection(pool: asyncpg.Pool, timeout: float) -> AsyncIterator[asyncpg.Connection]:
    """A pooled connection whose whole use (acquire, statements, release) ends within `timeout`
    seconds, or DatabaseUnavailable."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        async with asyncio.timeout_at(deadline):
            conn = await pool.acquire(timeout=timeout)
        try:
            async with asyncio.timeout_at(deadline):
                yield conn
        finally:
            # Releasing a connection whose statement was cut short waits for the server to
            # acknowledge the cancel (asyncpg would wait the whole `timeout` again): give it only
            # what is left of the deadline; past that asyncpg terminates the connection.
            await pool.release(conn, timeout=max(deadline - loop.time(), 0.01))
    except UNAVAILABLE_ERRORS as exc:
        log.warning("database unavailable: %s", type(exc).__name__)
        raise DatabaseUnavailable() from exc
