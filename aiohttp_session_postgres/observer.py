"""What the storage reports for metrics (`StorageMetrics`), without any metrics library: the
storage calls these, and `aiohttp_session_postgres.metrics.PrometheusMetrics` (the ``[metrics]``
extra) implements them with prometheus-client. Another implementation (StatsD, OpenTelemetry)
needs only these methods.

Every call is made on the event loop's thread and must return at once: `load` is on the read
path (one call per request that loads a session).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .hooks import SessionEvent

# `load` outcomes.
LOAD_CACHE_HIT = "cache_hit"  # served from this process's session cache
LOAD_DATABASE = "database"  # read from the database
LOAD_UNKNOWN = "unknown"  # the cookie names no live session (expired, ended, swept)
LOAD_UNDECRYPTABLE = "undecryptable"  # a live row no key of ours opens
LOAD_BAD_SIGNATURE = "bad_signature"  # a request whose session cookies all failed verification

# `unavailable` causes (a DatabaseUnavailable, HTTP 503, follows each).
CAUSE_TIMEOUT = "timeout"  # no answer within database_timeout (pool wait included)
CAUSE_CONNECTION_LOST = "connection_lost"  # the connection broke under the operation
CAUSE_READ_ONLY = "read_only"  # a write refused by a read-only server
CAUSE_SCHEMA = "schema"  # the table is not what the code expects (migrations)
CAUSE_UNREACHABLE = "unreachable"  # could not connect, too many connections, shutting down...


class StorageMetrics(Protocol):
    """The storage's reports (``PostgresStorage(..., metrics=...)``)."""

    def event(self, event: SessionEvent) -> None:
        """A lifecycle event this process caused (never one learnt from another process: each
        process counts its own, so a sum over processes counts each event once)."""

    def load(self, outcome: str) -> None:
        """A request's session looked up: one of the LOAD_* outcomes."""

    def unavailable(self, cause: str) -> None:
        """A database operation gave up (the request answers 503): one of the CAUSE_* causes."""

    def pool_wait(self, seconds: float) -> None:
        """An operation found every connection of the pool busy and waited `seconds` for one."""

    def listener_lost(self, listener: str) -> None:
        """A LISTEN connection (`listener`: ``cache`` or ``events``) was lost or failed to
        connect; it is retried."""

    def swept(self, rows: int, seconds: float) -> None:
        """A sweep pass deleted `rows` expired rows in `seconds`."""

    def sample(
        self, *, live_sessions: int | None, cache_enabled: bool | None, cache_entries: int, cache_bytes: int
    ) -> None:
        """Periodic values (`PostgresStorage.metrics_sampler`): live sessions in the table (None
        when the count failed), whether this process's cache serves reads (None: it has none),
        and what it holds."""
