"""The app's connection pool: how DATABASE_URL becomes asyncpg connections (TLS on a dyno,
PgBouncer mode, TCP keepalive), and a pool that releases connections in one round trip.

Each operation's deadline (a 503 instead of a hang) is the library's: `storage.connection()`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from aiohttp_session_postgres import tcp_keepalive


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


def reason(exc: BaseException) -> str:
    """Why a connection failed, in a few words for an `error:` line: a PostgreSQL error's primary
    message (str() would add its DETAIL and HINT lines), never a password (asyncpg's messages do
    not carry it; the URL is never quoted)."""
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        return "the server does not offer TLS, which a dyno requires"
    text = getattr(exc, "message", None) or str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def describe(url: str) -> str:
    """host:port/database of a URL, for messages: never the password."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    host = parts.hostname or (query.get("host", ["localhost"])[0])
    port = parts.port or 5432
    return f"{host}:{port}{parts.path or '/'}"


def keepalive(idle: int, interval: int, user_timeout: float | None) -> Callable[[asyncpg.Connection], Awaitable[bool]]:
    """What sets TCP keepalive (probes after `idle` seconds, then every `interval`) and
    TCP_USER_TIMEOUT (`user_timeout` seconds, or None for none) on a new connection."""
    return partial(tcp_keepalive, idle=idle, interval=interval, user_timeout=user_timeout)


async def create_pool(
    url: str,
    *,
    on_heroku: bool,
    max_size: int,
    timeout: float,
    pgbouncer: bool = False,
    init: Callable[[asyncpg.Connection], Awaitable[object]] | None = None,
) -> asyncpg.Pool:
    """Open the pool, connecting once so a wrong URL fails at start, not at the first request.

    `pgbouncer`: PgBouncer in transaction pooling hands each transaction to any server
    connection, so named prepared statements (asyncpg's statement cache) cannot be used. All
    timeouts here are client-side, so nothing is sent as a startup parameter PgBouncer rejects.
    `init`: run on each new connection (`keepalive`).
    """
    return await asyncpg.create_pool(
        **connect_kwargs(url, on_heroku=on_heroku),
        min_size=1,
        max_size=max_size,
        timeout=timeout,  # connect
        # No command_timeout and no idle-connection timer: the storage's deadline bounds every
        # request's statements (the sweeper and the commands pass their own), and each of these
        # costs asyncpg a timer per statement or per release, a measured share of a read. A
        # connection that died silently while idle is found by the kernel instead (`keepalive`:
        # TCP keepalive, nothing per request), and one that died since its last probe by
        # TCP_USER_TIMEOUT, within the deadline: the storage then reads again on a new one.
        max_inactive_connection_lifetime=0,
        statement_cache_size=0 if pgbouncer else 100,
        reset=_keep_session_state,
        init=init,
    )


async def _keep_session_state(conn: asyncpg.Connection) -> None:
    """Release without asyncpg's reset query (pg_advisory_unlock_all, CLOSE ALL, UNLISTEN *,
    RESET ALL): a second round trip on every request that measurably halved throughput. The app
    keeps no session state on pooled connections: no SET, no cursors, no LISTEN (the cache
    listens on a connection of its own), only transaction-level advisory locks. asyncpg still
    rolls back a transaction left open before calling this."""
