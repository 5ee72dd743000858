"""PostgresSession: the Session that PostgresStorage hands out.

- Values must be JSON values (str, int, float, bool, None, and lists / str-keyed dicts of them;
  integers within 64 bits, strings valid UTF-8), checked at assignment: a handler's mistake
  raises TypeError in the handler, not later in the middleware, and the stored session stays as
  it was.
- It knows what changed since load by comparing with a snapshot, so a change inside a nested
  value is saved too (aiohttp-session's own flag only sees top-level assignment), and so a
  concurrent save can re-apply just this request's changes.
- Its size is checked at the save, on the data as serialized (compact UTF-8 JSON, before
  encryption): `SessionDataTooLarge` when over the storage's `max_data_bytes`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from aiohttp_session import Session, SessionData

from .identity import user_id_problem
from .tokens import handle_of

if TYPE_CHECKING:
    from ._types import Connection

_MISSING = object()
# A new session's stored max_age: none yet (any value it is given is new).
_NOT_STORED = object()

# PostgresStorage's max_data_bytes by default: 64 KiB of JSON. Sixteen times what a cookie
# session holds (browsers must accept 4096-byte cookies, RFC 6265 section 6.1, the size Rails'
# CookieOverflow and gorilla's redistore default stop at), and what Rails and Express session
# tables on MySQL held for years (a TEXT column: 65,535 bytes). Sessions carry IDs and small
# state; bulk belongs in tables of its own.
DEFAULT_MAX_DATA_BYTES = 65_536


class SessionDataTooLarge(web.HTTPRequestEntityTooLarge):
    """HTTP 413, raised by the save when a session's data, as serialized (compact UTF-8 JSON,
    before encryption), is over the storage's `max_data_bytes` and larger than the data it
    replaces. Nothing is saved: the stored session stays as it was. A subclass of aiohttp's
    HTTPRequestEntityTooLarge: unhandled, it is the response; a middleware may catch it to
    render its own page. Its message names the size and the limit, never the data.

    :ivar size: the data's size, in bytes.
    :ivar limit: the storage's `max_data_bytes`.
    """

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        self.message = f"session data of {size} bytes is over the limit of {limit} bytes (max_data_bytes): not saved"
        super().__init__(limit, size, text=self.message + "\n")

    def __str__(self) -> str:
        return self.message


def check_json_value(key: object, value: object) -> None:
    """Raise TypeError, naming `key`, unless `value` survives a JSON round trip unchanged."""
    if not isinstance(key, str) or not (key.isascii() or _utf8(key)):
        raise TypeError(f"session keys must be str (valid UTF-8), got {type(key).__name__} {key!r}")
    problem = _json_problem(value)
    if problem:
        raise TypeError(f"session[{key!r}]: {problem}")


# What the JSON codec (orjson) round-trips exactly: 64-bit integers, strings without lone surrogates,
# and nesting it can encode (it stops at 254 levels); deeper values, and a list or dict that
# contains itself, are refused at assignment, before they could fail the save.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
MAX_DEPTH = 64  # lists and dicts within each other


def _json_problem(value: object, depth: int = 0) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return None if value.isascii() or _utf8(value) else "a string with unpaired surrogates is not valid UTF-8"
    if isinstance(value, int):
        return None if _INT_MIN <= value <= _INT_MAX else f"{value} is outside the 64-bit integer range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a JSON number"
    if isinstance(value, (list, dict)) and depth >= MAX_DEPTH:
        return f"lists and dicts may be nested {MAX_DEPTH} deep at most (or it contains itself)"
    if isinstance(value, list):
        for item in value:
            problem = _json_problem(item, depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"dict keys must be str, got {type(k).__name__}"
            if not (k.isascii() or _utf8(k)):
                return "a dict key with unpaired surrogates is not valid UTF-8"
            problem = _json_problem(v, depth + 1)
            if problem:
                return problem
        return None
    return f"{type(value).__name__} is not a JSON value (use str, int, float, bool, None, list, dict)"


def _utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class PostgresSession(Session):
    """An aiohttp-session Session that remembers its row, its version and what it was when loaded.

    Use it as any Session (a mutable mapping of JSON values). The storage makes it; an app gets
    it from `get_session`, `new_session` or `renew_session`.

    `max_age` (aiohttp-session's attribute) is the session's lifetime, in seconds from its
    creation, and its cookie's kind: a new session starts with the storage's `absolute_timeout`
    (a persistent cookie, as aiohttp-session's storages do); None makes a browser-session cookie
    (no Max-Age: the browser drops it when it closes; the server still ends the session at its
    idle and absolute timeouts); N makes a cookie of Max-Age N and a session that the server
    ends N seconds after its creation ("remember me"), with the storage's
    `remember_idle_timeout` when N is over its `absolute_timeout`. A loaded session reports its
    own. Setting it on a loaded session saves it (unlike aiohttp-session, where it is only used
    if something else changes), counted from its creation: a lifetime its age has already passed
    ends it. A renewal keeps it.

    :raises TypeError: at assignment, for a value that is not JSON (str, int, float, bool, None,
        and lists and str-keyed dicts of them; integers within 64 bits, strings valid UTF-8,
        nested at most 64 deep), or a `user_id_key` value that is no user identity (an int
        within 64 bits, not a bool, or a str of 1 to 255 bytes of UTF-8 without NUL: identity.py):
        in the handler, never later in the middleware, and the stored session stays as it was.
    """

    def __init__(
        self,
        *,
        id_hash: bytes | None = None,
        data: dict[str, Any] | None = None,
        snapshot: dict[str, Any] | None = None,
        created: int | None = None,
        version: int = 0,
        expires: float | None = None,
        user_id_key: str = "user_id",
        max_age: int | None = None,
        max_age_limit: int | None = None,
    ) -> None:
        """`snapshot` must be an independent copy of `data` (the storage decodes it twice).
        `max_age`: a loaded session's own (a new one's is given by the storage);
        `max_age_limit`: the most `max_age` may be set to (None: no limit)."""
        self._flagged = False
        self._user_id_key = user_id_key
        self._assigned: set[str] = set()
        self._snapshot = snapshot if snapshot is not None else {}
        self.id_hash = id_hash
        self.version = version
        # When the session ends however active: its absolute deadline on this process's
        # time.monotonic() clock (the database's deadline, through the row's clock offset).
        self.expires = expires
        # Read under an old key: save it again (re-encrypted, cookie re-signed) even if unchanged.
        self.needs_rewrite = False
        # Set by require(): checked in the transaction that creates the session.
        self.precondition: tuple[Callable[[Connection], Awaitable[bool]], web.HTTPException] | None = None
        self.resigned_cookie: str | None = None
        # The cookie the browser holds for this session (as loaded, or as this request set it):
        # sent again when its lifetime changes.
        self.sent_cookie: str | None = None
        # Set by renew_session: the row this one replaces, whose deadlines it keeps.
        self.renews: bytes | None = None
        # Bytes of JSON a save may store even over the storage's max_data_bytes: the size of the
        # data it replaces (a row written before the limit, or under a larger one, still saves if
        # it does not grow). None until asked; renew_session gives the renewed session's.
        self.allowed_size: int | None = None
        payload: SessionData | None = None
        if data is not None:
            payload = {"created": created if created is not None else int(time.time()), "session": data}
        # max_age not given to Session: it would drop the data by this host's clock.
        super().__init__(None if id_hash is None else id_hash.hex(), data=payload, new=id_hash is None)
        self._max_age = max_age
        self._max_age_limit = max_age_limit
        # The max_age the row has: a change of it is saved.
        self._stored_max_age: object = _NOT_STORED if id_hash is None else max_age
        # aiohttp-session moves its `_created` to "now" on every change (a cookie storage's
        # notion); here `created` stays the session's creation time, as its row has it.
        self._creation = self._created

    @property
    def max_age(self) -> int | None:
        """The session's lifetime in seconds from its creation (and its cookie's Max-Age), or
        None for a browser-session cookie. Setting it on a loaded session saves it.

        :raises TypeError: for a value that is not an int or None.
        :raises ValueError: for a value below 1 or over the storage's `max_remember_timeout`.
        """
        return self._max_age

    @max_age.setter
    def max_age(self, value: int | None) -> None:
        if value is not None:
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"session.max_age must be an int (seconds) or None, got {type(value).__name__}")
            if value < 1:
                raise ValueError("session.max_age must be at least 1 second (or None; to end it, invalidate())")
            limit = self._max_age_limit
            if limit is not None and value > limit:
                raise ValueError(f"session.max_age {value} is over the storage's max_remember_timeout ({limit} s)")
        self._max_age = value

    @property
    def lifetime_changed(self) -> bool:
        """Whether the handler changed the `max_age` of a stored session (a new one's is used
        when it is created)."""
        return self._stored_max_age is not _NOT_STORED and self._max_age != self._stored_max_age

    def stored(self, max_age: int | None) -> None:
        """The row now keeps `max_age` for this session (as it says after a write), which the
        session then reports."""
        self._max_age = self._stored_max_age = max_age

    @property
    def stored_browser_session(self) -> bool:
        """Whether the cookie the row keeps is a browser-session cookie (no Max-Age)."""
        return self._stored_max_age is None

    def keep_lifetime_of(self, old: PostgresSession) -> None:
        """For a renewal: this session takes `old`'s max_age, and its record of what is stored."""
        self._max_age = old._max_age
        self._stored_max_age = old._stored_max_age

    @property
    def created(self) -> int:
        """When the session was created (epoch seconds), its row's, whatever changed it since
        (aiohttp-session's own moves to "now" at every change)."""
        return self._creation

    def size_allowed(self) -> int:
        """The size (bytes of JSON, as the storage serializes it) of the stored data a save of
        this session replaces: the data as loaded, the renewed session's for a renewal, 0 for a
        new session. A save over the storage's `max_data_bytes` is refused only when larger."""
        if self.allowed_size is None:
            self.allowed_size = len(orjson.dumps(self._snapshot)) if self._snapshot else 0
        return self.allowed_size

    @property
    def loaded(self) -> Mapping[str, Any]:
        """The data as loaded, before this request's changes (empty for a new session)."""
        return MappingProxyType(self._snapshot)

    @property
    def user_id_key(self) -> str:
        """The key whose value ties the session to a user (the storage's `user_id_key`)."""
        return self._user_id_key

    @property
    def handle(self) -> str | None:
        """The session's public name (16 hex digits, as `SessionInfo.handle`), or None for a
        session not yet saved."""
        return handle_of(self.id_hash) if self.id_hash is not None else None

    # aiohttp-session's middleware saves when `_changed` is true; base methods assign it.
    @property
    def _changed(self) -> bool:
        return self._flagged or self.needs_rewrite or self._mapping != self._snapshot or self.lifetime_changed

    @_changed.setter
    def _changed(self, value: bool) -> None:
        self._flagged = value

    def __setitem__(self, key: str, value: Any) -> None:
        # The user id first: a uuid.UUID is better told to be a str than not to be JSON.
        if key == self._user_id_key and value is not None:
            problem = user_id_problem(value)
            if problem is not None:
                raise TypeError(f"session[{key!r}] ties the session to a user (None: to no user): {problem}")
        check_json_value(key, value)
        super().__setitem__(key, value)
        self._assigned.add(key)

    def set_new_identity(self, identity: Any) -> None:
        """Refused: the storage chooses every session ID itself (256 random bits, signed in the
        cookie; the table keeps only a hash of it), so an ID given here would be silently
        ignored. `new_session` or `renew_session` give a session a new ID.

        :raises RuntimeError: always (aiohttp-session raises it too, for a session not new).
        """
        raise RuntimeError(
            "PostgresStorage chooses session IDs itself (random, signed): set_new_identity is not supported;"
            " new_session() or renew_session() give a new ID"
        )

    def require(self, check: Callable[[Connection], Awaitable[bool]], *, otherwise: web.HTTPException) -> None:
        """Create this new session only if `await check(conn)` returns True, run on the connection
        and in the transaction that creates it. For a login: check, and lock with FOR SHARE, that
        the credentials just verified are still the user's, so a password reset or an account
        deletion that commits meanwhile cannot leave a session created by the old password behind.

        :param check: an async function of the connection; False creates nothing (and whatever
            it changed is rolled back).
        :param otherwise: raised from the save when `check` says no: it becomes the response.
        :raises RuntimeError: on a session that is already saved (only creation is guarded).
        """
        if self.id_hash is not None:
            raise RuntimeError("require() guards the creation of a new session; this one exists")
        self.precondition = (check, otherwise)

    def changes(self) -> tuple[dict[str, Any], set[str]]:
        """What this request changed, to re-apply over a concurrent save.

        :returns: (keys set or changed since load, with their values; keys deleted since load).
        """
        current = self._mapping
        updated = {k: v for k, v in current.items() if k in self._assigned or self._snapshot.get(k, _MISSING) != v}
        deleted = {k for k in self._snapshot if k not in current}
        return updated, deleted
