"""PostgresStorage: aiohttp-session storage that keeps sessions in a PostgreSQL table.

    aiohttp_session.setup(app, PostgresStorage(pool, signer=..., cipher=..., ...))

The cookie carries only a signed opaque token (see tokens.py). The `sessions` row, keyed by the
token's SHA-256, holds the data encrypted (cipher.py) and the deadlines, which PostgreSQL's clock
enforces in the same statement that loads the row. A read-only request costs one statement and
writes nothing, except to slide the idle deadline at most once per `touch_interval`.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import asyncpg
from aiohttp import web
from aiohttp_session import AbstractStorage, Session

from .cipher import DataCipher
from .db import connection
from .tokens import TokenSigner, VerifiedToken, fingerprint_of

log = logging.getLogger(__name__)

# One statement per read: load the live row and, only when the last touch is older than the
# touch interval, slide its idle deadline (never past the absolute one). The UPDATE matches no
# row, and so writes nothing, inside the interval.
LOAD_SQL = """
WITH live AS (
    SELECT id_hash, user_id, data, created_at, last_seen_at
    FROM sessions
    WHERE id_hash = $1 AND idle_expires_at > now() AND absolute_expires_at > now()
), touched AS (
    UPDATE sessions AS s
    SET last_seen_at = now(),
        idle_expires_at = least(now() + make_interval(secs => $2), s.absolute_expires_at)
    FROM live
    WHERE s.id_hash = live.id_hash AND live.last_seen_at <= now() - make_interval(secs => $3)
)
SELECT user_id, data, extract(epoch FROM created_at)::bigint AS created FROM live
"""

# A new session replaces the one the request came with, if any, in the same statement: login
# never keeps a pre-login ID (no fixation), and no orphan row is left behind.
INSERT_SQL = """
WITH replaced AS (DELETE FROM sessions WHERE id_hash = $6)
INSERT INTO sessions (id_hash, user_id, data, idle_expires_at, absolute_expires_at)
VALUES ($1, $2, $3, now() + make_interval(secs => $4), now() + make_interval(secs => $5))
"""

# Never an upsert: a row deleted meanwhile (logout in another tab) stays deleted.
UPDATE_SQL = """
UPDATE sessions
SET data = $2, user_id = $3, last_seen_at = now(),
    idle_expires_at = least(now() + make_interval(secs => $4), absolute_expires_at)
WHERE id_hash = $1 AND idle_expires_at > now() AND absolute_expires_at > now()
"""

DELETE_SQL = "DELETE FROM sessions WHERE id_hash = $1"


class PgSession(Session):
    """A Session that remembers which row it came from."""

    def __init__(
        self,
        *,
        id_hash: bytes | None,
        data: dict[str, Any] | None = None,
        created: int | None = None,
    ) -> None:
        payload = {"created": created, "session": data} if data is not None else None
        super().__init__(None if id_hash is None else id_hash.hex(), data=payload, new=id_hash is None)
        self.id_hash = id_hash


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
    ) -> None:
        """
        pool: asyncpg pool on a database migrated with this project's Alembic revisions.
        signer / cipher: the cookie-signing and data-encrypting keys.
        idle_timeout: seconds of inactivity that end a session.
        absolute_timeout: seconds after creation that end a session however active; also the
            cookie's Max-Age.
        touch_interval: a read slides the idle deadline at most this often (seconds); must be
            less than idle_timeout.
        cookie_name: "__Host-" is put in front of it when the request came over HTTPS.
        db_timeout: bound in seconds on each database operation; past it, HTTP 503.
        user_id_key: the session key whose integer value is mirrored into `sessions.user_id`,
            so deleting a user ends their sessions.
        """
        if not 0 <= touch_interval < idle_timeout <= absolute_timeout:
            raise ValueError("need 0 <= touch_interval < idle_timeout <= absolute_timeout")
        super().__init__(
            cookie_name=cookie_name,
            max_age=absolute_timeout,
            httponly=True,
            samesite="Lax",
            path="/",
        )
        self._pool = pool
        self._signer = signer
        self._cipher = cipher
        self._idle = idle_timeout
        self._absolute = absolute_timeout
        self._touch = touch_interval
        self._db_timeout = db_timeout
        self._user_id_key = user_id_key

    # -- cookie ----------------------------------------------------------------------------

    def cookie_name_for(self, request: web.BaseRequest) -> str:
        # __Host- pins the cookie to this host, HTTPS and Path=/; browsers refuse it without Secure.
        return f"__Host-{self.cookie_name}" if request.secure else self.cookie_name

    def load_cookie(self, request: web.Request) -> str | None:
        return request.cookies.get(self.cookie_name_for(request))

    def _verified_cookie(self, request: web.Request) -> VerifiedToken | None:
        cookie = self.load_cookie(request)
        if cookie is None:
            return None
        verified = self._signer.verify(cookie)
        if verified is None:
            log.info("session cookie rejected: bad signature or format")
        return verified

    def _set_cookie(self, request: web.Request, response: web.StreamResponse, value: str) -> None:
        response.set_cookie(
            self.cookie_name_for(request),
            value,
            max_age=self._absolute,
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
        return PgSession(id_hash=None)

    async def load_session(self, request: web.Request) -> PgSession:
        verified = self._verified_cookie(request)
        if verified is None:
            return PgSession(id_hash=None)
        id_hash = verified.id_hash
        async with connection(self._pool, self._db_timeout) as conn:
            row = await conn.fetchrow(LOAD_SQL, id_hash, float(self._idle), float(self._touch))
        if row is None:
            log.info("session %s not found or expired", fingerprint_of(id_hash))
            return PgSession(id_hash=None)
        opened = self._cipher.open(row["data"], id_hash)
        if opened is None:
            log.warning("session %s data does not decrypt under any key", fingerprint_of(id_hash))
            return PgSession(id_hash=None)
        plaintext, _current = opened
        return PgSession(id_hash=id_hash, data=json.loads(plaintext), created=row["created"])

    async def save_session(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        if not isinstance(session, PgSession):
            raise TypeError("PostgresStorage saves only sessions it created")
        if session.empty:
            await self._end(request, response, session)
        elif session.id_hash is None:
            await self._create(request, response, session)
        else:
            await self._update(request, response, session)

    # -- writes ----------------------------------------------------------------------------

    async def _create(self, request: web.Request, response: web.StreamResponse, session: PgSession) -> None:
        previous = self._verified_cookie(request)
        cookie, id_hash = self._signer.new()
        mapping = dict(session)
        async with connection(self._pool, self._db_timeout) as conn:
            await conn.execute(
                INSERT_SQL,
                id_hash,
                self._user_id(mapping),
                self._seal(mapping, id_hash),
                float(self._idle),
                float(self._absolute),
                previous.id_hash if previous else None,
            )
        session.id_hash = id_hash
        self._set_cookie(request, response, cookie)
        log.info("session %s created", fingerprint_of(id_hash))

    async def _update(self, request: web.Request, response: web.StreamResponse, session: PgSession) -> None:
        assert session.id_hash is not None
        mapping = dict(session)
        async with connection(self._pool, self._db_timeout) as conn:
            status = await conn.execute(
                UPDATE_SQL,
                session.id_hash,
                self._seal(mapping, session.id_hash),
                self._user_id(mapping),
                float(self._idle),
            )
        if status == "UPDATE 0":
            # Ended while this request ran: do not bring it back, and tell the browser so.
            log.info("session %s ended during the request; not saved", fingerprint_of(session.id_hash))
            self._expire_cookie(request, response)

    async def _end(self, request: web.Request, response: web.StreamResponse, session: PgSession) -> None:
        id_hash = session.id_hash
        if id_hash is None:
            # A new, empty session: end whatever the request's cookie named.
            previous = self._verified_cookie(request)
            id_hash = previous.id_hash if previous else None
        if id_hash is not None:
            async with connection(self._pool, self._db_timeout) as conn:
                await conn.execute(DELETE_SQL, id_hash)
            log.info("session %s ended", fingerprint_of(id_hash))
        if self.load_cookie(request) is not None:
            self._expire_cookie(request, response)

    def _seal(self, mapping: dict[str, Any], id_hash: bytes) -> bytes:
        return self._cipher.seal(json.dumps(mapping, separators=(",", ":")).encode(), id_hash)

    def _user_id(self, mapping: dict[str, Any]) -> int | None:
        value = mapping.get(self._user_id_key)
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"session[{self._user_id_key!r}] must be an int user id")
        return value
