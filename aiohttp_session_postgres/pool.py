"""The way to the database: one deadline for each operation, and connections handed out in the
order they were asked for. An outage becomes `Unavailable` (the storage answers it with an HTTP
503), never a hang.

Waiting for a pool connection, connecting and the statements all count against the same
deadline. asyncpg's own defaults (60 s to connect, no statement timeout) would hold a request far
past the 30 s a router such as Heroku's waits.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, TypeVar

import asyncpg

from .observer import (
    CAUSE_CONNECTION_LOST,
    CAUSE_READ_ONLY,
    CAUSE_SCHEMA,
    CAUSE_TIMEOUT,
    CAUSE_UNREACHABLE,
    StorageMetrics,
)

if TYPE_CHECKING:
    from ._types import Connection, PoolConnection

log = logging.getLogger("aiohttp_session_postgres")

T = TypeVar("T")

# The schema is not what this code expects (a deploy migrating, a downgrade during traffic).
SCHEMA_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.UndefinedTableError,
    asyncpg.exceptions.UndefinedColumnError,
    asyncpg.exceptions.UndefinedFunctionError,
)

# Errors that mean "the database cannot be reached or cannot answer now", not "the SQL is wrong".
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,  # connection closed under us, pool closing
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.exceptions.OperatorInterventionError,  # class 57: shutdown, starting up, query canceled
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections
    asyncpg.exceptions.LockNotAvailableError,
    # Class 40, a deadlock or serialization failure: PostgreSQL rolled the transaction back and
    # it may simply be tried again (503 with Retry-After), not a fault of the request.
    asyncpg.exceptions.TransactionRollbackError,
    # The server ended the connection (a restart) while it sat in the pool: the next statement
    # meets the half-read error ("cannot switch to state ...") before asyncpg sees it closed.
    asyncpg.exceptions.InternalClientError,
    # A read-only server (a hot standby, a failover not yet promoted, default_transaction_read_only
    # on): writes wait for a writable one. Reads that need no write are served (rows.py).
    asyncpg.exceptions.ReadOnlySQLTransactionError,
    # A request can only be asked to come back; the log says why, not a traceback per request.
    *SCHEMA_ERRORS,
    # A prepared statement whose table changed under it, in a transaction (outside one asyncpg
    # prepares it again by itself): the next try prepares afresh.
    asyncpg.exceptions.InvalidCachedStatementError,
)


# Everything a database operation may raise that is the database's doing: the above, or an error
# PostgreSQL reports (a lock timeout, a table missing while a deploy creates it).
DATABASE_ERRORS: tuple[type[BaseException], ...] = (*UNAVAILABLE_ERRORS, asyncpg.PostgresError)

# Seconds between two log lines for the same reason of a 503 (the first is logged at once; the
# next says how many were not).
REPORT_INTERVAL = 60.0

# Seconds between two renewals of the pool's connections while the server refuses writes as
# read-only (FairPool.refused_as_read_only).
READ_ONLY_RECONNECT = 5.0

# Seconds a connection given back after an error may take to be released: the server must
# confirm the cancel of a statement the deadline cut short. Measured here: asyncpg given too
# little (under ~0.1 s) terminates the connection before the cancel is even sent, and the
# statement then runs on in the server, holding its locks, for as long as it takes.
CANCEL_BUDGET = 3.0


class Unavailable(Exception):
    """The database did not answer within the deadline, or could not be reached (one of
    UNAVAILABLE_ERRORS, which is its ``__cause__``).

    :ivar reason: why, in a few words for an operator (`reason`), or "" when the database did
        not answer (in time).
    """

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


class ConnectionLost(Unavailable):
    """The connection broke under an operation before its deadline: the server closed it (a
    restart), or the kernel found it dead (TCP_USER_TIMEOUT, a keepalive probe unanswered: a
    NAT or load balancer that dropped it silently). What was sent may or may not have reached
    the database: `FairPool.read` runs a read again on a new connection, nothing else does."""


class FairPool:
    """`pool`, handed out in the order it was asked for. asyncpg's pool wakes a waiter when a
    connection comes back, but a newcomer can take it first, so with more requests than
    connections some wait far longer than others (measured here: p99 155 ms against a p50 of 7
    at 32 requests on 5 connections). A FIFO semaphore of the pool's size in front of it queues
    everyone in arrival order; the pool itself then never has a waiter. (Code that acquires from
    the pool directly, past this gate, may still overtake: the sweeper, a few times an hour.)"""

    def __init__(self, pool: asyncpg.Pool, *, metrics: StorageMetrics | None = None) -> None:
        self.pool = pool
        self.metrics = metrics  # told of pool waits and of every Unavailable
        # asyncio.Semaphore serves waiters first-come, first-served, newcomers after them.
        self._turns = asyncio.Semaphore(pool.get_max_size())
        self._releasing: set[asyncio.Task[None]] = set()
        self._expired_at = -READ_ONLY_RECONNECT  # refused_as_read_only, monotonic
        self._reported: dict[str, tuple[float, int]] = {}  # why: (logged at, monotonic; not logged since)

    @asynccontextmanager
    async def connection(self, timeout: float) -> AsyncIterator[Connection]:
        """A connection whose whole use (the wait for a turn, acquire, statements, release) ends
        within `timeout` seconds; otherwise Unavailable is raised (the statement cut
        short is cancelled in the database too). An error raised inside the block by anything
        but the database (an OSError of another service's client, say) passes through."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn: PoolConnection | None = None
        turn, cut_short = False, False
        try:
            # One deadline for everything: asyncpg's own timeouts (acquire's, a statement's)
            # each cost a scope and a timer per call, a measured share of a read.
            async with asyncio.timeout_at(deadline) as within:
                # Every connection busy: the wait is measured (nothing is when one is free).
                waits = self.metrics is not None and self._turns.locked()
                started = loop.time() if waits else 0.0
                await self._turns.acquire()
                turn = True
                conn = await self.pool.acquire()
                if waits:
                    assert self.metrics is not None
                    self.metrics.pool_wait(loop.time() - started)
                yield conn
        except UNAVAILABLE_ERRORS as exc:
            cut_short = True
            if isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError):
                await self.refused_as_read_only()
            if conn is None or _from_database(exc) or within.expired() or _closed(conn):
                lost = conn is not None and not within.expired() and _closed(conn)
                raise self._unavailable(exc, lost=lost) from exc
            raise
        except (asyncpg.InternalServerError, asyncpg.PostgresIOError) as exc:
            if not node_lost(exc):
                raise
            raise self._unavailable(exc) from exc
        except BaseException as exc:
            # A cancel (the client went away) may stop a statement midway; an error of the app's
            # own (an HTTPException) or one PostgreSQL reported leaves the connection idle.
            cut_short = not isinstance(exc, Exception)
            raise
        finally:
            if conn is not None and cut_short:
                # The connection may still run a statement that was cut short: the answer does
                # not wait for its cancel; the turn comes back with the connection.
                self._release_later(conn)
            else:
                try:
                    if conn is not None:
                        await self._release(conn, deadline - loop.time())
                finally:
                    if turn:
                        self._turns.release()

    async def refused_as_read_only(self) -> None:
        """A statement was refused because the server is read-only. A connection keeps the
        default_transaction_read_only it began with, so that a server made writable again by that
        setting (not by a promotion) would refuse its old connections' writes for ever: the pool's
        connections are replaced at their next use, at most once a READ_ONLY_RECONNECT (on a hot
        standby every new connection is read-only too)."""
        now = time.monotonic()
        if now - self._expired_at >= READ_ONLY_RECONNECT:
            self._expired_at = now
            await self.pool.expire_connections()

    async def read(self, timeout: float, work: Callable[[Connection], Awaitable[T]]) -> T:
        """`work(conn)` on a connection, all of it within `timeout` seconds as `connection` says;
        if the connection breaks under it before then (ConnectionLost: a connection that died
        silently since its last use, found by TCP_USER_TIMEOUT), once more on a new connection
        within what is left. The pool's idle connections are closed first: they most likely
        went the same way, and the pool would hand out one of them before a new one. Only for
        work that, run twice, changes nothing more than run once: a read, or the touch (it sets
        the time and client it sets, whatever ran before).

        :raises Unavailable: as `connection` does, also when the new connection breaks too.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            async with self.connection(timeout) as conn:
                return await work(conn)
        except ConnectionLost:
            if loop.time() >= deadline:
                raise
        log.info("a read's connection broke: reading again on a new connection")
        await _drop_idle(self.pool)
        async with self.connection(deadline - loop.time()) as conn:
            return await work(conn)

    def _release_later(self, conn: PoolConnection) -> None:
        task = asyncio.get_running_loop().create_task(self._release_in_background(conn))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)

    async def _release_in_background(self, conn: PoolConnection) -> None:
        try:
            await self.pool.release(conn, timeout=CANCEL_BUDGET)
        except DATABASE_ERRORS as exc:
            # asyncpg has terminated the connection; the pool opens a new one when asked.
            log.info("connection released after an error: %s", type(exc).__name__)
        finally:
            self._turns.release()

    async def _release(self, conn: PoolConnection, remaining: float) -> None:
        # After a clean use: the reset asyncpg runs on release counts against what is left of the
        # deadline; past that asyncpg terminates the connection.
        try:
            await self.pool.release(conn, timeout=max(remaining, 0.01))
        except UNAVAILABLE_ERRORS as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: BaseException, *, lost: bool = False) -> Unavailable:
        """Unavailable, from `exc` (ConnectionLost when `lost`: the connection broke before the
        deadline); logged with its reason, at most once a REPORT_INTERVAL per reason (an outage
        serves many requests)."""
        if lost:  # its own words: the database may well be up
            cause = f" ({type(exc.__cause__).__name__})" if exc.__cause__ is not None else ""
            why = f"database connection lost: {type(exc).__name__}{cause}"
        else:
            why = f"database unavailable: {reason(exc) or type(exc).__name__}"
        now = time.monotonic()
        logged_at, since = self._reported.get(why, (-REPORT_INTERVAL, 0))
        if now - logged_at >= REPORT_INTERVAL:
            more = f" ({since} more since the last line)" if since else ""
            log.warning("%s%s", why, more)
            self._reported[why] = (now, 0)
        else:
            self._reported[why] = (logged_at, since + 1)
        if self.metrics is not None:
            self.metrics.unavailable(cause_of(exc, lost=lost))
        return ConnectionLost(reason(exc)) if lost else Unavailable(reason(exc))


async def _drop_idle(pool: asyncpg.Pool) -> None:
    """Terminate the pool's idle connections (no I/O: a dead one cannot hold this up); the pool
    opens new ones as they are asked for. Not `expire_connections()`: asyncpg closes an expired
    connection gracefully, in a task of its own, whose error on a dead connection nobody
    retrieves (a traceback in the log)."""
    for _ in range(pool.get_max_size()):
        if not pool.get_idle_size():
            return
        # The pool hands out a connected idle connection first, without I/O (no setup hook here).
        conn = await pool.acquire()
        conn.terminate()  # asyncpg puts its holder back, disconnected
        await pool.release(conn)


# How Citus reports, as an internal error (XX000) or an I/O error (58030), a worker it lost or
# cannot reach: the coordinator's connection stays usable, and the operation may be tried again.
_NODE_LOST = (
    "failure on connection marked as essential",
    "server closed the connection unexpectedly",
    "connection to the remote node",
    "could not establish any connections to the node",
    "connection not open",
    "failed to COPY to shard",
)


def node_lost(exc: asyncpg.PostgresError) -> bool:
    """Whether a Citus coordinator's internal error says it lost a worker (measured, Citus 14)."""
    text = str(exc)
    return any(phrase in text for phrase in _NODE_LOST)


def reason(exc: BaseException) -> str:
    """Why the database is unavailable, for a log line: what an operator should know, never
    data (PostgreSQL's message of a schema error names an object, not a value)."""
    if isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError):
        return (
            "the database is read-only (a hot standby, a failover not yet promoted, or"
            " default_transaction_read_only): what writes answers 503 until it is writable"
        )
    if isinstance(exc, SCHEMA_ERRORS):
        message = getattr(exc, "message", "") or type(exc).__name__
        return f"the schema is not what this code expects ({message}): are the migrations applied?"
    return ""  # it did not answer, or not in time: the error's name says how


def cause_of(exc: BaseException, *, lost: bool = False) -> str:
    """The metrics' cause (observer.CAUSE_*) of an Unavailable made from `exc`."""
    if lost:
        return CAUSE_CONNECTION_LOST
    if isinstance(exc, asyncpg.exceptions.ReadOnlySQLTransactionError):
        return CAUSE_READ_ONLY
    if isinstance(exc, SCHEMA_ERRORS):
        return CAUSE_SCHEMA
    if isinstance(exc, TimeoutError):
        return CAUSE_TIMEOUT
    return CAUSE_UNREACHABLE


def _closed(conn: Connection) -> bool:
    try:
        return conn.is_closed()
    except asyncpg.InterfaceError:  # the pool already took back a connection that broke
        return True


def _from_database(exc: BaseException) -> bool:
    """Raised by asyncpg (its own classes, or an OSError / TimeoutError from its code)."""
    if isinstance(exc, asyncpg.PostgresError | asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError):
        return True
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg")
