"""PostgresStorage: aiohttp-session storage that keeps sessions in a PostgreSQL table.

    aiohttp_session.setup(app, PostgresStorage(pool, signer=..., cipher=..., ...))

The cookie carries only a signed opaque token (tokens.py). The `sessions` row, keyed by the
token's SHA-256, holds the data encrypted (cipher.py) and the deadlines, which PostgreSQL's clock
enforces in the same statement that loads the row. A read-only request costs one statement and
writes nothing, except to slide the idle deadline at most once per `touch_interval`. Saves are
optimistic (a version column): two requests of one session that change different keys both
survive, and a session ended meanwhile stays ended.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from typing import Any

import asyncpg
import orjson
from aiohttp import hdrs, web
from aiohttp_session import AbstractStorage, Session, get_session, new_session

from . import events
from .cache import Entry, SessionCache
from .cipher import DataCipher
from .db import connection
from .session import PgSession, check_json_value
from .tokens import TokenSigner, VerifiedToken, fingerprint_of

log = logging.getLogger(__name__)

_MAX_IP_CHARS, _MAX_USER_AGENT_CHARS = 64, 512

# One statement per read: load the live row and, only when the last touch is older than the
# touch interval, slide its idle deadline (never past the absolute one) and note the client.
# Inside the interval the UPDATE matches no row, and so writes nothing.
LOAD_SQL = """
WITH live AS (
    SELECT id_hash, data, version, created_at, idle_expires_at, absolute_expires_at, last_seen_at,
           last_seen_at <= now() - make_interval(secs => $3) AS due
    FROM sessions
    WHERE id_hash = $1 AND idle_expires_at > now() AND absolute_expires_at > now()
), touched AS (
    UPDATE sessions AS s
    SET last_seen_at = now(),
        idle_expires_at = least(now() + make_interval(secs => $2), s.absolute_expires_at),
        client_ip = $4, user_agent = $5
    FROM live
    WHERE s.id_hash = live.id_hash AND live.due
)
SELECT data, version,
       extract(epoch FROM created_at)::bigint AS created,
       extract(epoch FROM CASE WHEN due THEN least(now() + make_interval(secs => $2), absolute_expires_at)
                               ELSE idle_expires_at END)::float8 AS idle_deadline,
       extract(epoch FROM absolute_expires_at)::float8 AS absolute_deadline
FROM live
"""

# A new session replaces the one the request came with, in the same statement: login never
# keeps a pre-login ID (no fixation) and leaves no orphan row. A renewal ($7) keeps the replaced
# row's creation time and absolute deadline, and creates nothing if that row is already gone.
INSERT_SQL = """
WITH replaced AS (
    DELETE FROM sessions
    WHERE id_hash = $6 AND idle_expires_at > now() AND absolute_expires_at > now()
    RETURNING created_at, absolute_expires_at
), deadline AS (
    SELECT coalesce(max(r.created_at), now()) AS created_at,
           coalesce(max(r.absolute_expires_at), now() + make_interval(secs => $5)) AS absolute_at,
           count(r.*) AS replaced
    FROM replaced AS r WHERE $7
)
INSERT INTO sessions (id_hash, user_id, data, created_at, idle_expires_at, absolute_expires_at, client_ip, user_agent)
SELECT $1, $2, $3, d.created_at, least(now() + make_interval(secs => $4), d.absolute_at), d.absolute_at, $8, $9
FROM deadline AS d
WHERE NOT $7 OR d.replaced > 0
RETURNING extract(epoch FROM absolute_expires_at)::float8 AS absolute_deadline
"""

# Optimistic: only if nobody saved since we loaded. Never an upsert: an ended session stays ended.
UPDATE_SQL = """
UPDATE sessions
SET data = $2, user_id = $3, version = version + 1, last_seen_at = now(),
    idle_expires_at = least(now() + make_interval(secs => $4), absolute_expires_at)
WHERE id_hash = $1 AND version = $5 AND idle_expires_at > now() AND absolute_expires_at > now()
RETURNING version
"""

# After a version conflict: lock the row for the length of one merge (never across a handler).
LOCK_SQL = """
SELECT data, version FROM sessions
WHERE id_hash = $1 AND idle_expires_at > now() AND absolute_expires_at > now()
FOR UPDATE
"""

DELETE_SQL = "DELETE FROM sessions WHERE id_hash = $1"


class PostgresStorage(AbstractStorage):
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        signer: TokenSigner,
        cipher: DataCipher,
        idle_timeout: int = 1800,
        absolute_timeout: int = 43200,
        touch_interval: int = 60,
        cookie_name: str = "session",
        db_timeout: float = 1.5,
        user_id_key: str = "user_id",
        cache: SessionCache | None = None,
    ) -> None:
        """
        pool: asyncpg pool on a database migrated with this project's Alembic revisions.
        signer / cipher: the cookie-signing and data-encrypting keys (newest first).
        idle_timeout: seconds of inactivity that end a session.
        absolute_timeout: seconds after creation that end a session however active; also the
            cookie's Max-Age.
        touch_interval: a read slides the idle deadline at most this often (seconds); must be
            less than idle_timeout.
        cookie_name: "__Host-" is put in front of it when the request came over HTTPS.
        db_timeout: bound in seconds on each database operation; past it, HTTP 503.
        user_id_key: the session key whose integer value is mirrored into `sessions.user_id`,
            so deleting a user ends their sessions and their sessions can be listed.
        cache: an in-process SessionCache (cache.py), whose listener the caller runs; None: every
            read asks the database.
        """
        if not 0 <= touch_interval < idle_timeout <= absolute_timeout:
            raise ValueError("need 0 <= touch_interval < idle_timeout <= absolute_timeout")
        super().__init__(cookie_name=cookie_name, max_age=absolute_timeout, httponly=True, samesite="Lax")
        self._pool = pool
        self._signer = signer
        self._cipher = cipher
        self._idle = float(idle_timeout)
        self._absolute = float(absolute_timeout)
        self._touch = float(touch_interval)
        self._db_timeout = db_timeout
        self._user_id_key = user_id_key
        self._cache = cache

    # -- cookie ----------------------------------------------------------------------------

    def cookie_name_for(self, request: web.BaseRequest) -> str:
        # __Host- pins the cookie to this host, HTTPS and Path=/; browsers refuse it without Secure.
        return f"__Host-{self.cookie_name}" if request.secure else self.cookie_name

    def load_cookie(self, request: web.Request) -> str | None:
        # Only our cookie, found in the raw header: request.cookies builds a Morsel for every
        # cookie the browser sends, which was a measurable share of a cache hit.
        return _find_cookie(request.headers.get(hdrs.COOKIE), self.cookie_name_for(request))

    def verified_id_hash(self, request: web.Request) -> VerifiedToken | None:
        """The request's cookie, if present and validly signed (no database access)."""
        cookie = self.load_cookie(request)
        if cookie is None:
            return None
        verified = self._signer.verify(cookie)
        if verified is None:
            events.emit(request, "session.bad_signature")
        return verified

    def _set_cookie(self, request: web.Request, response: web.StreamResponse, value: str, max_age: int) -> None:
        response.set_cookie(
            self.cookie_name_for(request),
            value,
            max_age=max(max_age, 0),
            path="/",
            secure=request.secure or None,
            httponly=True,
            samesite="Lax",
        )

    def _expire_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        # Same attributes as when set: browsers ignore a deletion of a __Host- cookie without them.
        response.del_cookie(
            self.cookie_name_for(request),
            path="/",
            secure=request.secure or None,
            httponly=True,
            samesite="Lax",
        )

    # -- aiohttp-session API ---------------------------------------------------------------

    async def new_session(self) -> PgSession:
        return self._empty()

    async def load_session(self, request: web.Request) -> PgSession:
        verified = self.verified_id_hash(request)
        if verified is None:
            return self._empty(dead_cookie=self.load_cookie(request) is not None)
        id_hash = verified.id_hash
        cache = self._cache
        if cache is not None:
            now = time.time()
            entry = cache.get(id_hash, now)
            # A hit asks no database, until this process's touch interval for the row runs out.
            if entry is not None and now - entry.touched_at < self._touch and verified.current_key:
                return self._loaded(id_hash, entry.plaintext, entry.created, entry.version, entry.absolute_deadline)
            generation = cache.generation
        async with connection(self._pool, self._db_timeout) as conn:
            row = await conn.fetchrow(LOAD_SQL, id_hash, self._idle, self._touch, *_client(request))
        if row is None:
            events.emit(request, "session.expired_or_unknown", id_hash)
            return self._empty(dead_cookie=True)
        opened = self._cipher.open(row["data"], id_hash)
        if opened is None:
            events.emit(request, "session.undecryptable", id_hash)
            return self._empty(dead_cookie=True)
        plaintext, current_data_key = opened
        session = self._loaded(id_hash, plaintext, row["created"], row["version"], row["absolute_deadline"])
        if not (current_data_key and verified.current_key):
            # Read under an old key: save it again now, re-encrypted and re-signed.
            session.needs_rewrite = True
            if not verified.current_key:
                cookie = self.load_cookie(request)
                assert cookie is not None
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
                    touched_at=time.time(),
                    cached_at=time.monotonic(),
                ),
                generation=generation,
            )
        return session

    def _empty(self, *, dead_cookie: bool = False) -> PgSession:
        session = PgSession(user_id_key=self._user_id_key)
        # A cookie that names no live session: expire it, so the browser stops sending it (and
        # costing a lookup) on every request.
        session.clear_cookie = dead_cookie
        return session

    def _loaded(
        self, id_hash: bytes, plaintext: bytes, created: int, version: int, absolute_deadline: float
    ) -> PgSession:
        return PgSession(
            id_hash=id_hash,
            data=orjson.loads(plaintext),
            snapshot=orjson.loads(plaintext),  # a second decode is the cheapest deep copy
            created=created,
            version=version,
            absolute_deadline=absolute_deadline,
            user_id_key=self._user_id_key,
        )

    async def save_session(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        if not isinstance(session, PgSession):
            raise TypeError("PostgresStorage saves only the sessions it hands out")
        if session.empty and session.clear_cookie:
            self._expire_cookie(request, response)  # nothing to delete: the cookie named no live row
        elif session.empty:
            await self._end(request, response, session)
        elif session.id_hash is None:
            await self._create(request, response, session)
        else:
            await self._update(request, response, session)

    # -- writes ----------------------------------------------------------------------------

    async def _create(self, request: web.Request, response: web.StreamResponse, session: PgSession) -> None:
        renewing = session.renews is not None
        if renewing:
            replaced = session.renews
        else:
            previous = self.verified_id_hash(request)
            replaced = previous.id_hash if previous else None
        cookie, id_hash = self._signer.new()
        mapping = dict(session)
        plaintext = _encode(mapping)
        generation = self._cache.generation if self._cache else 0
        async with connection(self._pool, self._db_timeout) as conn:
            absolute_deadline = await conn.fetchval(
                INSERT_SQL,
                id_hash,
                self._user_id(mapping),
                self._cipher.seal(plaintext, id_hash),
                self._idle,
                self._absolute,
                replaced,
                renewing,
                *_client(request),
            )
        if replaced is not None:
            self.forget([replaced])
        if absolute_deadline is None:
            # Renewing a session that ended meanwhile: it stays ended.
            events.emit(request, "session.ended_during_request", replaced)
            self._expire_cookie(request, response)
            return
        session.id_hash = id_hash
        session.version = 1
        session.absolute_deadline = absolute_deadline
        self._set_cookie(request, response, cookie, math.ceil(absolute_deadline - time.time()))
        self._remember(id_hash, plaintext, session, generation)
        if renewing:
            events.emit(request, "session.renewed", id_hash, previous=_fp(replaced))
        else:
            events.emit(request, "session.created", id_hash, user_id=mapping.get(self._user_id_key, "-"))

    async def _update(self, request: web.Request, response: web.StreamResponse, session: PgSession) -> None:
        id_hash = session.id_hash
        assert id_hash is not None
        mapping = dict(session)
        plaintext = _encode(mapping)
        generation = self._cache.generation if self._cache else 0
        async with connection(self._pool, self._db_timeout) as conn:
            version = await self._write(conn, id_hash, mapping, plaintext, session.version)
            if version is None:
                version, plaintext = await self._merge(conn, session)
        if version is None:
            # Ended while this request ran (logout in another tab): do not bring it back.
            self.forget([id_hash])
            events.emit(request, "session.ended_during_request", id_hash)
            self._expire_cookie(request, response)
            return
        session.version = version
        self._remember(id_hash, plaintext, session, generation)
        if session.resigned_cookie is not None and session.absolute_deadline is not None:
            max_age = math.ceil(session.absolute_deadline - time.time())
            self._set_cookie(request, response, session.resigned_cookie, max_age)
            session.resigned_cookie = None

    async def _merge(self, conn: asyncpg.Connection, session: PgSession) -> tuple[int | None, bytes | None]:
        """Someone saved since we loaded: re-apply only this request's changes to the latest data,
        holding the row lock for just this merge. (None, _) when the session is gone."""
        id_hash = session.id_hash
        assert id_hash is not None
        updated, deleted = session.changes()
        async with conn.transaction():
            row = await conn.fetchrow(LOCK_SQL, id_hash)
            if row is None:
                return None, b""
            opened = self._cipher.open(row["data"], id_hash)
            if opened is None:
                # Re-written under a key this process does not have (a rotation rolling out):
                # leave it alone rather than replace data we cannot read.
                log.warning("session %s: newer data under an unknown key; this change is dropped", _fp(id_hash))
                return row["version"], None
            latest: dict[str, Any] = orjson.loads(opened[0])
            for key in deleted:
                latest.pop(key, None)
            latest.update(updated)
            plaintext = _encode(latest)
            return await self._write(conn, id_hash, latest, plaintext, row["version"]), plaintext

    async def _write(
        self, conn: asyncpg.Connection, id_hash: bytes, mapping: dict[str, Any], plaintext: bytes, version: int
    ) -> int | None:
        """UPDATE_SQL: the new version, or None if the row is gone or no longer at `version`."""
        return await conn.fetchval(
            UPDATE_SQL, id_hash, self._cipher.seal(plaintext, id_hash), self._user_id(mapping), self._idle, version
        )

    async def _end(self, request: web.Request, response: web.StreamResponse, session: PgSession) -> None:
        id_hash = session.id_hash
        if id_hash is None:
            # A new, empty session: end whatever the request's cookie named.
            previous = self.verified_id_hash(request)
            id_hash = previous.id_hash if previous else None
        if id_hash is not None:
            async with connection(self._pool, self._db_timeout) as conn:
                await conn.execute(DELETE_SQL, id_hash)
            self.forget([id_hash])
            events.emit(request, "session.ended", id_hash)
        if self.load_cookie(request) is not None:
            self._expire_cookie(request, response)

    # -- cache -----------------------------------------------------------------------------

    def forget(self, id_hashes: Iterable[bytes]) -> None:
        """Evict sessions this process ended by other means (revocation) at once, without
        waiting for their notification."""
        if self._cache is not None:
            for id_hash in id_hashes:
                self._cache.evict(id_hash)

    def _remember(self, id_hash: bytes, plaintext: bytes | None, session: PgSession, generation: int) -> None:
        """Cache what this process just wrote (its own notification then leaves it alone)."""
        if self._cache is None or plaintext is None or session.absolute_deadline is None:
            return
        now = time.time()
        self._cache.put(
            id_hash,
            Entry(
                plaintext,
                session.version,
                session.created,
                min(now + self._idle, session.absolute_deadline),
                session.absolute_deadline,
                touched_at=now,
                cached_at=time.monotonic(),
            ),
            generation=generation,
        )

    def _user_id(self, mapping: dict[str, Any]) -> int | None:
        value = mapping.get(self._user_id_key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"session[{self._user_id_key!r}] must be an int user id")
        return value


async def renew_session(request: web.Request) -> PgSession:
    """Give the request's session a new ID, keeping its data and deadlines; the old ID stops
    working when the response is saved. Call on every privilege change."""
    old = await get_session(request)
    fresh = await new_session(request)
    assert isinstance(old, PgSession)
    assert isinstance(fresh, PgSession)
    fresh.update(old)
    fresh.renews = old.id_hash
    return fresh


def _encode(mapping: dict[str, Any]) -> bytes:
    # Nested values changed in place bypass the check at assignment; this is where they fail.
    # The encoder alone would let some through, changed: tuples become lists, NaN becomes null.
    for key, value in mapping.items():
        check_json_value(key, value)
    return orjson.dumps(mapping)


def _find_cookie(header: str | None, name: str) -> str | None:
    """The value of the first cookie called `name` in a Cookie header (browsers send the most
    specific path first). Quotes are kept: a quoted value is no token of ours and fails verify."""
    if not header or name not in header:
        return None
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


def _client(request: web.BaseRequest) -> tuple[str, str]:
    return (request.remote or "")[:_MAX_IP_CHARS], request.headers.get("User-Agent", "")[:_MAX_USER_AGENT_CHARS]


def _fp(id_hash: bytes | None) -> str:
    return fingerprint_of(id_hash) if id_hash else "-"
