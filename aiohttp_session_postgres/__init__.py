"""aiohttp-session storage on PostgreSQL (asyncpg): the cookie carries only a signed, opaque
session ID; the session lives in a table, encrypted, with its idle and absolute timeouts enforced
by the database's clock.

    import aiohttp_session
    from aiohttp_session_postgres import PostgresStorage, create_schema, renew_session

    storage = PostgresStorage(pool, authentication_keys=[...], encryption_keys=[...])
    aiohttp_session.setup(app, storage)
    app.cleanup_ctx.append(storage.sweeper())

Public names: PostgresStorage, PostgresSession, SessionCache, SessionInfo, get_session,
new_session, renew_session, sweep, ArgumentError, DatabaseUnavailable, UNAVAILABLE_ERRORS,
create_schema, schema_sql, schema_statements, schema_version, SCHEMA_VERSION, tcp_keepalive.
Everything else is internal and may change.
"""

from .cache import SessionCache
from .keepalive import tcp_keepalive
from .pool import UNAVAILABLE_ERRORS
from .rows import SessionInfo
from .schema import SCHEMA_VERSION, create_schema, schema_sql, schema_statements, schema_version
from .session import PostgresSession
from .storage import ArgumentError, DatabaseUnavailable, PostgresStorage, get_session, new_session, renew_session
from .sweeper import sweep

__version__ = "0.1.0"

__all__ = [
    "SCHEMA_VERSION",
    "UNAVAILABLE_ERRORS",
    "ArgumentError",
    "DatabaseUnavailable",
    "PostgresSession",
    "PostgresStorage",
    "SessionCache",
    "SessionInfo",
    "__version__",
    "create_schema",
    "get_session",
    "new_session",
    "renew_session",
    "schema_sql",
    "schema_statements",
    "schema_version",
    "sweep",
    "tcp_keepalive",
]
