"""PostgresStorage: aiohttp-session storage that keeps sessions in a PostgreSQL table.

The cookie carries only a signed opaque token (tokens.py). The row, keyed by the token's
SHA-256, holds the data encrypted (cipher.py) and the deadlines, which PostgreSQL's clock
enforces in the same statement that loads the row. A read-only request costs one statement and
writes nothing, except to slide the idle deadline at most once per `touch_interval`. Saves are
optimistic (a version column): two requests of one session that change different keys both
survive, and a session ended meanwhile stays ended.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp_session
import asyncpg
import orjson
from aiohttp import hdrs, web
from aiohttp_session import AbstractStorage, Session

from . import events
from .background import CleanupContext, while_running
from .cache import Entry, SessionCache
from .cipher import DataCipher
from .deadline import FairPool
from .request_data import MAX_CANDIDATES, MAX_IP_CHARS, MAX_USER_AGENT_CHARS, MAX_VALUES, cookie_values, valid_text
from .schema import TOMBSTONE_SECONDS, TableNames
from .session import PostgresSession, check_json_value
from .sweeper import sweep, sweep_forever
from .tokens import TokenSigner, VerifiedToken
from .user_sessions import END_ALL_SQL, END_ONE_SQL, END_OTHERS_SQL, LIST_SQL, SessionInfo, handle_prefix, info_of

if TYPE_CHECKING:
    from ._types import Connection

log = logging.getLogger("aiohttp_session_postgres")

# Session IDs remembered per process, dead ones and touch times (32 bytes and a dict slot each:
# about 2 MB).
_MAX_DEAD = 10_000

# The ID hash of the session the request's cookie named, once loaded.
_LOADED = web.RequestKey("aiohttp_session_postgres.loaded", bytes)

# One statement per read: load the live row and, only when the last touch is older than the
# touch interval, slide its idle deadline (never past the absolute one) and note the client.
# Inside the interval the UPDATE matches no row, and so writes nothing. The UPDATE re-checks the
# row itself: if a login or renewal used the session up after `live` read it (this UPDATE then
# waited on its lock), it meets the changed row, a tombstone, and must not slide it back to life;
# and against the clock (clock_timestamp(), not now(): the transaction's start, before any wait).
# `s.id_hash = $1` as well as the join: a constant lets a partitioned table be pruned to one
# partition when the statement is planned.
LOAD_SQL = """
WITH live AS (
    SELECT id_hash, data, version, created_at, idle_expires_at, absolute_expires_at, last_seen_at,
           last_seen_at <= now() - make_interval(secs => $3) AS due
    FROM {table}
    WHERE id_hash = $1 AND idle_expires_at > now() AND absolute_expires_at > now()
), touched AS (
    UPDATE {table} AS s
    SET last_seen_at = now(),
        idle_expires_at = least(now() + make_interval(secs => $2), s.absolute_expires_at),
        client_ip = $4, user_agent = $5
    FROM live
    WHERE s.id_hash = $1 AND s.id_hash = live.id_hash AND live.due AND s.replaced_at IS NULL
      AND s.idle_expires_at > clock_timestamp() AND s.absolute_expires_at > clock_timestamp() {async_commit}
)
SELECT data, version,
       extract(epoch FROM created_at)::bigint AS created,
       extract(epoch FROM CASE WHEN due THEN least(now() + make_interval(secs => $2), absolute_expires_at)
                               ELSE idle_expires_at END)::float8 AS idle_deadline,
       extract(epoch FROM absolute_expires_at)::float8 AS absolute_deadline,
       extract(epoch FROM CASE WHEN due THEN now() ELSE last_seen_at END)::float8 AS last_seen
FROM live
"""

# The same read when this process knows the row was touched less than a touch interval ago (it
# did so itself): nothing to slide, so no UPDATE to plan and no client details to send.
READ_SQL = """
SELECT data, version,
       extract(epoch FROM created_at)::bigint AS created,
       extract(epoch FROM idle_expires_at)::float8 AS idle_deadline,
       extract(epoch FROM absolute_expires_at)::float8 AS absolute_deadline,
       extract(epoch FROM last_seen_at)::float8 AS last_seen
FROM {table}
WHERE id_hash = $1 AND idle_expires_at > now() AND absolute_expires_at > now()
"""

# A login: the new session uses up the one the request came with ($6, any validly signed cookie,
# live or not, known or not), in the same statement. That session's row becomes a tombstone (no
# data, expired; a row is made for an unknown one), so its ID is dead at once (no fixation), and
# a second login from the same cookie within TOMBSTONE_SECONDS ($9) creates nothing: at most one
# live session results from one pre-login session, however many times the form is submitted.
CREATE_SQL = """
WITH used AS (
    INSERT INTO {table} AS s (id_hash, data, idle_expires_at, absolute_expires_at, replaced_at)
    SELECT $6, '\\x'::bytea, now(), now(), now() WHERE $6::bytea IS NOT NULL
    ON CONFLICT (id_hash) DO UPDATE
        SET data = '\\x'::bytea, user_id = NULL, version = s.version + 1, replaced_at = now(),
            idle_expires_at = least(now(), s.absolute_expires_at)
        WHERE s.replaced_at IS NULL OR s.replaced_at <= now() - make_interval(secs => $9)
    RETURNING 1
)
INSERT INTO {table} (id_hash, user_id, data, idle_expires_at, absolute_expires_at, client_ip, user_agent)
SELECT $1, $2, $3, now() + make_interval(secs => $4), now() + make_interval(secs => $5), $7, $8
WHERE ($6::bytea IS NULL OR EXISTS (SELECT FROM used)) {async_commit}
RETURNING extract(epoch FROM absolute_expires_at)::float8 AS absolute_deadline
"""

# renew_session: the same, for a live session only ($5), keeping its creation time and absolute
# deadline. Of two concurrent renewals one wins; the other, and a renewal of a session that ended
# meanwhile, creates nothing. A renewal of a user's session holds that user's lock (USER_LOCK_SQL)
# shared, taken before the row's: "end all of a user's sessions" takes it exclusively first, so a
# renewal in flight is either done before that statement looks (its new row is then ended too)
# or finds the old row gone; without it, the new row was made where that statement never looked.
RENEW_SQL = """
WITH used AS (
    UPDATE {table}
    SET data = '\\x'::bytea, user_id = NULL, version = version + 1, replaced_at = now(), idle_expires_at = now()
    WHERE id_hash = $5 AND replaced_at IS NULL AND idle_expires_at > now() AND absolute_expires_at > now()
        AND ($2::bigint IS NULL OR pg_advisory_xact_lock_shared(hashtextextended($8, $2)) IS NOT NULL)
    RETURNING created_at, absolute_expires_at
)
INSERT INTO {table} (id_hash, user_id, data, created_at, idle_expires_at, absolute_expires_at, client_ip, user_agent)
SELECT $1, $2, $3, u.created_at, least(now() + make_interval(secs => $4), u.absolute_expires_at),
       u.absolute_expires_at, $6, $7
FROM used AS u
RETURNING extract(epoch FROM absolute_expires_at)::float8 AS absolute_deadline
"""

# max_sessions_per_user: after a login, end the user's least recently used live sessions beyond
# the cap. A statement of its own, after the login's commit: of concurrent logins, the last to
# trim sees every one committed before it, so once they are all answered the cap holds. The rows
# are locked in one order (id_hash, as every statement that ends several of a user's sessions
# does): concurrent trims then queue for each other instead of deadlocking.
TRIM_SQL = """
DELETE FROM {table}
WHERE id_hash IN (
    SELECT id_hash FROM {table}
    WHERE id_hash IN (
        SELECT id_hash FROM {table}
        WHERE user_id = $1 AND idle_expires_at > now() AND absolute_expires_at > now()
        ORDER BY last_seen_at DESC, created_at DESC
        OFFSET $2
    ) AND idle_expires_at > now() AND absolute_expires_at > now()
    ORDER BY id_hash
    FOR UPDATE
)
RETURNING id_hash
"""

# Optimistic: only if nobody saved since we loaded. Never an upsert: an ended session stays ended.
# Expiry against the clock, not now() (the transaction's start: a merge may have waited for the
# row's lock past the deadline).
UPDATE_SQL = """
UPDATE {table}
SET data = $2, user_id = $3, version = version + 1, last_seen_at = now(),
    idle_expires_at = least(now() + make_interval(secs => $4), absolute_expires_at)
WHERE id_hash = $1 AND version = $5
    AND idle_expires_at > clock_timestamp() AND absolute_expires_at > clock_timestamp() {async_commit}
RETURNING version
"""

# After a version conflict: lock the row for the length of one merge (never across a handler).
LOCK_SQL = """
SELECT data, version FROM {table}
WHERE id_hash = $1 AND idle_expires_at > clock_timestamp() AND absolute_expires_at > clock_timestamp()
FOR UPDATE
"""

# Taken by what ends all of a user's sessions (or all but one), for its transaction, before it
# looks: renewals of that user's sessions (RENEW_SQL) wait, or are waited for.
USER_LOCK_SQL = "SELECT pg_advisory_xact_lock(hashtextextended($1, $2))"

# Logout. A tombstone stays (its cookie was used by a login, whose cookie the browser now has).
END_SQL = "DELETE FROM {table} WHERE id_hash = $1 AND replaced_at IS NULL RETURNING 1"


# durable_writes=False: the statement's own transaction commits without waiting for the WAL
# flush (synchronous_commit is a per-transaction setting; set_config(..., true) sets it for this
# one only). Only on writes that end nothing: see PostgresStorage's docstring.
ASYNC_COMMIT = "AND set_config('synchronous_commit', 'off', true) IS NOT NULL"


class _Statements:
    """Every statement, with the table's name filled in once; `*_async` variants commit without
    waiting for the flush when the storage was made with durable_writes=False (else they are the
    same statements)."""

    def __init__(self, names: TableNames, *, durable_writes: bool) -> None:
        table = names.qualified
        async_commit = "" if durable_writes else ASYNC_COMMIT
        self.load = LOAD_SQL.format(table=table, async_commit=async_commit)
        self.read = READ_SQL.format(table=table)
        self.create = CREATE_SQL.format(table=table, async_commit="")
        self.create_async = CREATE_SQL.format(table=table, async_commit=async_commit)
        self.renew = RENEW_SQL.format(table=table)
        self.trim = TRIM_SQL.format(table=table)
        self.update = UPDATE_SQL.format(table=table, async_commit="")
        self.update_async = UPDATE_SQL.format(table=table, async_commit=async_commit)
        self.lock = LOCK_SQL.format(table=table)
        self.end = END_SQL.format(table=table)
        self.list = LIST_SQL.format(table=table)
        self.end_one = END_ONE_SQL.format(table=table)
        self.end_others = END_OTHERS_SQL.format(table=table)
        self.end_all = END_ALL_SQL.format(table=table)
        self.user_lock = USER_LOCK_SQL


class PostgresStorage(AbstractStorage):
    """aiohttp-session storage keeping each session in a PostgreSQL row; the cookie carries only
    a signed, opaque token (`<token>.<signature>`, 87 characters).

        aiohttp_session.setup(app, PostgresStorage(pool, authentication_keys=[...], encryption_keys=[...]))

    pool: an asyncpg pool on a database that has the sessions table (schema.py: the SQL,
        create_schema(), or the Alembic branch). Size it explicitly (min_size <= max_size).
    authentication_keys: keys that sign the cookie (HMAC-SHA256), newest first: the first signs,
        every one verifies. Each at least 32 bytes. Raises ValueError otherwise.
    encryption_keys: keys that encrypt session data at rest (AES-GCM), newest first: the first
        encrypts, every one decrypts. Each exactly 16, 24 or 32 bytes. Raises ValueError otherwise.
        A session read under an old key of either list is rewritten under the newest on that
        request, so keys rotate without logging anyone out.
    idle_timeout: seconds without a request that end a session (OWASP: 15-30 minutes).
    absolute_timeout: seconds after creation that end a session however active; also the
        cookie's Max-Age (OWASP: 4-8 hours for most apps).
    touch_interval: a read slides the idle deadline at most this often (seconds), so most reads
        write nothing; a session may end after idle_timeout - touch_interval seconds without
        requests. Needs 0 <= touch_interval < idle_timeout <= absolute_timeout (ValueError).
    cookie_name: the cookie's name; "__Host-" is put in front of it when the cookie is Secure (it
        then has Path=/ and no Domain: RFC 6265bis), and never read without it.
    secure: None (the default): the cookie is Secure when `request.secure` (the request came over
        HTTPS; behind a TLS-terminating proxy, make aiohttp see the forwarded scheme, e.g. with
        aiohttp-remotes). True: always Secure; False: never (plain-HTTP development only).
    database_timeout: seconds one database operation may take (pool wait, connect, statements)
        before the request answers 503 (DatabaseUnavailable).
    user_id_key: the session key whose integer value is mirrored into the user_id column, so a
        user's sessions can be listed and ended (list_sessions, end_all_sessions, ...).
    table, schema: where the sessions live (defaults "sessions" in "public"): plain identifiers.
    max_sessions_per_user: at most this many live sessions per user_id; a login beyond it ends
        that user's least recently used sessions (as Spring Security's maximumSessions). None:
        no cap.
    cache: a SessionCache to serve repeated reads from memory; run its listener with
        `app.cleanup_ctx.append(storage.cache_listener(connect))`. None: every read asks the
        database.
    durable_writes: True (the default): every write is answered only once PostgreSQL has
        flushed it to its write-ahead log (the server's synchronous_commit applies). False: the
        writes that end nothing are answered before the flush (synchronous_commit = off for
        their transaction alone), which saves a disk flush per write: a new session that
        replaces none, a data change that keeps the user_id, the touch. A PostgreSQL crash (not
        a clean restart) may then lose those of its last moments (up to 3 x wal_writer_delay,
        0.6 s by default): such a session is gone (its user signs in again), such a data change
        reverts, a touch is undone. Everything that ends or replaces a session still waits for
        the flush, and so survives any crash: a logout, a revocation, the per-user cap, a login
        or renewal that uses up a session, a data change that changes or removes the user_id;
        PostgreSQL's log being one sequence, that flush also makes every earlier write durable.
        So with False, never take a right away by changing session data (a role, an MFA flag):
        end or renew the session instead.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        authentication_keys: Sequence[bytes],
        encryption_keys: Sequence[bytes],
        idle_timeout: int = 1800,
        absolute_timeout: int = 43200,
        touch_interval: int = 60,
        cookie_name: str = "session",
        secure: bool | None = None,
        database_timeout: float = 1.5,
        user_id_key: str = "user_id",
        table: str = "sessions",
        schema: str = "public",
        max_sessions_per_user: int | None = None,
        cache: SessionCache | None = None,
        durable_writes: bool = True,
    ) -> None:
        if not 0 <= touch_interval < idle_timeout <= absolute_timeout:
            raise ValueError("need 0 <= touch_interval < idle_timeout <= absolute_timeout")
        if database_timeout <= 0:
            raise ValueError("database_timeout must be positive")
        if max_sessions_per_user is not None and max_sessions_per_user < 1:
            raise ValueError("max_sessions_per_user must be at least 1 (or None)")
        super().__init__(cookie_name=cookie_name, max_age=absolute_timeout, httponly=True, samesite="Lax")
        self._pool = pool
        self._fair = FairPool(pool)
        self._signer = TokenSigner(tuple(authentication_keys))
        self._cipher = DataCipher(tuple(encryption_keys))
        self._idle = float(idle_timeout)
        self._absolute = float(absolute_timeout)
        self._touch = float(touch_interval)
        self._db_timeout = database_timeout
        self._user_id_key = user_id_key
        self._names = TableNames(table, schema)
        self._sql = _Statements(self._names, durable_writes=durable_writes)
        self._max_per_user = max_sessions_per_user
        self._cache = cache
        self._secure = secure
        # ID hashes this process found dead (unknown, expired, used up): an ID never comes back
        # to life, so a browser that keeps sending a dead cookie (it is never expired for it: see
        # _expire_cookie) costs a lookup and a log line once, not on every request.
        self._dead: OrderedDict[bytes, None] = OrderedDict()
        # When each session was last touched (the database's clock, epoch seconds), as this
        # process last learned it: within the touch interval a read needs no touch (READ_SQL).
        self._touched: dict[bytes, float] = {}

    # -- cookie ----------------------------------------------------------------------------

    def _is_secure(self, request: web.BaseRequest) -> bool:
        return request.secure if self._secure is None else self._secure

    def _cookie_name_for(self, request: web.BaseRequest) -> str:
        # __Host- pins the cookie to this host, HTTPS and Path=/; browsers refuse it without Secure.
        return f"__Host-{self.cookie_name}" if self._is_secure(request) else self.cookie_name

    def load_cookie(self, request: web.Request) -> str | None:
        """The first value of the request's session cookie (aiohttp-session's API); the storage
        itself considers every cookie of that name (`_candidates`)."""
        values = cookie_values(request.headers.get(hdrs.COOKIE), self._cookie_name_for(request))
        return values[0] if values else None

    def _candidates(self, request: web.Request) -> list[tuple[str, VerifiedToken]]:
        """Every cookie of our name whose signature verifies, in the order sent (at most
        MAX_CANDIDATES). A cookie that does not verify (another app's, a tampered one) is passed
        over: it neither ends the session nor is ever expired by us."""
        found, bad = [], 0
        values = cookie_values(request.headers.get(hdrs.COOKIE), self._cookie_name_for(request))
        for value in values[:MAX_VALUES]:
            verified = self._signer.verify(value)
            if verified is None:
                bad += 1
                continue
            found.append((value, verified))
            if len(found) == MAX_CANDIDATES:
                break
        if bad:  # one line per request, however many cookies it sent
            events.emit("session.bad_signature", cookies=bad)
        return found

    def _request_session(self, request: web.Request) -> bytes | None:
        """The ID hash of the session the request came with: the one loaded, else the first
        validly signed cookie (live or not)."""
        loaded: bytes | None = request.get(_LOADED)
        if loaded is not None:
            return loaded
        candidates = self._candidates(request)
        return candidates[0][1].id_hash if candidates else None

    def _set_cookie(self, request: web.Request, response: web.StreamResponse, value: str, max_age: int) -> None:
        response.set_cookie(
            self._cookie_name_for(request),
            value,
            max_age=max(max_age, 0),
            path="/",
            secure=self._is_secure(request) or None,
            httponly=True,
            samesite="Lax",
        )

    def _expire_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        # Only for a session this very request ended: a browser may already hold a newer cookie
        # (a login from another tab) that an expiry sent for an older one would delete.
        # Same attributes as when set: browsers ignore a deletion of a __Host- cookie without them.
        response.del_cookie(
            self._cookie_name_for(request),
            path="/",
            secure=self._is_secure(request) or None,
            httponly=True,
            samesite="Lax",
        )

    # -- aiohttp-session API ---------------------------------------------------------------

    async def new_session(self) -> PostgresSession:
        return PostgresSession(user_id_key=self._user_id_key)

    async def load_session(self, request: web.Request) -> PostgresSession:
        """The live session the request's cookie names, or a new empty one. A cookie that names no
        live session is left alone (never expired: the browser may have replaced it already)."""
        for cookie, verified in self._candidates(request):
            session = await self._load(request, cookie, verified)
            if session is not None:
                request[_LOADED] = verified.id_hash
                return session
        return await self.new_session()

    async def _load(self, request: web.Request, cookie: str, verified: VerifiedToken) -> PostgresSession | None:
        id_hash = verified.id_hash
        if id_hash in self._dead:
            return None
        cache = self._cache
        if cache is not None:
            now = time.time()
            entry = cache.get(id_hash, now)
            # A hit asks no database, until this process's touch interval for the row runs out.
            if entry is not None and now - entry.touched_at < self._touch and verified.current_key:
                return self._loaded(id_hash, entry.plaintext, entry.created, entry.version, entry.absolute_deadline)
            generation = cache.generation
        touched = self._touched.get(id_hash)
        async with self.connection() as conn:
            if touched is not None and time.time() - touched < self._touch:
                row = await conn.fetchrow(self._sql.read, id_hash)
            else:
                row = await conn.fetchrow(self._sql.load, id_hash, self._idle, self._touch, *_client(request))
        if row is None:
            events.emit("session.expired_or_unknown", id_hash)
            self._remember_dead(id_hash)
            return None
        opened = self._cipher.open(row["data"], id_hash)
        if opened is None:
            events.emit("session.undecryptable", id_hash)
            self._remember_dead(id_hash)
            return None
        plaintext, current_data_key = opened
        self._note_touch(id_hash, row["last_seen"])
        session = self._loaded(id_hash, plaintext, row["created"], row["version"], row["absolute_deadline"])
        if not (current_data_key and verified.current_key):
            # Read under an old key: save it again now, re-encrypted and re-signed.
            session.needs_rewrite = True
            if not verified.current_key:
                session.resigned_cookie = self._signer.resign(cookie)
        elif cache is not None:
            cache.put(
                id_hash,
                Entry(
                    plaintext,
                    row["version"],
                    row["created"],
                    row["idle_deadline"],
                    row["absolute_deadline"],
                    touched_at=row["last_seen"],
                    cached_at=time.monotonic(),
                ),
                generation=generation,
            )
        return session

    def _note_touch(self, id_hash: bytes, last_seen: float) -> None:
        if id_hash not in self._touched and len(self._touched) >= _MAX_DEAD:
            del self._touched[next(iter(self._touched))]  # the oldest insertion
        self._touched[id_hash] = last_seen

    def _remember_dead(self, id_hash: bytes) -> None:
        self._dead[id_hash] = None
        if len(self._dead) > _MAX_DEAD:
            self._dead.popitem(last=False)

    def _loaded(
        self, id_hash: bytes, plaintext: bytes, created: int, version: int, absolute_deadline: float
    ) -> PostgresSession:
        return PostgresSession(
            id_hash=id_hash,
            data=orjson.loads(plaintext),
            snapshot=orjson.loads(plaintext),  # a second decode is the cheapest deep copy
            created=created,
            version=version,
            absolute_deadline=absolute_deadline,
            user_id_key=self._user_id_key,
        )

    async def save_session(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        if not isinstance(session, PostgresSession):
            raise TypeError("PostgresStorage saves only the sessions it hands out")
        if session.empty:
            await self._end(request, response, session)
        elif session.id_hash is None:
            await self._create(request, response, session)
        else:
            await self._update(request, response, session)

    # -- writes ----------------------------------------------------------------------------

    async def _create(self, request: web.Request, response: web.StreamResponse, session: PostgresSession) -> None:
        renewing = session.renews is not None
        replaced = session.renews if renewing else self._request_session(request)
        cookie, id_hash = self._signer.new()
        mapping = dict(session)
        plaintext = _encode(mapping)
        user_id = self._user_id(mapping)
        sealed = self._cipher.seal(plaintext, id_hash)
        client = _client(request)
        generation = self._generation()
        args: tuple[object, ...]
        if renewing:
            sql, args = self._sql.renew, (id_hash, user_id, sealed, self._idle, replaced, *client, self._names.channel)
        else:
            # A session that uses up another (a login from a pre-login session) ends that one;
            # one created under a precondition (a check that grants it) must not outlive a crash
            # that the check's subject (a disabled account, say) survives: both durable.
            durable = replaced is not None or session.precondition is not None
            sql = self._sql.create if durable else self._sql.create_async
            args = (id_hash, user_id, sealed, self._idle, self._absolute, replaced, *client, TOMBSTONE_SECONDS)
        trimmed: list[bytes] = []
        async with self.connection() as conn:
            if session.precondition is None:
                absolute_deadline = await conn.fetchval(sql, *args)
            else:
                # The check and the write in one transaction: what the check reads (and locks,
                # FOR SHARE) cannot change before the session exists.
                check, otherwise = session.precondition
                async with conn.transaction():
                    if not await check(conn):
                        events.emit("session.not_created", replaced, reason="precondition")
                        raise otherwise
                    absolute_deadline = await conn.fetchval(sql, *args)
            if absolute_deadline is not None and user_id is not None and self._max_per_user is not None:
                trimmed = await self._trim(conn, user_id, self._max_per_user)
        if replaced is not None and self._cache is not None:
            self._cache.evict(replaced)
        self._ended(trimmed, "session.ended", reason="max_sessions_per_user")
        if absolute_deadline is None:
            # The session it would replace was already used by another login or renewal (a
            # double submit, two tabs), or ended meanwhile: nothing is created, and the cookie is
            # left as it is (the browser may hold the winner's by now).
            events.emit("session.not_created", replaced, reason="replaced_or_ended")
            return
        session.id_hash = id_hash
        session.version = 1
        session.absolute_deadline = absolute_deadline
        self._set_cookie(request, response, cookie, math.ceil(absolute_deadline - time.time()))
        self._remember(id_hash, plaintext, session, generation)
        if renewing:
            events.emit("session.renewed", id_hash, previous=events.fingerprint(replaced))
        else:
            events.emit("session.created", id_hash, user_id=user_id if user_id is not None else "-")

    async def _trim(self, conn: Connection, user_id: int, keep: int) -> list[bytes]:
        """TRIM_SQL. Its rows are locked in id_hash order, but a statement that locks one of them
        otherwise (a cascade from the app's own tables, a hand-written DELETE) can still form a
        cycle with it: PostgreSQL then rolls one back, and the trim, which changes nothing else,
        is simply tried again."""
        for attempt in range(3):
            try:
                return [row["id_hash"] for row in await conn.fetch(self._sql.trim, user_id, keep)]
            except asyncpg.exceptions.TransactionRollbackError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def _update(self, request: web.Request, response: web.StreamResponse, session: PostgresSession) -> None:
        id_hash = session.id_hash
        assert id_hash is not None
        mapping = dict(session)
        plaintext: bytes | None = _encode(mapping)
        assert plaintext is not None
        generation = self._generation()
        async with self.connection() as conn:
            # A change of user_id (a logout by data, a switch of user) ends something: durable.
            durable = self._user_id(mapping) != self._user_id(session.loaded)
            version = await self._write(conn, id_hash, mapping, plaintext, session.version, durable=durable)
            if version is None:
                version, plaintext = await self._merge(conn, session)
        if version is None:
            # Ended while this request ran (logout in another tab): do not bring it back, and
            # leave the cookie alone (the browser may hold a newer one).
            if self._cache is not None:
                self._cache.evict(id_hash)
            events.emit("session.ended_during_request", id_hash)
            return
        session.version = version
        if plaintext is not None:  # None: a merge left newer data under a key we lack alone
            self._remember(id_hash, plaintext, session, generation)
        if session.resigned_cookie is not None and session.absolute_deadline is not None:
            max_age = math.ceil(session.absolute_deadline - time.time())
            self._set_cookie(request, response, session.resigned_cookie, max_age)
            session.resigned_cookie = None

    async def _merge(self, conn: Connection, session: PostgresSession) -> tuple[int | None, bytes | None]:
        """Someone saved since we loaded: re-apply only this request's changes to the latest data,
        holding the row lock for just this merge. (None, _) when the session is gone."""
        id_hash = session.id_hash
        assert id_hash is not None
        updated, deleted = session.changes()
        async with conn.transaction():
            row = await conn.fetchrow(self._sql.lock, id_hash)
            if row is None:
                return None, b""
            opened = self._cipher.open(row["data"], id_hash)
            if opened is None:
                # Re-written under a key this process does not have (a rotation rolling out):
                # leave it alone rather than replace data we cannot read.
                log.warning(
                    "session %s: newer data under an unknown key; this change is dropped", events.fingerprint(id_hash)
                )
                return row["version"], None
            latest: dict[str, Any] = orjson.loads(opened[0])
            previous_user_id = self._user_id(latest)
            for key in deleted:
                latest.pop(key, None)
            latest.update(updated)
            plaintext = _encode(latest)
            durable = self._user_id(latest) != previous_user_id
            return await self._write(conn, id_hash, latest, plaintext, row["version"], durable=durable), plaintext

    async def _write(
        self,
        conn: Connection,
        id_hash: bytes,
        mapping: dict[str, Any],
        plaintext: bytes,
        version: int,
        *,
        durable: bool,
    ) -> int | None:
        """UPDATE_SQL: the new version, or None if the row is gone or no longer at `version`.
        `durable`: wait for the flush even with durable_writes=False."""
        new_version: int | None = await conn.fetchval(
            self._sql.update if durable else self._sql.update_async,
            id_hash,
            self._cipher.seal(plaintext, id_hash),
            self._user_id(mapping),
            self._idle,
            version,
        )
        return new_version

    async def _end(self, request: web.Request, response: web.StreamResponse, session: PostgresSession) -> None:
        """Logout (an invalidated session). Expires the cookie only when this request ended a
        session, and only that session's: never one whose cookie a login already used."""
        id_hash = session.id_hash if session.id_hash is not None else self._request_session(request)
        if id_hash is None:
            return
        async with self.connection() as conn:
            ended = await conn.fetchval(self._sql.end, id_hash)
        if self._cache is not None:
            self._cache.evict(id_hash)
        if ended:
            events.emit("session.ended", id_hash)
            self._expire_cookie(request, response)

    # -- a user's sessions ------------------------------------------------------------------

    async def list_sessions(
        self, user_id: int, *, limit: int = 100, conn: Connection | None = None
    ) -> list[SessionInfo]:
        """The user's live sessions, most recently active first, at most `limit` of them.
        `conn`: run on this connection (inside the caller's transaction) instead of the pool.
        Raises DatabaseUnavailable."""
        async with self._connection(conn) as c:
            rows = await c.fetch(self._sql.list, user_id, limit)
        return [info_of(dict(row)) for row in rows]

    async def end_session(self, user_id: int, handle: str, *, conn: Connection | None = None) -> bool:
        """End the user's live session named `handle` (a SessionInfo.handle). False when the
        user has no such session: another user's handle, a malformed one, or one already ended.
        Raises DatabaseUnavailable."""
        prefix = handle_prefix(handle)
        if prefix is None:
            return False
        async with self._connection(conn) as c:
            ended = [row["id_hash"] for row in await c.fetch(self._sql.end_one, user_id, prefix)]
        self._ended(ended, "session.revoked")
        return bool(ended)

    async def end_other_sessions(self, user_id: int, keep: PostgresSession, *, conn: Connection | None = None) -> int:
        """End every session of the user but `keep` (the request's own session): "sign out
        everywhere else". The number ended. Raises DatabaseUnavailable."""
        if keep.id_hash is None:
            raise ValueError("keep must be a saved session (the request's own)")
        async with self._connection(conn) as c, c.transaction():
            await c.execute(self._sql.user_lock, self._names.channel, user_id)
            ended = [row["id_hash"] for row in await c.fetch(self._sql.end_others, user_id, keep.id_hash)]
        self._ended(ended, "session.revoked")
        return len(ended)

    async def end_all_sessions(self, user_id: int, *, conn: Connection | None = None) -> int:
        """End every session of the user (OWASP: after a password change or when disabling the
        account). The number ended. Pass `conn` to make it part of the caller's transaction (the
        password change itself). Raises DatabaseUnavailable."""
        async with self._connection(conn) as c, c.transaction():
            await c.execute(self._sql.user_lock, self._names.channel, user_id)
            ended = [row["id_hash"] for row in await c.fetch(self._sql.end_all, user_id)]
        self._ended(ended, "session.revoked")
        return len(ended)

    def _ended(self, id_hashes: Iterable[bytes], event: str, **fields: object) -> None:
        # This process's cache drops them at once; the others when the notification arrives.
        for id_hash in id_hashes:
            if self._cache is not None:
                self._cache.evict(id_hash)
            events.emit(event, id_hash, **fields)

    # -- database access and background work ---------------------------------------------

    def connection(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        """`async with storage.connection() as conn:` a connection from the storage's pool under
        the storage's deadline (database_timeout): for the app's own queries, which then answer
        503 (DatabaseUnavailable) on an outage, as the session's do. Connections are handed out
        in the order they were asked for (the pool's own order is not fair)."""
        return self._fair.connection(self._db_timeout)

    @contextlib.asynccontextmanager
    async def _connection(self, conn: Connection | None) -> AsyncIterator[Connection]:
        if conn is not None:
            yield conn
            return
        async with self.connection() as pooled:
            yield pooled

    async def sweep(self, *, batch_size: int = 1000, timeout: float = 10.0) -> int | None:
        """Delete expired sessions now, in transactions of `batch_size` rows, each statement
        bounded by `timeout` seconds. The number deleted, or None when another process is
        sweeping (a PostgreSQL advisory lock: one sweeper at a time across all processes)."""
        return await sweep(
            self._pool, table=self._names.table, schema=self._names.schema, batch_size=batch_size, timeout=timeout
        )

    def sweeper(self, *, interval: float = 300, batch_size: int = 1000, timeout: float = 10.0) -> CleanupContext:
        """For `app.cleanup_ctx.append(...)`: sweep every `interval` seconds (jittered +/-20%)
        while the app runs. Reads already refuse expired rows; sweeping reclaims their space."""
        return while_running(
            lambda: sweep_forever(self._pool, self._names, interval=interval, batch_size=batch_size, timeout=timeout)
        )

    def cache_listener(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> CleanupContext:
        """For `app.cleanup_ctx.append(...)`: keep the cache's LISTEN connection while the app
        runs. `connect()` opens a new connection outside the pool, for example
        `lambda: asyncpg.connect(dsn)` (not through PgBouncer's transaction pooling, which cannot
        carry LISTEN). Raises ValueError when the storage has no cache."""
        cache = self._cache
        if cache is None:
            raise ValueError("this storage was made without a cache")
        return while_running(lambda: cache.listen(connect, self._names.channel))

    def _generation(self) -> int:
        # `is not None`: an empty cache is falsy (it has a length).
        return self._cache.generation if self._cache is not None else 0

    def _remember(self, id_hash: bytes, plaintext: bytes | None, session: PostgresSession, generation: int) -> None:
        """Note what this process just wrote (it touched the row: last_seen_at = now()), and
        cache it (its own notification then leaves it alone)."""
        now = time.time()
        self._note_touch(id_hash, now)
        if self._cache is None or plaintext is None or session.absolute_deadline is None:
            return
        self._cache.put(
            id_hash,
            Entry(
                # A copy of the exact size: orjson's output keeps its 4 KB working buffer
                # (measured: 10,000 small sessions cached straight from it held 41 MB, copied 0.8).
                bytes(memoryview(plaintext)),
                session.version,
                session.created,
                min(now + self._idle, session.absolute_deadline),
                session.absolute_deadline,
                touched_at=now,
                cached_at=time.monotonic(),
            ),
            generation=generation,
        )

    def _user_id(self, mapping: Mapping[str, Any]) -> int | None:
        value = mapping.get(self._user_id_key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"session[{self._user_id_key!r}] must be an int user id")
        return value


async def get_session(request: web.Request) -> PostgresSession:
    """aiohttp_session.get_session, typed: the request's session (loaded on the first call), a
    PostgresSession. Raises TypeError when the app's storage is not a PostgresStorage."""
    session = await aiohttp_session.get_session(request)
    if not isinstance(session, PostgresSession):
        raise TypeError("get_session needs aiohttp_session.setup(app, PostgresStorage(...))")
    return session


async def new_session(request: web.Request) -> PostgresSession:
    """aiohttp_session.new_session, typed: a fresh session for a login, replacing the request's
    (which the save then uses up, in the statement that creates this one). Raises TypeError
    when the app's storage is not a PostgresStorage."""
    session = await aiohttp_session.new_session(request)
    if not isinstance(session, PostgresSession):
        raise TypeError("new_session needs aiohttp_session.setup(app, PostgresStorage(...))")
    return session


async def renew_session(request: web.Request) -> PostgresSession:
    """Give the request's session a new ID, keeping its data, creation time and absolute deadline
    (OWASP: renew the session ID on any privilege change, against fixation). The old ID stops
    working when the response is saved, in the same statement that creates the new one; if the
    session ended meanwhile, nothing is created. Returns the new session, to change further.
    On a request without a saved session (anonymous) it is new_session with the data copied:
    check that the user is signed in before granting anything.

    Raises TypeError when the app's storage is not a PostgresStorage, DatabaseUnavailable as any
    session access may.
    """
    old = await get_session(request)
    fresh = await new_session(request)
    fresh.update(old)
    fresh.renews = old.id_hash
    return fresh


def _encode(mapping: dict[str, Any]) -> bytes:
    # Nested values changed in place bypass the check at assignment; this is where they fail.
    # The encoder alone would let some through, changed: tuples become lists, NaN becomes null.
    for key, value in mapping.items():
        check_json_value(key, value)
    return orjson.dumps(mapping)


def _client(request: web.BaseRequest) -> tuple[str, str]:
    return (
        valid_text(request.remote or "", MAX_IP_CHARS),
        valid_text(request.headers.get(hdrs.USER_AGENT, ""), MAX_USER_AGENT_CHARS),
    )
