"""SessionRows: the sessions table's operations over an asyncpg pool, with typed results.

Each operation is one statement of sql.py (a merge after a version conflict, and ending a user's
sessions, one short transaction), under the pool's deadline (pool.py: `Unavailable` when the
database does not answer). Session data goes in sealed and comes out opened (cipher.py), bound to
its row. It knows rows, not HTTP: cookies, requests and events are the storage's (storage.py).

On Citus (`citus=True`) what changes or ends a session runs in a transaction that ends by
notifying the processes' caches itself (`_changing`): on one PostgreSQL the table's triggers do it,
but on Citus a trigger would fire on the worker holding the row, and its notification would
reach only that worker's listeners. There too the per-user lock is a statement of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple

import asyncpg

from .cipher import DataCipher
from .identity import UserId, columns
from .memo import BoundedMap
from .observer import StorageMetrics
from .pool import FairPool, Unavailable
from .schema import TableNames, distributed
from .sql import COUNT_LIVE_SQL, TOMBSTONE_SECONDS, Statements
from .sweeper import sweep, sweep_forever
from .tokens import HANDLE_BYTES, handle_of

if TYPE_CHECKING:
    from ._types import Connection

log = logging.getLogger("aiohttp_session_postgres")

# Session IDs remembered per process, dead ones and touch times (32 bytes and a dict slot each:
# about 2 MB).
MEMO_SIZE = 10_000

# Seconds between tries to touch on a server that refused a touch as read-only (a touch that
# fails costs a round trip).
READ_ONLY_RETRY = 5.0

_HANDLE_RE = re.compile(rf"[0-9a-f]{{{HANDLE_BYTES * 2}}}")


class Lifetime(NamedTuple):
    """A session's lifetime as its row keeps it, given at creation or by a change of its max_age.

    :param seconds: its absolute lifetime, from its creation (the absolute deadline is
        created_at + seconds).
    :param idle_timeout: its own idle timeout (seconds: a remembered session's); None: the
        storage's.
    :param browser_session: its cookie has no Max-Age (ends with the browser).
    """

    seconds: float
    idle_timeout: int | None
    browser_session: bool

    def values(self) -> dict[str, object]:
        """As the statements take it (sql.py: $lifetime, $row_idle_timeout, $browser_session)."""
        return {"row_idle_timeout": self.idle_timeout, "browser_session": self.browser_session}


# No change of lifetime: the row keeps its own (RENEW_SQL, SAVE_SQL).
_KEEP: dict[str, object] = {"lifetime": None, "row_idle_timeout": None, "browser_session": None}


class Client(NamedTuple):
    """What a session keeps of the client at its last touch, valid text for PostgreSQL."""

    ip: str
    user_agent: str


# Not frozen (read-only by convention): a frozen dataclass's __init__ cost 0.8 µs more per load,
# measured, a share of a read that asks the database.
@dataclass(slots=True)
class Row:
    """A live session's row, its data opened, read-only. Times are epoch seconds, the database's
    clock; `clock` relates it to this process's monotonic clock, so that every deadline is
    compared with the database's time and never with this host's (which may be minutes off)."""

    plaintext: bytes  # the data as JSON
    version: int
    created: int
    idle_deadline: float
    absolute_deadline: float
    touched_at: float  # last_seen_at as this statement left it: its own touch, when it touched
    # The database's clock minus time.monotonic(), from the statement's now() and the monotonic
    # time just before it was sent: the estimate runs ahead of the database by the round trip, so
    # a deadline is met early, never late.
    clock: float
    current_key: bool = True  # sealed under the newest encryption key
    browser_session: bool = False  # its cookie has no Max-Age
    lifetime: int = 0  # seconds from creation to its absolute deadline

    def now(self) -> float:
        """The database's clock now (epoch seconds), as estimated from the statement that read
        this row: never behind the database's own."""
        return time.monotonic() + self.clock

    def local(self, deadline: float) -> float:
        """`deadline` (the database's clock) on this process's monotonic clock."""
        return deadline - self.clock


class Gone(enum.Enum):
    """Why `load` found no live session; the value is the event that says so ("": none)."""

    KNOWN_DEAD = ""  # this process found it dead before: no lookup
    EXPIRED_OR_UNKNOWN = "session.expired_or_unknown"
    UNDECRYPTABLE = "session.undecryptable"


@dataclass(frozen=True, slots=True)
class Created:
    """A session made by `create` or `renew`, and the user's sessions the cap ended for it."""

    row: Row
    ended: tuple[bytes, ...] = ()


class NotCreated(enum.Enum):
    """Why `create` or `renew` made nothing; the value is the reason logged."""

    REPLACED_OR_ENDED = "replaced_or_ended"  # the session to replace was used by another, or ended
    PRECONDITION = "precondition"  # the creation's check said no


class NotSaved(enum.Enum):
    """Why `save` wrote nothing."""

    ENDED = "ended"  # the session ended while the request ran
    UNKNOWN_KEY = "unknown_key"  # newer data under a key this process lacks: left as it is


@dataclass(frozen=True)
class SessionInfo:
    """One live session, as a user's device list shows it.

    :param handle: names the session publicly (16 hex digits, from the ID hash): it can end the
        session through `PostgresStorage.end_session`, never authenticate.
    :param created_at: when the session began (timezone-aware, UTC).
    :param last_seen_at: its last touch (timezone-aware, UTC).
    :param client_ip: the client address of the last touch, as sent (escape before display).
    :param user_agent: the User-Agent of the last touch, as sent (escape before display).
    """

    handle: str
    created_at: datetime
    last_seen_at: datetime
    client_ip: str
    user_agent: str


class _Refused(Exception):
    pass


def _owner(user_id: UserId) -> dict[str, UserId]:
    """The parameter that names the user in a statement of one user's sessions: $principal for a
    str user, $user_id for an int one (sql.Statements has a statement for each)."""
    return {"principal": user_id} if isinstance(user_id, str) else {"user_id": user_id}


def handle_prefix(handle: str) -> bytes | None:
    """The ID-hash prefix a handle names, or None when it is not a well-formed handle."""
    return bytes.fromhex(handle) if _HANDLE_RE.fullmatch(handle) else None


class SessionRows:
    """The table's operations for one storage.

    :param pool: an asyncpg pool on a database that has the table.
    :param cipher: seals and opens session data.
    :param names: the table.
    :param idle_timeout: seconds without a touch that end a session.
    :param absolute_timeout: seconds after creation that end a session (unless its `Lifetime`
        says otherwise).
    :param remember_idle_timeout: the most a row's own idle timeout may be (a remembered
        session's); None: `idle_timeout`.
    :param touch_interval: a load slides the idle deadline at most this often (seconds).
    :param database_timeout: seconds one operation may take, pool wait included.
    :param max_sessions_per_user: live sessions kept per user after a creation; None: no cap.
    :param durable_writes: False: writes that end nothing skip waiting for the WAL flush.
    :param citus: whether the table is distributed by Citus (sql.Statements says what that
        changes). The first operation asks the table (one query, once); a `citus` that disagrees
        is logged, and the table is followed.
    :param metrics: told of pool waits and of the database's failures (observer.py).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        cipher: DataCipher,
        *,
        names: TableNames,
        idle_timeout: float,
        absolute_timeout: float,
        touch_interval: float,
        database_timeout: float,
        max_sessions_per_user: int | None,
        durable_writes: bool,
        citus: bool | None = None,
        remember_idle_timeout: float | None = None,
        metrics: StorageMetrics | None = None,
    ) -> None:
        self.pool = pool
        # Found out from the table at the first operation, whatever the constructor was told.
        self.citus: bool | None = None
        self._told_citus = citus
        self.durable_writes = durable_writes
        self.names = names
        self.idle_timeout = idle_timeout
        self.absolute_timeout = absolute_timeout
        self.remember_idle_timeout = idle_timeout if remember_idle_timeout is None else remember_idle_timeout
        self.touch_interval = touch_interval
        self.database_timeout = database_timeout
        self.max_sessions_per_user = max_sessions_per_user
        self.sql = Statements(names.qualified, durable_writes=durable_writes, citus=bool(citus))
        self._cipher = cipher
        self._fair = FairPool(pool, metrics=metrics)
        # IDs found dead (unknown, expired, used up): an ID never comes back to life, so a browser
        # that keeps sending a dead cookie costs a lookup once, not on every request.
        self._dead: BoundedMap[bytes, None] = BoundedMap(MEMO_SIZE)
        # When each session was last touched (time.monotonic(), from the database's clock
        # through Row.clock), as this process last learned it: within the touch interval a load
        # needs no touch.
        self._touch_times: BoundedMap[bytes, float] = BoundedMap(MEMO_SIZE)
        # Until when (time.monotonic()) loads do not try to touch: the server refused a touch as
        # read-only.
        self._read_only_until = 0.0

    def connection(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """A connection whose whole use ends within `database_timeout`, handed out in the order
        asked for. Raises pool.Unavailable."""
        return self._fair.connection(self.database_timeout)

    @contextlib.asynccontextmanager
    async def _connection(self, conn: Connection | None) -> AsyncIterator[Connection]:
        """`conn`, else one of the pool's under the deadline; the first one finds out whether the
        table is distributed (when the constructor was not told)."""
        if conn is not None:
            if self.citus is None:
                await self._find_out(conn)
            yield conn
            return
        async with self.connection() as pooled:
            if self.citus is None:
                await self._find_out(pooled)
            yield pooled

    async def _find_out(self, conn: Connection) -> None:
        """Whether the table is distributed by Citus, asked of the database once (the
        statements and the notifications follow from it)."""
        citus = await distributed(conn, self.names)
        if self._told_citus is not None and self._told_citus != citus:
            layout = "distributed by Citus" if citus else "not distributed"
            log.warning(
                "citus=%s, but the table %s is %s: following the table", self._told_citus, self.names.channel, layout
            )
        if citus and not self.durable_writes:
            log.warning("durable_writes=False cannot run on Citus: every write waits for the flush")
            self.durable_writes = True
        self.sql = Statements(self.names.qualified, durable_writes=self.durable_writes, citus=citus)
        self.citus = citus

    def _changing(
        self, conn: Connection, *, transaction: bool = False, notifies: bool = True, shards: bool = False
    ) -> contextlib.AbstractAsyncContextManager[list[str]]:
        """Around the statements of one operation that changes or ends sessions (`notifies`), in
        a transaction if asked for: the caller adds the notification payloads of what they
        changed (as schema.sql's triggers write them). On one PostgreSQL the triggers notify and
        the payloads are dropped; on Citus they are notified from the coordinator. `shards`: the
        statements may write on several workers (a two-phase commit): then, as when a transaction
        is asked for, in a transaction that notifies before it commits (and again after). A
        statement of one row alone is committed by its worker as it runs: its notification
        follows it, a statement of its own (a transaction would cost two round trips more and
        make it no more atomic: Citus commits that worker before the coordinator's NOTIFY)."""
        if self.citus and (transaction or shards):
            return _Notifying(conn, self.sql, self.names.channel, shards=shards)
        if self.citus and notifies:
            return _NotifyingAfter(conn, self.sql, self.names.channel)
        return _Transaction(conn) if transaction else _NOTHING

    async def _user_lock(self, conn: Connection, user_id: UserId, *, shared: bool = False) -> None:
        if isinstance(user_id, str):
            statement = self.sql.principal_lock_shared if shared else self.sql.principal_lock
            args = statement.args(table_key=self.names.channel, principal=user_id)
        else:
            statement = self.sql.user_lock_shared if shared else self.sql.user_lock
            args = statement.args(table_key=self.names.channel, user_id=user_id)
        await conn.execute(statement.sql, *args)

    # -- one session -----------------------------------------------------------------------

    async def load(self, id_hash: bytes, client: Callable[[], Client], *, cacheable: bool = True) -> Row | Gone:
        """The live session `id_hash`, its idle deadline slid if its last touch is older than the
        touch interval, with the client details `client()` gives (called when this process does
        not know of a touch within the interval). `cacheable` is for CachedRows: the rows alone
        have no cache."""
        if id_hash in self._dead:
            return Gone.KNOWN_DEAD
        touched = self._touch_times.get(id_hash)  # monotonic
        # The pool's connection itself, not _connection(): a context manager less on every read
        # that asks the database (1.8 µs, measured). Run again on a new connection if the one
        # it got had died silently.
        load = partial(self._load_record, id_hash, touched, client)
        record, sent, plain = await self._fair.read(self.database_timeout, load)
        if record is None:
            self._dead[id_hash] = None
            return Gone.EXPIRED_OR_UNKNOWN
        opened = self._cipher.open(record["data"], id_hash)
        if opened is None:
            self._dead[id_hash] = None
            return Gone.UNDECRYPTABLE
        # A plain read's touch time is the one this process already knows.
        return self._row(id_hash, record, *opened, sent=sent, now=record["now"], memo=not plain)

    async def _load_record(
        self, id_hash: bytes, touched: float | None, client: Callable[[], Client], conn: Connection
    ) -> tuple[asyncpg.Record | None, float, bool]:
        """`load`'s statements on `conn`: the read, with the touch when due (the record, when
        it was sent, monotonic, and whether it was a plain read). Safe to run twice (the touch
        sets the time and client it sets), so FairPool.read may."""
        if self.citus is None:
            await self._find_out(conn)
        sent = time.monotonic()
        plain = (touched is not None and sent - touched < self.touch_interval) or sent < self._read_only_until
        record: asyncpg.Record | None = None
        if not plain:
            ip, user_agent = client()
            args = self.sql.load_and_touch.args(
                id_hash=id_hash,
                touch_interval=self.touch_interval,
                idle_timeout=self.idle_timeout,
                remember_idle_timeout=self.remember_idle_timeout,
                client_ip=ip,
                user_agent=user_agent,
            )
            try:
                record = await conn.fetchrow(self.sql.load_and_touch.sql, *args)
            except asyncpg.exceptions.ReadOnlySQLTransactionError:
                # A read-only server refuses the touch's UPDATE whatever it would match: the
                # session is read without it (its idle deadline does not slide).
                plain = True
                self._refused_touch(sent)
                await self._fair.refused_as_read_only()
            else:
                self._writable()
        if plain:
            record = await conn.fetchrow(self.sql.load.sql, id_hash)
        return record, sent, plain

    def _writable(self) -> None:
        """A write went through: if touches were being skipped, no longer."""
        if self._read_only_until:
            self._read_only_until = 0.0
            log.warning("database writable again: sessions are touched again")

    def _refused_touch(self, now: float) -> None:
        if not self._read_only_until:
            log.warning(
                "database is read-only: sessions are read without a touch (their idle deadlines"
                " do not slide) and what writes answers 503, until it is writable"
            )
        self._read_only_until = now + READ_ONLY_RETRY

    async def create(
        self,
        id_hash: bytes,
        plaintext: bytes,
        *,
        user_id: UserId | None,
        replaces: bytes | None,
        client: Client,
        check: Callable[[Connection], Awaitable[bool]] | None = None,
        lifetime: Lifetime | None = None,
    ) -> Created | NotCreated:
        """A new session, using up `replaces` (the session a login came with) in the same
        statement; then, for a user, the cap. `check`: run first, in the creation's transaction;
        False creates nothing. A creation that ends a session, or that a check guards, waits for
        the WAL flush even with durable_writes=False. `lifetime`: None, the storage's."""
        if lifetime is None:
            lifetime = Lifetime(self.absolute_timeout, None, False)
        durable = replaces is not None or check is not None
        data = self._cipher.seal(plaintext, id_hash)
        async with self._connection(None) as conn:
            statement = self.sql.create if durable else self.sql.create_async
            number, principal = columns(user_id)
            args = statement.args(
                id_hash=id_hash,
                user_id=number,
                principal=principal,
                data=data,
                idle_timeout=self.idle_timeout,
                absolute_timeout=lifetime.seconds,
                **lifetime.values(),
                replaced=replaces,
                client_ip=client.ip,
                user_agent=client.user_agent,
                tombstone_seconds=TOMBSTONE_SECONDS,
            )
            try:
                # With a check, the check and the write in one transaction: what the check reads
                # (and locks, FOR SHARE) cannot change before the session exists.
                changing = self._changing(
                    conn, transaction=check is not None, notifies=replaces is not None, shards=replaces is not None
                )
                sent = time.monotonic()  # before the transaction whose now() the row's times take
                async with changing as changed:
                    if check is not None and not await check(conn):
                        raise _Refused  # rolls back whatever the check did
                    record = await conn.fetchrow(statement.sql, *args)
                    if record is not None and record["replaced_version"] is not None:
                        assert replaces is not None
                        changed.append(f"{replaces.hex()}:{record['replaced_version']}")
            except _Refused:
                return NotCreated.PRECONDITION
            return await self._with_cap(conn, id_hash, plaintext, user_id, record, sent)

    async def renew(
        self,
        id_hash: bytes,
        plaintext: bytes,
        *,
        user_id: UserId | None,
        replaces: bytes,
        client: Client,
        lifetime: Lifetime | None = None,
    ) -> Created | NotCreated:
        """A new session replacing the live session `replaces`, keeping its creation time and
        absolute deadline (and its lifetime: idle timeout, cookie kind), in one statement; then,
        for a user, the cap. `lifetime`: a new one, counted from the creation time kept."""
        data = self._cipher.seal(plaintext, id_hash)
        async with self._connection(None) as conn:
            statement = self.sql.renew
            values = {"table_key": self.names.channel} if "table_key" in statement.names else {}
            number, principal = columns(user_id)
            args = statement.args(
                id_hash=id_hash,
                user_id=number,
                principal=principal,
                data=data,
                idle_timeout=self.idle_timeout,
                remember_idle_timeout=self.remember_idle_timeout,
                **_lifetime_values(lifetime),
                replaced=replaces,
                client_ip=client.ip,
                user_agent=client.user_agent,
                **values,
            )
            sent = time.monotonic()
            async with self._changing(conn, shards=True) as changed:
                if self.citus and user_id is not None:
                    await self._user_lock(conn, user_id, shared=True)  # inside RENEW_SQL elsewhere
                record = await conn.fetchrow(statement.sql, *args)
                if record is not None:
                    changed.append(f"{replaces.hex()}:{record['replaced_version']}")
            return await self._with_cap(conn, id_hash, plaintext, user_id, record, sent)

    async def _with_cap(
        self,
        conn: Connection,
        id_hash: bytes,
        plaintext: bytes,
        user_id: UserId | None,
        record: asyncpg.Record | None,
        sent: float,
    ) -> Created | NotCreated:
        if record is None:
            return NotCreated.REPLACED_OR_ENDED
        ended: tuple[bytes, ...] = ()
        if user_id is not None and self.max_sessions_per_user is not None:
            ended = await self._trim(conn, user_id, self.max_sessions_per_user)
        return Created(self._written(id_hash, record, plaintext, sent), ended)

    async def _trim(self, conn: Connection, user_id: UserId, keep: int) -> tuple[bytes, ...]:
        """TRIM_SQL. Its rows are locked in id_hash order, but a statement that locks one of them
        otherwise (a cascade from the app's own tables, a hand-written DELETE) can still form a
        cycle with it: PostgreSQL then rolls one back, and the trim, which changes nothing else,
        is simply tried again."""
        trim = self.sql.trim_principal if isinstance(user_id, str) else self.sql.trim
        args = trim.args(**_owner(user_id), max_sessions=keep)
        for attempt in range(3):
            try:
                async with self._changing(conn, shards=True) as changed:
                    if self.citus:
                        await self._user_lock(conn, user_id)  # instead of locking the rows in order
                    ended = tuple(record["id_hash"] for record in await conn.fetch(trim.sql, *args))
                    changed.extend(id_hash.hex() for id_hash in ended)
                return ended
            except asyncpg.exceptions.TransactionRollbackError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def save(
        self,
        id_hash: bytes,
        plaintext: bytes,
        *,
        user_id: UserId | None,
        version: int,
        durable: bool,
        rebase: Callable[[bytes], tuple[bytes, UserId | None]],
        lifetime: Lifetime | None = None,
    ) -> Row | NotSaved:
        """Write `plaintext` over the row if it is still at `version`. If someone saved since,
        `rebase(latest)` re-applies this request's changes to the latest data (returning it and
        its user_id), under the row's lock, for the length of one merge. `durable`: wait for the
        flush even with durable_writes=False (a merge decides for itself: a change of user_id
        ends something). `lifetime`: the session's new one (its max_age changed), counted from
        its creation; None: it keeps its own."""
        async with self._connection(None) as conn:
            sent = time.monotonic()
            async with self._changing(conn) as changed:
                record = await self._write(
                    conn, id_hash, plaintext, user_id, version, durable=durable, changed=changed, lifetime=lifetime
                )
            if record is None:
                return await self._merge(conn, id_hash, rebase, lifetime)
        return self._written(id_hash, record, plaintext, sent)

    async def _merge(
        self,
        conn: Connection,
        id_hash: bytes,
        rebase: Callable[[bytes], tuple[bytes, UserId | None]],
        lifetime: Lifetime | None,
    ) -> Row | NotSaved:
        sent = time.monotonic()
        async with self._changing(conn, transaction=True) as changed:
            latest = await conn.fetchrow(self.sql.lock.sql, id_hash)
            if latest is None:
                return NotSaved.ENDED
            opened = self._cipher.open(latest["data"], id_hash)
            if opened is None:
                # Re-written under a key this process does not have (a rotation rolling out):
                # leave it alone rather than replace data we cannot read.
                return NotSaved.UNKNOWN_KEY
            plaintext, user_id = rebase(opened[0])
            # A change of user ends something: durable. 7 and "7" are two users.
            durable = columns(user_id) != (latest["user_id"], latest["principal"])
            record = await self._write(
                conn,
                id_hash,
                plaintext,
                user_id,
                latest["version"],
                durable=durable,
                changed=changed,
                lifetime=lifetime,
            )
        return NotSaved.ENDED if record is None else self._written(id_hash, record, plaintext, sent)

    async def _write(
        self,
        conn: Connection,
        id_hash: bytes,
        plaintext: bytes,
        user_id: UserId | None,
        version: int,
        *,
        durable: bool,
        changed: list[str],
        lifetime: Lifetime | None = None,
    ) -> asyncpg.Record | None:
        statement = self.sql.save if durable else self.sql.save_async
        number, principal = columns(user_id)
        args = statement.args(
            id_hash=id_hash,
            data=self._cipher.seal(plaintext, id_hash),
            user_id=number,
            principal=principal,
            idle_timeout=self.idle_timeout,
            remember_idle_timeout=self.remember_idle_timeout,
            **_lifetime_values(lifetime),
            version=version,
        )
        record: asyncpg.Record | None = await conn.fetchrow(statement.sql, *args)
        if record is not None:
            changed.append(f"{id_hash.hex()}:{record['version']}")
        return record

    async def end(self, id_hash: bytes) -> bool:
        """Delete the session (a logout). False when it was not live, or a tombstone (whose
        cookie a login used)."""
        async with self._connection(None) as conn, self._changing(conn) as changed:
            ended = bool(await conn.fetchval(self.sql.end.sql, id_hash))
            if ended:
                changed.append(id_hash.hex())
        return ended

    # -- one user's sessions ---------------------------------------------------------------

    async def list_user(self, user_id: UserId, *, limit: int, conn: Connection | None = None) -> list[SessionInfo]:
        """The user's live sessions, most recently active first, at most `limit`."""
        statement = self.sql.list_principal if isinstance(user_id, str) else self.sql.list_user
        async with self._connection(conn) as c:
            records = await c.fetch(statement.sql, *statement.args(**_owner(user_id), limit=limit))
        return [
            SessionInfo(handle_of(r["id_hash"]), r["created_at"], r["last_seen_at"], r["client_ip"], r["user_agent"])
            for r in records
        ]

    async def end_by_handle(self, user_id: UserId, handle: str, *, conn: Connection | None = None) -> tuple[bytes, ...]:
        """End the user's live session named `handle`: its ID hash, or nothing for another
        user's handle, a malformed one, or one already ended."""
        prefix = handle_prefix(handle)
        if prefix is None:
            return ()
        statement = self.sql.end_by_handle_principal if isinstance(user_id, str) else self.sql.end_by_handle
        async with self._connection(conn) as c, self._changing(c, shards=True) as changed:
            records = await c.fetch(statement.sql, *statement.args(**_owner(user_id), handle=prefix))
            changed.extend(r["id_hash"].hex() for r in records)
        return tuple(r["id_hash"] for r in records)

    async def end_user(
        self, user_id: UserId, *, keep: bytes | None = None, conn: Connection | None = None
    ) -> tuple[bytes, ...]:
        """End every live session of the user but `keep`, under the user's lock (a renewal in
        flight is ended too, or finds its session gone): the ID hashes ended."""
        async with self._connection(conn) as c, self._changing(c, transaction=True, shards=True) as changed:
            await self._user_lock(c, user_id)
            end = self.sql.end_principal if isinstance(user_id, str) else self.sql.end_user
            records = await c.fetch(end.sql, *end.args(**_owner(user_id), keep_id_hash=keep))
            changed.extend(r["id_hash"].hex() for r in records)
        return tuple(r["id_hash"] for r in records)

    # -- the table -------------------------------------------------------------------------

    async def sweep_forever(
        self,
        *,
        interval: float,
        batch_size: int,
        timeout: float,
        swept: Callable[[int, float], None] | None = None,
    ) -> None:
        """sweeper.sweep_forever on this table: a pass every `interval` seconds until cancelled;
        `swept(rows, seconds)` after each pass that ran."""
        await sweep_forever(
            self.pool,
            self.names,
            interval=interval,
            batch_size=batch_size,
            timeout=timeout,
            citus=self.citus,
            swept=swept,
        )

    async def count_live(self, *, timeout: float) -> int:
        """The live sessions in the table (a count: for a periodic sample, never per request)."""
        async with self.pool.acquire(timeout=timeout) as conn:
            count: int = await conn.fetchval(COUNT_LIVE_SQL.format(table=self.names.qualified), timeout=timeout)
        return count

    async def sweep(self, *, batch_size: int, timeout: float) -> int | None:
        """Delete expired rows (sweeper.sweep): the number deleted, None when another process
        is sweeping."""
        return await sweep(
            self.pool,
            table=self.names.table,
            schema=self.names.schema,
            batch_size=batch_size,
            timeout=timeout,
            citus=self.citus,  # None: the sweep finds out for itself
        )

    def _row(
        self,
        id_hash: bytes,
        record: asyncpg.Record,
        plaintext: bytes,
        current_key: bool,
        *,
        sent: float,
        now: float,
        memo: bool,
    ) -> Row:
        """The row of `record`, read by a statement sent at `sent` (monotonic) whose now() was
        `now`; `memo`: remember its touch time (on this process's monotonic clock)."""
        row = Row(
            plaintext,
            record["version"],
            record["created"],
            record["idle_deadline"],
            record["absolute_deadline"],
            record["last_seen"],
            now - sent,
            current_key,
            record["browser_session"],
            record["lifetime"],
        )
        if memo:
            self._touch_times[id_hash] = row.local(row.touched_at)
        return row

    def _written(self, id_hash: bytes, record: asyncpg.Record, plaintext: bytes, sent: float) -> Row:
        """The row a write left: its touch is the statement's now()."""
        self._writable()
        return self._row(id_hash, record, plaintext, True, sent=sent, now=record["last_seen"], memo=True)


def _lifetime_values(lifetime: Lifetime | None) -> dict[str, object]:
    """RENEW_SQL's and SAVE_SQL's lifetime parameters: a new lifetime, or the row's kept."""
    if lifetime is None:
        return _KEEP
    return {"lifetime": lifetime.seconds, **lifetime.values()}


class _Nothing:
    """`_changing` on one PostgreSQL, no transaction: payloads dropped (the triggers notify)."""

    async def __aenter__(self) -> list[str]:
        return []

    async def __aexit__(self, *exc: object) -> None:
        return None


_NOTHING = _Nothing()


class _Transaction:
    """`_changing` on one PostgreSQL, in a transaction: payloads dropped (the triggers notify)."""

    def __init__(self, conn: Connection) -> None:
        self._transaction = conn.transaction()

    async def __aenter__(self) -> list[str]:
        await self._transaction.__aenter__()
        return []

    async def __aexit__(self, *exc: Any) -> None:
        await self._transaction.__aexit__(*exc)


class _NotifyingAfter:
    """`_changing` on Citus for a statement of one row: its notifications once it has run."""

    def __init__(self, conn: Connection, sql: Statements, channel: str) -> None:
        self._conn = conn
        self._sql = sql
        self._channel = channel
        self._changed: list[str] = []

    async def __aenter__(self) -> list[str]:
        return self._changed

    async def __aexit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is None and self._changed:
            notify = self._sql.notify
            await self._conn.execute(notify.sql, *notify.args(channel=self._channel, payloads=self._changed))


class _Notifying:
    """`_changing` on Citus: a transaction that notifies what its statements changed, last.

    Two things Citus's two-phase commit (a transaction that wrote on several workers, `shards`)
    needs besides. The coordinator commits first and then each worker (COMMIT PREPARED): a
    listener woken meanwhile could read the row as it was and cache it, so the notifications are
    sent again once the commit has returned. And a worker that fails between the two is only a
    WARNING (the rows there stay as they were until Citus's recovery, a minute later by
    default): then the transactions are recovered at once, and if that fails the operation is
    Unavailable, not acknowledged.
    """

    def __init__(self, conn: Connection, sql: Statements, channel: str, *, shards: bool) -> None:
        self._transaction = conn.transaction()
        self._conn = conn
        self._sql = sql
        self._channel = channel
        self._shards = shards
        self._changed: list[str] = []

    async def __aenter__(self) -> list[str]:
        await self._transaction.start()
        return self._changed

    async def __aexit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None:
            await self._transaction.rollback()
            return
        try:
            if self._changed:
                await self._notify()
        except BaseException:
            await self._transaction.rollback()
            raise
        lost: list[str] = []

        def warned(_conn: object, message: asyncpg.PostgresLogMessage) -> None:
            if "failed to commit transaction" in (message.message or ""):
                lost.append(message.message)

        self._conn.add_log_listener(warned)
        try:
            await self._transaction.commit()
            await asyncio.sleep(0)  # asyncpg hands log messages over in a callback of their own
        finally:
            self._conn.remove_log_listener(warned)
        nested = self._conn.is_in_transaction()  # a savepoint in the caller's transaction
        if lost and not nested:
            log.warning("a worker did not commit its part (%s): recovering it now", lost[0])
            try:
                await self._conn.execute(RECOVER_SQL)
            except asyncpg.PostgresError as error:
                raise Unavailable("a Citus worker missed a commit that could not be recovered yet") from error
        if self._shards and self._changed and not nested:
            await self._notify()  # every worker has committed by now: a load reads what changed

    async def _notify(self) -> None:
        notify = self._sql.notify
        await self._conn.execute(notify.sql, *notify.args(channel=self._channel, payloads=self._changed))


# Citus: commit or roll back at once what a worker left prepared (its part of a two-phase commit).
RECOVER_SQL = "SELECT recover_prepared_transactions()"
