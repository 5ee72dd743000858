"""aiohttp-session storage on PostgreSQL (asyncpg): the cookie carries only a signed, opaque
session ID; the session lives in a table, encrypted, with its idle and absolute timeouts enforced
by the database's clock.

    import aiohttp_session_postgres
    from aiohttp_session_postgres import PostgresStorage, create_schema, renew_session

    storage = PostgresStorage(pool, authentication_keys=[...], encryption_keys=[...])
    aiohttp_session_postgres.setup(app, storage)  # aiohttp-session's setup, for streams too
    app.cleanup_ctx.append(storage.sweeper())

Public names: PostgresStorage, PostgresSession, SessionCache, SessionInfo, setup,
session_middleware, save_session, SessionNotSent, get_session, new_session, renew_session, sweep,
ArgumentError, DatabaseUnavailable, SessionDataTooLarge, UNAVAILABLE_ERRORS, DEFAULT_MAX_DATA_BYTES,
create_schema, schema_sql, schema_statements, run_schema_statements, schema_version, SCHEMA_VERSION,
tcp_keepalive, SessionEvent (the hooks' events: ``storage.on_event``), StorageMetrics (what the
storage reports), PrometheusMetrics (with the ``[metrics]`` extra: imported only when asked for).
With the ``[security]`` extra: aiohttp_session_postgres.security.PostgresIdentityPolicy (aiohttp-security).
Everything else is internal and may change.
"""

from typing import TYPE_CHECKING, Any

from .cache import SessionCache
from .hooks import SessionEvent
from .keepalive import tcp_keepalive
from .observer import StorageMetrics
from .pool import UNAVAILABLE_ERRORS
from .rows import SessionInfo
from .schema import SCHEMA_VERSION, create_schema, run_schema_statements, schema_sql, schema_statements, schema_version
from .session import DEFAULT_MAX_DATA_BYTES, PostgresSession, SessionDataTooLarge
from .storage import ArgumentError, DatabaseUnavailable, PostgresStorage, get_session, new_session, renew_session
from .streaming import SessionNotSent, save_session, session_middleware, setup
from .sweeper import sweep

if TYPE_CHECKING:
    from .metrics import PrometheusMetrics

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_DATA_BYTES",
    "SCHEMA_VERSION",
    "UNAVAILABLE_ERRORS",
    "ArgumentError",
    "DatabaseUnavailable",
    "PostgresSession",
    "PostgresStorage",
    "PrometheusMetrics",
    "SessionCache",
    "SessionDataTooLarge",
    "SessionEvent",
    "SessionInfo",
    "SessionNotSent",
    "StorageMetrics",
    "__version__",
    "create_schema",
    "get_session",
    "new_session",
    "renew_session",
    "run_schema_statements",
    "save_session",
    "schema_sql",
    "schema_statements",
    "schema_version",
    "session_middleware",
    "setup",
    "sweep",
    "tcp_keepalive",
]


def __getattr__(name: str) -> Any:
    # PrometheusMetrics needs prometheus-client (the [metrics] extra): imported on first use only.
    if name == "PrometheusMetrics":
        from .metrics import PrometheusMetrics  # ImportError saying what to install, without it

        return PrometheusMetrics
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
