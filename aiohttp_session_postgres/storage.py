"""PostgresStorage: the aiohttp-session storage. It reads the request's session cookie
(cookies.py), asks the rows layer for the row it names (rows.py, or cache.py's CachedRows in front
of it), hands the handler a PostgresSession (session.py), and after the handler saves what
changed: a new session, a write, or a logout. It logs each session's events (events.py) and turns
an unreachable database into an HTTP 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

import aiohttp_session
import asyncpg
import orjson
from aiohttp import hdrs, web
from aiohttp_session import AbstractStorage, Session
from aiosignal import Signal

from . import events
from .cache import CachedRows, Entry, SessionCache
from .cipher import AES_KEY_BYTES, DataCipher
from .cookies import SessionCookie, check_cookie_attributes
from .hooks import SessionEvent, SessionHooks, events_channel
from .identity import UserId, check_user_id, user_id_problem
from .observer import (
    LOAD_BAD_SIGNATURE,
    LOAD_CACHE_HIT,
    LOAD_DATABASE,
    LOAD_UNDECRYPTABLE,
    LOAD_UNKNOWN,
    StorageMetrics,
)
from .pool import DATABASE_ERRORS, Unavailable
from .rows import Client, Created, Gone, Lifetime, NotCreated, NotSaved, Row, SessionInfo, SessionRows
from .schema import TableNames
from .session import DEFAULT_MAX_DATA_BYTES, PostgresSession, SessionDataTooLarge, check_json_value
from .tokens import MIN_KEY_BYTES, TokenSigner, VerifiedToken, fingerprint_of

if TYPE_CHECKING:
    from ._types import Connection

log = logging.getLogger("aiohttp_session_postgres")

# The ID hash of the session the request's cookie named, once loaded.
_REQUEST_SESSION = web.RequestKey("aiohttp_session_postgres.loaded", bytes)

MAX_IP_CHARS, MAX_USER_AGENT_CHARS = 64, 512

# What a `metrics` must have (observer.StorageMetrics).
_METRICS_METHODS = ("event", "load", "unavailable", "pool_wait", "listener_lost", "swept", "sample")

# What may stop other processes from being told of a revocation (which stands all the same).
_ANNOUNCE_ERRORS: tuple[type[BaseException], ...] = (Unavailable, *DATABASE_ERRORS)

# An entry of aiohttp's `app.cleanup_ctx`: the storage's background work.
CleanupContext = Callable[[web.Application], AsyncIterator[None]]


class DatabaseUnavailable(web.HTTPServiceUnavailable):
    """HTTP 503 with ``Retry-After: 2``, raised when the database does not answer within the
    storage's `database_timeout`. A subclass of aiohttp's HTTPServiceUnavailable: unhandled, it is
    the response; a middleware may catch it to render its own page with `MESSAGE`."""

    MESSAGE = "The service is briefly unavailable. Please try again in a moment."
    RETRY_AFTER = 2  # seconds

    def __init__(self) -> None:
        super().__init__(text=self.MESSAGE + "\n", headers={"Retry-After": str(self.RETRY_AFTER)})

    @property
    def why(self) -> str:
        """Why, for an operator (a command's error line): that the database is read-only, or
        that the schema is not what the code expects; "" when it did not answer in time."""
        cause = self.__cause__
        return cause.reason if isinstance(cause, Unavailable) else ""


class ArgumentError(ValueError):
    """An argument of PostgresStorage that breaks its rule; the message says which rule. One
    of the wrong type (a str key, a single bytes for a list of keys, a str timeout, ``None`` for
    the pool) is an ArgumentError that is also a TypeError: catch either.

    :ivar argument: the argument's name (for the timeouts' order, the one found at fault).
    :ivar index: for a key list, the position (from 1) of the key at fault; else None.
    """

    def __init__(self, message: str, *, argument: str, index: int | None = None) -> None:
        super().__init__(message)
        self.argument = argument
        self.index = index


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument of the wrong type: a TypeError, and an ArgumentError naming the argument."""


# A cookie name: an RFC 6265 token (RFC 9110's tchar), which aiohttp sets unquoted.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _type_name(value: object) -> str:
    return "None" if value is None else type(value).__name__


def _check_seconds(argument: str, value: object) -> None:
    """A number of seconds: int or float (bool is neither here), finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        message = f"{argument} must be a number of seconds (int or float), got {_type_name(value)}"
        raise ArgumentTypeError(message, argument=argument)
    if isinstance(value, float) and not math.isfinite(value):
        raise ArgumentError(f"{argument} must be a finite number of seconds, got {value!r}", argument=argument)


def _check_count(argument: str, value: object) -> None:
    """An int or None (a bool is a mistake, not a count)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
        raise ArgumentTypeError(f"{argument} must be an int or None, got {_type_name(value)}", argument=argument)


def _check_key_list(argument: str, keys: object) -> None:
    """A sequence of keys, newest first. A bytes or str is a sequence too (of ints, of
    characters): a single key passed without its list would otherwise read as many."""
    if isinstance(keys, (bytes, bytearray, memoryview, str)):
        message = f"{argument} must be a list of keys (bytes), newest first: got a single {type(keys).__name__}"
        raise ArgumentTypeError(message, argument=argument)
    if not isinstance(keys, Sequence):  # a set has no order; an iterator would be used up by the check
        message = f"{argument} must be a list of keys (bytes), newest first: got {_type_name(keys)}"
        raise ArgumentTypeError(message, argument=argument)


class PostgresStorage(AbstractStorage):
    """aiohttp-session storage keeping each session in a PostgreSQL row; the cookie carries only
    a signed, opaque token (``<token>.<signature>``, 87 characters)::

        aiohttp_session_postgres.setup(app, PostgresStorage(pool, authentication_keys=[...], encryption_keys=[...]))

    :param pool: an asyncpg pool on a database that has the sessions table (the SQL,
        `create_schema`, or the Alembic branch). Size it explicitly (``min_size <= max_size``).
    :param authentication_keys: keys that sign the cookie (HMAC-SHA256), newest first: the first
        signs, every one verifies. Each at least 32 bytes (RFC 2104: not shorter than the hash).
    :param encryption_keys: keys that encrypt session data at rest (AES-GCM), newest first: the
        first encrypts, every one decrypts. Each exactly 16, 24 or 32 bytes. A session read under
        a later key of either list is rewritten under the first on that request.
    :param next_authentication_keys: keys that verify the cookie but never sign it, and a cookie
        they verify is not re-signed: the first step of a rotation. Deploy a new key here on every
        process, then put it first in `authentication_keys` (keeping the old one after it), then
        drop the old one an `absolute_timeout` later: processes on neighbouring steps of a rolling
        deploy then verify each other's cookies, re-signed ones included. A key moved into the
        keys may stay listed here (it then counts as one of the keys). Each at least 32 bytes.
    :param next_encryption_keys: the same for `encryption_keys`: they decrypt, never encrypt,
        and data they decrypt is not rewritten. Each exactly 16, 24 or 32 bytes.
    :param idle_timeout: seconds without a request that end a session (OWASP: 15-30 minutes).
    :param absolute_timeout: seconds after creation that end a session however active; also the
        cookie's Max-Age (OWASP: 4-8 hours for most apps). It is a new session's `max_age`
        (aiohttp-session's attribute), which a handler may change: see below.
    :param max_remember_timeout: the longest lifetime (seconds from creation) a handler may give
        a session by setting ``session.max_age = N`` ("remember me": a cookie of Max-Age N, and
        a session the server ends N seconds after its creation); a larger N raises ValueError
        in the handler, at the assignment (never clamped silently). None (the default):
        `absolute_timeout`, so nothing lives longer unless the app allows it.
        ``session.max_age = None`` gives a browser-session cookie (no Max-Age: "do not remember
        me"), the server still enforcing the idle and absolute timeouts.
    :param remember_idle_timeout: seconds without a request that end a session whose
        ``max_age`` is over `absolute_timeout` (a remembered one); the others keep
        `idle_timeout`. None (the default): `idle_timeout`. Kept in the session's row; a
        shorter setting applies to existing sessions at their next touch.
    :param touch_interval: a read slides the idle deadline at most this often (seconds), so most
        reads write nothing; a session may end after ``idle_timeout - touch_interval`` seconds
        without requests.
    :param cookie_name: the cookie's base name (an RFC 6265 token, without a prefix). A Secure
        cookie is named with a prefix browsers enforce (RFC 6265bis section 4.1.3), and is
        never read without it: ``__Host-<name>`` when it has ``Path=/`` and no `domain` (the
        prefix's own rules: the cookie is then pinned to this host), else ``__Secure-<name>``
        (a `domain` or another `path`: browsers still refuse it from a page that is not
        secure). A cookie that is not Secure has the plain name. `cookie_name` reports the
        base name.
    :param secure: None (the default): the cookie is Secure when ``request.secure`` (the request
        came over HTTPS; behind a TLS-terminating proxy, make aiohttp see the forwarded scheme,
        e.g. with aiohttp-remotes). True: always Secure; False: never (plain-HTTP development).
    :param domain: the cookie's ``Domain``: a plain host name (``example.com`` sends the
        cookie to ``app.example.com`` and ``api.example.com`` too). None (the default): no
        Domain, the cookie goes back only to the host that set it (and may be ``__Host-``).
    :param path: the cookie's ``Path`` (starts with ``/``; printable ASCII, no ``;``). Default
        ``/``.
    :param samesite: the cookie's ``SameSite``: ``"Lax"`` (the default), ``"Strict"`` or
        ``"None"`` (sent on cross-site requests too, as an app embedded in another site needs).
        ``"None"`` needs Secure: with ``secure=False`` it is refused here; with ``secure=None``,
        a cookie set on a plain-HTTP request is sent with ``SameSite=Lax`` instead (browsers
        refuse ``SameSite=None`` without Secure; it is never sent so).
    :param httponly: the cookie's ``HttpOnly`` (default True: scripts cannot read it).
    :param database_timeout: seconds one database operation may take (pool wait, connect,
        statements) before the request answers 503 (`DatabaseUnavailable`).
    :param user_id_key: the session key that ties a session to a user, so that the user's
        sessions can be listed and ended (`list_sessions`, `end_session`, `end_other_sessions`,
        `end_all_sessions`) and capped (`max_sessions_per_user`). Its value is None (no user), an
        int within 64 bits (a bool is not one), mirrored into the table's ``user_id`` column (a
        ``bigint``: the column an app's foreign key to its users table with ``ON DELETE
        CASCADE`` can reference), or a str of 1 to 255 bytes of UTF-8 without NUL (a UUID as
        its string, a username), mirrored into the ``principal`` column. A str is compared
        exactly as given (spell it one way: a UUID's case, a username's), and ``7`` and
        ``"7"`` are two different users. Anything else raises TypeError naming the key, at
        assignment in the handler.
    :param table: the sessions table's name (a plain identifier).
    :param schema: the PostgreSQL schema that holds it (a plain identifier).
    :param max_sessions_per_user: at most this many live sessions per user; a login beyond it
        ends that user's least recently used sessions (as Spring Security's
        ``maximumSessions``). None: no cap.
    :param cache: a `SessionCache` to serve repeated reads from memory; run its listener with
        ``app.cleanup_ctx.append(storage.cache_listener(connect))``. None: every read asks the
        database.
    :param durable_writes: True (the default): every write is answered only once PostgreSQL has
        flushed it to its write-ahead log. False: the writes that end nothing (a new session that
        replaces none, a data change that keeps the user_id, the touch) are answered before the
        flush (``synchronous_commit = off`` for their transaction alone), saving a disk flush per
        write; a PostgreSQL crash (not a clean restart) may then lose those of its last moments
        (up to 3 x ``wal_writer_delay``, 0.6 s by default). Everything that ends or replaces a
        session still waits for the flush, and so survives any crash, and PostgreSQL's log being
        one sequence, that flush makes every earlier write durable too. So with False, never take
        a right away by changing session data (a role, an MFA flag): end or renew the session.
        Not on Citus.
    :param citus: whether the table is distributed by Citus (``create_schema`` does it on a
        Citus coordinator). Found out from the table at the first database operation (one
        query, once per process) whatever this says: None (the default) says nothing; a value
        that disagrees with the table is logged, and the table followed. On a distributed table
        ``durable_writes=False`` is logged and ignored (with ``citus=True``, refused). Every
        operation keeps its guarantees on Citus, but for two differences Citus imposes: a write
        checks expiry against its statement's start, not the moment it gets the row's lock (a
        write that waited for a lock past the session's deadline may still land, at most
        `database_timeout` late); and what changes or ends a session also notifies the caches
        itself, in its transaction (the table has no triggers there), so a change made outside
        the library notifies nothing.
    :param max_data_bytes: the most a session's data may be, in bytes of JSON as serialized
        (compact UTF-8, before encryption; a row's sealed data is 28 bytes more). A save over it
        raises `SessionDataTooLarge` (an HTTP 413) and stores nothing, unless it is no larger
        than the data it replaces: a row written before the limit, or under a larger one, still
        loads, and saves as long as it does not grow. 64 KiB by default (16 cookies' worth, and
        what a Rails or Express session table on MySQL holds: see `DEFAULT_MAX_DATA_BYTES`).
        None: no limit.
    :param metrics: where to report counts and timings (observer.StorageMetrics), for example
        ``aiohttp_session_postgres.metrics.PrometheusMetrics()`` (the ``[metrics]`` extra); run
        ``storage.metrics_sampler()`` in ``app.cleanup_ctx`` for the gauges. None (the default):
        nothing is counted.
    :param hook_timeout: seconds one call of a hook (`on_event`) may take before it is
        cancelled and logged (positive).
    :raises ArgumentError: (a ValueError) as `check_arguments` says; for a `cookie_name` that is
        empty or not a cookie token (RFC 6265), a `user_id_key` that is empty. One that is also
        a TypeError for an argument of the wrong type: a `pool` that is not an asyncpg pool
        (``asyncpg.Pool``, as ``asyncpg.create_pool`` makes; subclasses too), a `cache` that is
        not a `SessionCache`, a `cookie_name`, `user_id_key`, `table` or `schema` that is not a
        str, a `secure` or `citus` that is not a bool or None, a `durable_writes` not a bool, a
        `domain`, `path` or `samesite` that is not a str, an `httponly` not a bool.
    :raises ValueError: for a table or schema name that is not a plain identifier.

    `cookie_params` (aiohttp-session's) reports the attributes as configured: ``secure`` None
    means decided per request, ``max_age`` is the default (`absolute_timeout`).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        authentication_keys: Sequence[bytes],
        encryption_keys: Sequence[bytes],
        next_authentication_keys: Sequence[bytes] = (),
        next_encryption_keys: Sequence[bytes] = (),
        idle_timeout: int = 1800,
        absolute_timeout: int = 43200,
        touch_interval: int = 60,
        cookie_name: str = "session",
        secure: bool | None = None,
        domain: str | None = None,
        path: str = "/",
        samesite: str = "Lax",
        httponly: bool = True,
        max_remember_timeout: int | None = None,
        remember_idle_timeout: int | None = None,
        database_timeout: float = 1.5,
        user_id_key: str = "user_id",
        table: str = "sessions",
        schema: str = "public",
        max_sessions_per_user: int | None = None,
        cache: SessionCache | None = None,
        durable_writes: bool = True,
        citus: bool | None = None,
        max_data_bytes: int | None = DEFAULT_MAX_DATA_BYTES,
        metrics: StorageMetrics | None = None,
        hook_timeout: float = 10.0,
    ) -> None:
        if citus and not durable_writes:
            # Citus refuses set_config(), which makes a write skip the flush, in a modification.
            raise ArgumentError("durable_writes=False cannot run on Citus (citus=True)", argument="durable_writes")
        self.check_arguments(
            authentication_keys=authentication_keys,
            encryption_keys=encryption_keys,
            next_authentication_keys=next_authentication_keys,
            next_encryption_keys=next_encryption_keys,
            idle_timeout=idle_timeout,
            absolute_timeout=absolute_timeout,
            touch_interval=touch_interval,
            database_timeout=database_timeout,
            max_sessions_per_user=max_sessions_per_user,
            max_data_bytes=max_data_bytes,
            max_remember_timeout=max_remember_timeout,
            remember_idle_timeout=remember_idle_timeout,
            cookie_name=cookie_name,
            secure=secure,
            domain=domain,
            path=path,
            samesite=samesite,
            httponly=httponly,
        )
        _check_others(
            pool=pool,
            cookie_name=cookie_name,
            secure=secure,
            user_id_key=user_id_key,
            table=table,
            schema=schema,
            cache=cache,
            durable_writes=durable_writes,
            citus=citus,
        )
        self._max_data_bytes = max_data_bytes
        attributes: dict[str, Any] = {"domain": domain, "path": path, "httponly": httponly, "samesite": samesite}
        super().__init__(cookie_name=cookie_name, max_age=absolute_timeout, secure=secure, **attributes)
        signer = TokenSigner(tuple(authentication_keys), tuple(next_authentication_keys))
        self._cookie = SessionCookie(cookie_name, secure=secure, signer=signer, **attributes)
        self._user_id_key = user_id_key
        self._absolute_timeout = absolute_timeout
        self._max_remember_timeout = absolute_timeout if max_remember_timeout is None else max_remember_timeout
        remember_idle = idle_timeout if remember_idle_timeout is None else remember_idle_timeout
        self._remember_idle_timeout = math.ceil(remember_idle)  # kept in an integer column
        options: dict[str, Any] = {
            "names": TableNames(table, schema),
            "idle_timeout": float(idle_timeout),
            "remember_idle_timeout": float(self._remember_idle_timeout),
            "absolute_timeout": float(absolute_timeout),
            "touch_interval": float(touch_interval),
            "database_timeout": database_timeout,
            "max_sessions_per_user": max_sessions_per_user,
            "durable_writes": durable_writes,
            "citus": citus,
            "metrics": metrics,
        }
        _check_seconds("hook_timeout", hook_timeout)
        if not hook_timeout > 0:
            raise ArgumentError("hook_timeout must be positive", argument="hook_timeout")
        if metrics is not None and not all(callable(getattr(metrics, name, None)) for name in _METRICS_METHODS):
            message = f"metrics must be a StorageMetrics (e.g. PrometheusMetrics), got {_type_name(metrics)}"
            raise ArgumentTypeError(message, argument="metrics")
        self._metrics = metrics
        if metrics is not None:
            self._cookie.bad_signature = partial(metrics.load, LOAD_BAD_SIGNATURE)
        cipher = DataCipher(tuple(encryption_keys), tuple(next_encryption_keys))
        self._rows = (
            SessionRows(pool, cipher, **options) if cache is None else CachedRows(pool, cipher, cache=cache, **options)
        )
        self._events_channel = events_channel(self._rows.names.channel)
        # The events channel's payloads are sealed with the encryption keys (hooks.py).
        self._hooks = SessionHooks(self, timeout=hook_timeout, cipher=cipher, channel=self._events_channel)

    @staticmethod
    def check_arguments(
        *,
        authentication_keys: Sequence[bytes],
        encryption_keys: Sequence[bytes],
        idle_timeout: float,
        absolute_timeout: float,
        touch_interval: float,
        database_timeout: float,
        max_sessions_per_user: int | None,
        max_data_bytes: int | None = DEFAULT_MAX_DATA_BYTES,
        next_authentication_keys: Sequence[bytes] = (),
        next_encryption_keys: Sequence[bytes] = (),
        max_remember_timeout: float | None = None,
        remember_idle_timeout: float | None = None,
        cookie_name: str = "session",
        secure: bool | None = None,
        domain: str | None = None,
        path: str = "/",
        samesite: str = "Lax",
        httponly: bool = True,
    ) -> None:
        """Check these arguments as the constructor does, without a pool: for an app that reads
        them from its configuration and wants to say what is wrong at start-up.

        :raises ArgumentError: unless ``0 <= touch_interval < idle_timeout <= absolute_timeout``;
            for a `database_timeout` that is not positive, a timeout that is not finite (NaN,
            infinity), a `max_sessions_per_user` or a `max_data_bytes` below 1, no key in
            `authentication_keys` or `encryption_keys`, an authentication key (next or not) that is
            not bytes of at least 32 (RFC 2104: a key shorter than the hash's output weakens it),
            an encryption key (next or not) that is not bytes of 16, 24 or 32 (AES-128, -192, -256).
            One that is also a TypeError for an argument of the wrong type: a timeout that is not
            an int or float (a str, a bool), a count that is not an int or None, a key list that
            is not a sequence (a list or tuple) or is a single bytes or str, a key that is not
            bytes.
        :raises ArgumentError: also unless ``absolute_timeout <= max_remember_timeout`` and
            ``idle_timeout <= remember_idle_timeout <= max_remember_timeout`` (those given); for a
            cookie attribute that breaks its rule: a `cookie_name` that is no RFC 6265 token or
            carries a ``__Host-``/``__Secure-`` prefix, a `domain` that is no plain host name, a
            `path` not starting with ``/`` or holding ``;``, control or non-ASCII characters, a
            `samesite` not ``"Lax"``, ``"Strict"`` or ``"None"``, ``samesite="None"`` with
            ``secure=False``. One that is also a TypeError for a cookie attribute of the wrong
            type, or a remember timeout that is not a number.
        """
        for argument, seconds in (
            ("idle_timeout", idle_timeout),
            ("absolute_timeout", absolute_timeout),
            ("touch_interval", touch_interval),
            ("database_timeout", database_timeout),
        ):
            _check_seconds(argument, seconds)
        _check_count("max_sessions_per_user", max_sessions_per_user)
        _check_count("max_data_bytes", max_data_bytes)
        for argument, keys in (
            ("authentication_keys", authentication_keys),
            ("next_authentication_keys", next_authentication_keys),
            ("encryption_keys", encryption_keys),
            ("next_encryption_keys", next_encryption_keys),
        ):
            _check_key_list(argument, keys)
        order = "need 0 <= touch_interval < idle_timeout <= absolute_timeout"
        if not 0 <= touch_interval < idle_timeout:
            raise ArgumentError(order, argument="touch_interval")
        if not idle_timeout <= absolute_timeout:
            raise ArgumentError(order, argument="idle_timeout")
        for argument, remember in (
            ("max_remember_timeout", max_remember_timeout),
            ("remember_idle_timeout", remember_idle_timeout),
        ):
            if remember is not None:
                _check_seconds(argument, remember)
        if max_remember_timeout is not None and not absolute_timeout <= max_remember_timeout:
            raise ArgumentError(
                "max_remember_timeout must be at least absolute_timeout (None: absolute_timeout)",
                argument="max_remember_timeout",
            )
        if remember_idle_timeout is not None:
            longest = absolute_timeout if max_remember_timeout is None else max_remember_timeout
            if not idle_timeout <= remember_idle_timeout <= longest:
                raise ArgumentError(
                    "need idle_timeout <= remember_idle_timeout <= max_remember_timeout",
                    argument="remember_idle_timeout",
                )
        for argument, message, error in check_cookie_attributes(
            cookie_name=cookie_name, domain=domain, path=path, secure=secure, httponly=httponly, samesite=samesite
        ):
            raise (ArgumentTypeError if error is TypeError else ArgumentError)(message, argument=argument)
        if database_timeout <= 0:
            raise ArgumentError("database_timeout must be positive", argument="database_timeout")
        if max_sessions_per_user is not None and max_sessions_per_user < 1:
            raise ArgumentError("max_sessions_per_user must be at least 1 (or None)", argument="max_sessions_per_user")
        if max_data_bytes is not None and max_data_bytes < 1:
            raise ArgumentError("max_data_bytes must be at least 1 (or None)", argument="max_data_bytes")
        if not authentication_keys:
            raise ArgumentError("at least one authentication key is required", argument="authentication_keys")
        for argument, keys, kind in (
            ("authentication_keys", authentication_keys, "authentication key"),
            ("next_authentication_keys", next_authentication_keys, "next authentication key"),
        ):
            for i, key in enumerate(keys, 1):
                if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
                    message = f"{kind} {i} must be bytes, at least {MIN_KEY_BYTES} long, not {_described(key)}"
                    error = ArgumentError if isinstance(key, bytes) else ArgumentTypeError
                    raise error(message, argument=argument, index=i)
        if not encryption_keys:
            raise ArgumentError("at least one encryption key is required", argument="encryption_keys")
        for argument, keys, kind in (
            ("encryption_keys", encryption_keys, "encryption key"),
            ("next_encryption_keys", next_encryption_keys, "next encryption key"),
        ):
            for i, key in enumerate(keys, 1):
                if not isinstance(key, bytes) or len(key) not in AES_KEY_BYTES:
                    message = f"{kind} {i} must be bytes, 16, 24 or 32 long (AES-128, -192, -256)"
                    message += f", not {_described(key)}"
                    if isinstance(key, bytes) and len(key) in (32, 48, 64) and _is_hex(key):
                        message += ": hex digits? decode them with bytes.fromhex()"
                    error = ArgumentError if isinstance(key, bytes) else ArgumentTypeError
                    raise error(message, argument=argument, index=i)

    @property
    def on_event(self) -> Signal[SessionEvent]:
        """The session lifecycle hooks, an aiosignal ``Signal`` as aiohttp's ``app.on_startup``:
        ``storage.on_event.append(hook)``, `hook` an ``async def hook(event: SessionEvent)``.
        Frozen when the app starts (by ``aiohttp_session_postgres.setup`` or the storage's
        listener); appending after that raises RuntimeError. Which events reach which processes,
        and how hooks are run (in a task of their own, bounded by `hook_timeout`; one that
        raises is logged): the `hooks` module. Events from other processes need the storage's
        listener: ``storage.cache_listener(connect)``, or ``storage.event_listener(connect)``
        without a cache."""
        return self._hooks.signal

    @property
    def cache(self) -> SessionCache | None:
        """The storage's `SessionCache`, or None."""
        return self._rows.cache if isinstance(self._rows, CachedRows) else None

    # -- aiohttp-session's API -------------------------------------------------------------

    def load_cookie(self, request: web.Request) -> str | None:
        """The first value of the request's session cookie (aiohttp-session's API); the storage
        itself considers every cookie of that name whose signature verifies."""
        values = self._cookie.values(request)
        return values[0] if values else None

    async def new_session(self) -> PostgresSession:
        """A new, empty session, its max_age the storage's `absolute_timeout`."""
        return PostgresSession(
            user_id_key=self._user_id_key, max_age=self._absolute_timeout, max_age_limit=self._max_remember_timeout
        )

    async def load_session(self, request: web.Request) -> PostgresSession:
        """The live session the request's cookie names, or a new empty one. A cookie that names no
        live session is left alone (never expired: the browser may have replaced it already).

        :raises DatabaseUnavailable: when the database does not answer in time.
        """
        for cookie, verified in self._cookie.candidates(request):
            try:
                found = await self._rows.load(
                    verified.id_hash, partial(client_of, request), cacheable=verified.current_key
                )
            except Unavailable as exc:
                raise DatabaseUnavailable() from exc
            if isinstance(found, Row):
                request[_REQUEST_SESSION] = verified.id_hash
                if self._metrics is not None:
                    self._metrics.load(LOAD_CACHE_HIT if type(found) is Entry else LOAD_DATABASE)
                return self._session_of(cookie, verified, found)
            if found.value:
                events.emit(found.value, verified.id_hash)
            self._gone(verified.id_hash, found)
        return await self.new_session()

    def _gone(self, id_hash: bytes, found: Gone) -> None:
        if self._metrics is not None:
            self._metrics.load(LOAD_UNDECRYPTABLE if found is Gone.UNDECRYPTABLE else LOAD_UNKNOWN)
        if found is Gone.EXPIRED_OR_UNKNOWN:  # not KNOWN_DEAD: once per session per process
            self._event(SessionEvent("expired", fingerprint_of(id_hash), reason="found_at_load"))

    def _session_of(self, cookie: str, verified: VerifiedToken, row: Row) -> PostgresSession:
        session = PostgresSession(
            id_hash=verified.id_hash,
            data=orjson.loads(row.plaintext),
            snapshot=orjson.loads(row.plaintext),  # a second decode is the cheapest deep copy
            created=row.created,
            version=row.version,
            expires=row.local(row.absolute_deadline),
            user_id_key=self._user_id_key,
            max_age=None if row.browser_session else row.lifetime,
            max_age_limit=self._max_remember_timeout,
        )
        session.sent_cookie = cookie
        if not (row.current_key and verified.current_key):
            # Read under an old key: save it again now, re-encrypted and re-signed.
            session.needs_rewrite = True
            if not verified.current_key:
                session.resigned_cookie = self._cookie.signer.resign(cookie)
        return session

    async def save_session(self, request: web.Request, response: web.StreamResponse, session: Session) -> None:
        """Save what the handler changed: a new session (a login, a renewal, a first write), a
        write, or a logout (an invalidated session).

        :raises TypeError: for a session this storage did not hand out, or a `user_id_key` value
            that is no user identity (an int within 64 bits or a str of 1 to 255 bytes: see
            `user_id_key`), naming the key.
        :raises SessionDataTooLarge: when the data would grow over `max_data_bytes` (nothing
            is saved).
        :raises DatabaseUnavailable: when the database does not answer in time.
        """
        if not isinstance(session, PostgresSession):
            raise TypeError("PostgresStorage saves only the sessions it hands out")
        try:
            if session.empty:
                await self._logout(request, response, session)
            elif session.id_hash is None:
                await self._create(request, response, session)
            else:
                await self._update(request, response, session)
        except Unavailable as exc:
            raise DatabaseUnavailable() from exc

    # -- writes ----------------------------------------------------------------------------

    async def _create(self, request: web.Request, response: web.StreamResponse, session: PostgresSession) -> None:
        replaces = session.renews if session.renews is not None else self._request_session(request)
        cookie, id_hash = self._cookie.signer.new()
        mapping = dict(session)
        plaintext = _encode(mapping)
        self._check_size(plaintext, session.size_allowed, session.renews)
        user_id = self._user_id(mapping)
        created: Created | NotCreated
        if session.renews is not None:
            # A renewal keeps the session's lifetime, unless the handler changed its max_age.
            created = await self._rows.renew(
                id_hash,
                plaintext,
                user_id=user_id,
                replaces=session.renews,
                client=client_of(request),
                lifetime=self._lifetime(session.max_age) if session.lifetime_changed else None,
            )
        else:
            check = session.precondition[0] if session.precondition is not None else None
            created = await self._rows.create(
                id_hash,
                plaintext,
                user_id=user_id,
                replaces=replaces,
                client=client_of(request),
                check=check,
                lifetime=self._lifetime(session.max_age),
            )
        if created is NotCreated.PRECONDITION:
            assert session.precondition is not None
            events.emit("session.not_created", replaces, reason=created.value)
            raise session.precondition[1]
        if isinstance(created, NotCreated):
            # The session it would replace was already used by another login or renewal (a
            # double submit, two tabs), or ended meanwhile: nothing is created, and the cookie is
            # left as it is (the browser may hold the winner's by now).
            events.emit("session.not_created", replaces, reason=created.value)
            return
        for ended in created.ended:
            events.emit("session.ended", ended, reason="max_sessions_per_user")
        if created.ended:
            await self._revoked(created.ended, user_id=user_id, reason="max_sessions_per_user", conn=None)
        session.id_hash = id_hash
        session.version = created.row.version
        session.expires = created.row.local(created.row.absolute_deadline)
        session._creation = created.row.created  # the row's (the database's clock), not this host's
        session.stored(None if created.row.browser_session else created.row.lifetime)
        session.sent_cookie = cookie
        self._set_cookie(request, response, cookie, session)
        if session.renews is not None:
            events.emit("session.renewed", id_hash, previous=events.fingerprint(replaces))
            self._event(
                SessionEvent("renewed", fingerprint_of(id_hash), user_id, previous=events.fingerprint(replaces))
            )
        else:
            events.emit("session.created", id_hash, user_id=user_id if user_id is not None else "-")
            self._event(SessionEvent("created", fingerprint_of(id_hash), user_id))

    async def _update(self, request: web.Request, response: web.StreamResponse, session: PostgresSession) -> None:
        id_hash = session.id_hash
        assert id_hash is not None
        mapping = dict(session)
        user_id = self._user_id(mapping)
        plaintext = _encode(mapping)
        self._check_size(plaintext, session.size_allowed, id_hash)
        relife = session.lifetime_changed
        saved = await self._rows.save(
            id_hash,
            plaintext,
            user_id=user_id,
            version=session.version,
            # A change of user_id (a logout by data, a switch of user) ends something: durable.
            durable=user_id != self._user_id(session.loaded),
            rebase=partial(self._rebase, session),
            lifetime=self._lifetime(session.max_age) if relife else None,
        )
        if saved is NotSaved.ENDED:
            # Ended while this request ran (logout in another tab): do not bring it back, and
            # leave the cookie alone (the browser may hold a newer one).
            events.emit("session.ended_during_request", id_hash)
            return
        if saved is NotSaved.UNKNOWN_KEY:
            # Re-written under a key this process does not have (a rotation rolling out): left alone
            # rather than replaced by data we cannot read.
            fp = events.fingerprint(id_hash)
            log.warning("session %s: newer data under an unknown key; this change is dropped", fp)
            relife = False  # nor its lifetime
        else:
            session.version = saved.version
            if relife:
                # A new lifetime: a new absolute deadline, and the cookie sent again of its kind.
                session.expires = saved.local(saved.absolute_deadline)
                session.stored(None if saved.browser_session else saved.lifetime)
        cookie = session.resigned_cookie
        if cookie is None and relife:
            cookie = session.sent_cookie
        if cookie is not None and session.expires is not None:
            # Of the kind the row keeps (a browser-session cookie stays one).
            self._set_cookie(request, response, cookie, session)
            session.sent_cookie = cookie
            session.resigned_cookie = None

    def _set_cookie(
        self, request: web.Request, response: web.StreamResponse, cookie: str, session: PostgresSession
    ) -> None:
        """The session's cookie, of the kind its row keeps: without Max-Age for a
        browser-session cookie, else with the seconds left to its absolute deadline."""
        assert session.expires is not None
        max_age = None if session.stored_browser_session else math.ceil(session.expires - time.monotonic())
        self._cookie.set(request, response, cookie, max_age)

    def _lifetime(self, max_age: int | None) -> Lifetime:
        """The lifetime a session of this `max_age` gets: None, the absolute timeout and a
        browser-session cookie; over `absolute_timeout`, a remembered session's idle timeout."""
        if max_age is None:
            return Lifetime(float(self._absolute_timeout), None, True)
        remembered = max_age > self._absolute_timeout
        return Lifetime(float(max_age), self._remember_idle_timeout if remembered else None, False)

    def _rebase(self, session: PostgresSession, latest_plaintext: bytes) -> tuple[bytes, UserId | None]:
        """Someone saved since this request loaded: its changes alone, applied to the latest."""
        latest: dict[str, Any] = orjson.loads(latest_plaintext)
        updated, deleted = session.changes()
        for key in deleted:
            latest.pop(key, None)
        latest.update(updated)
        plaintext = _encode(latest)
        # Raised under the row's lock: the merge's transaction rolls back, nothing is written.
        self._check_size(plaintext, lambda: len(latest_plaintext), session.id_hash)
        return plaintext, self._user_id(latest)

    def _check_size(self, plaintext: bytes, allowed: Callable[[], int], id_hash: bytes | None) -> None:
        """SessionDataTooLarge when `plaintext` is over max_data_bytes and over `allowed()` (the
        size of the data it replaces, asked only then)."""
        limit = self._max_data_bytes
        size = len(plaintext)
        if limit is not None and size > limit and size > allowed():
            events.emit("session.too_large", id_hash, bytes=size, limit=limit)
            raise SessionDataTooLarge(size, limit)

    async def _logout(self, request: web.Request, response: web.StreamResponse, session: PostgresSession) -> None:
        """Expires the cookie only when this request ended a session, and only that session's:
        never one whose cookie a login already used."""
        id_hash = session.id_hash if session.id_hash is not None else self._request_session(request)
        if id_hash is None:
            return
        if await self._rows.end(id_hash):
            events.emit("session.ended", id_hash)
            user_id = self._user_of(session.loaded) if session.id_hash is not None else None
            self._event(SessionEvent("ended", fingerprint_of(id_hash), user_id, reason="logout"))
            self._cookie.expire(request, response)

    def _request_session(self, request: web.Request) -> bytes | None:
        """The ID hash of the session the request came with: the one loaded, else the first
        validly signed cookie (live or not)."""
        loaded: bytes | None = request.get(_REQUEST_SESSION)
        if loaded is not None:
            return loaded
        candidates = self._cookie.candidates(request)
        return candidates[0][1].id_hash if candidates else None

    def _user_of(self, mapping: Mapping[str, Any]) -> int | str | None:
        """The user id in `mapping` for an event, or None (never raises)."""
        value = mapping.get(self._user_id_key)
        return value if isinstance(value, int | str) and not isinstance(value, bool) else None

    # -- events ----------------------------------------------------------------------------

    def _event(self, event: SessionEvent) -> None:
        """This process's event: counted, and handed to the hooks (in a task)."""
        if self._metrics is not None:
            self._metrics.event(event)
        self._hooks.send(event)

    async def _revoked(
        self, ended: tuple[bytes, ...], *, user_id: int | str | None, reason: str, conn: Connection | None
    ) -> tuple[bytes, ...]:
        """Sessions ended other than by their own request: an event each, here and, over the
        events channel, in every process that listens (in `conn`'s transaction when given, so
        they learn it only if it commits; else once it has). An announcement that fails is
        logged: the sessions are ended all the same."""
        if not ended:
            return ended
        revoked = [SessionEvent("revoked", fingerprint_of(id_hash), user_id, reason) for id_hash in ended]
        for event in revoked:
            self._event(event)
        notify = self._rows.sql.notify
        args = notify.args(channel=self._events_channel, payloads=[self._hooks.payload(e) for e in revoked])
        if conn is not None:
            await conn.execute(notify.sql, *args)
            return ended
        try:
            async with self._rows.connection() as pooled:
                await pooled.execute(notify.sql, *args)
        except _ANNOUNCE_ERRORS as exc:
            log.warning("other processes were not told of %d revoked sessions: %s", len(ended), type(exc).__name__)
        return ended

    def _swept(self, rows: int, seconds: float) -> None:
        if self._metrics is not None:
            self._metrics.swept(rows, seconds)
        self._event(SessionEvent("swept", "-", reason="sweep", count=rows))

    def _user_id(self, mapping: Mapping[str, Any]) -> UserId | None:
        value = mapping.get(self._user_id_key)
        if value is None:
            return None
        # PostgresSession refuses a bad value at assignment; this catches one changed otherwise
        # (a session's dict written to directly).
        problem = user_id_problem(value)
        if problem is not None:
            raise TypeError(f"session[{self._user_id_key!r}] ties the session to a user: {problem}, or None")
        assert isinstance(value, int | str)
        return value

    # -- a user's sessions ------------------------------------------------------------------

    async def list_sessions(
        self, user_id: UserId, *, limit: int = 100, conn: Connection | None = None
    ) -> list[SessionInfo]:
        """The user's live sessions, most recently active first.

        :param user_id: the user, as the sessions' `user_id_key` holds it: an int or a str
            (``7`` and ``"7"`` are two users).
        :param limit: at most this many.
        :param conn: run on this connection (inside the caller's transaction) instead of the pool.
        :raises TypeError: when `user_id` is neither an int nor a str (a bool is not an int).
        :raises ValueError: when `user_id` is an int outside 64 bits or a str that is empty,
            longer than 255 bytes of UTF-8, or holds NUL.
        :raises DatabaseUnavailable: when the database does not answer in time.
        """
        user_id = check_user_id(user_id, "user_id")
        try:
            return await self._rows.list_user(user_id, limit=limit, conn=conn)
        except Unavailable as exc:
            raise DatabaseUnavailable() from exc

    async def end_session(
        self, user_id: UserId, handle: str, *, conn: Connection | None = None, reason: str = "end_session"
    ) -> bool:
        """End the user's live session named `handle` (a `SessionInfo.handle`).

        :param user_id: the user (an int or a str, as for `list_sessions`).
        :param reason: the ``revoked`` event's reason (`on_event`), a few words, never data.
        :returns: False when the user has no such session: another user's handle, a malformed
            one, or one already ended.
        :raises TypeError: for a `user_id` as `list_sessions` says, or a `handle` that is not a str.
        :raises ValueError: for a `user_id` as `list_sessions` says.
        :raises DatabaseUnavailable: when the database does not answer in time.
        """
        user_id = check_user_id(user_id, "user_id")
        if not isinstance(handle, str):
            raise TypeError(f"handle must be a str, not {type(handle).__name__}")
        _check_reason(reason)
        try:
            ended = await self._rows.end_by_handle(user_id, handle, conn=conn)
            return bool(await self._revoked(_logged(ended, user_id, reason), user_id=user_id, reason=reason, conn=conn))
        except Unavailable as exc:
            raise DatabaseUnavailable() from exc

    async def end_other_sessions(
        self,
        user_id: UserId,
        keep: PostgresSession,
        *,
        conn: Connection | None = None,
        reason: str = "end_other_sessions",
    ) -> int:
        """End every session of the user but `keep` (the request's own session): "sign out
        everywhere else" (OWASP ASVS 7.5.2).

        :param user_id: the user (an int or a str, as for `list_sessions`).
        :param reason: the ``revoked`` events' reason (`on_event`), a few words, never data.
        :returns: the number ended.
        :raises TypeError: for a `user_id` as `list_sessions` says, or a `keep` that is not a
            PostgresSession.
        :raises ValueError: for a `user_id` as `list_sessions` says, or when `keep` is not a saved
            session.
        :raises DatabaseUnavailable: when the database does not answer in time.
        """
        user_id = check_user_id(user_id, "user_id")
        if not isinstance(keep, PostgresSession):
            raise TypeError(f"keep must be a PostgresSession (the request's own), not {type(keep).__name__}")
        if keep.id_hash is None:
            raise ValueError("keep must be a saved session (the request's own)")
        _check_reason(reason)
        try:
            ended = await self._rows.end_user(user_id, keep=keep.id_hash, conn=conn)
            return len(await self._revoked(_logged(ended, user_id, reason), user_id=user_id, reason=reason, conn=conn))
        except Unavailable as exc:
            raise DatabaseUnavailable() from exc

    async def end_all_sessions(
        self, user_id: UserId, *, conn: Connection | None = None, reason: str = "end_all_sessions"
    ) -> int:
        """End every session of the user (OWASP ASVS 7.4.2: after a password change or when
        disabling the account), a renewal in flight included.

        :param user_id: the user (an int or a str, as for `list_sessions`).
        :param conn: make it part of the caller's transaction (the password change itself).
            This process's hooks hear of it at once, before that transaction commits (if it rolls
            back, they heard of sessions that were not ended); other processes only once it
            commits.
        :param reason: the ``revoked`` events' reason (`on_event`), a few words, never data
            (``password_changed``, ``user_deleted``).
        :returns: the number ended.
        :raises TypeError: for a `user_id` as `list_sessions` says.
        :raises ValueError: for a `user_id` as `list_sessions` says.
        :raises DatabaseUnavailable: when the database does not answer in time.
        """
        user_id = check_user_id(user_id, "user_id")
        _check_reason(reason)
        try:
            ended = await self._rows.end_user(user_id, conn=conn)
            return len(await self._revoked(_logged(ended, user_id, reason), user_id=user_id, reason=reason, conn=conn))
        except Unavailable as exc:
            raise DatabaseUnavailable() from exc

    # -- database access and background work ---------------------------------------------

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """``async with storage.connection() as conn:`` a connection from the storage's pool
        under the storage's deadline (`database_timeout`), for the app's own queries, which then
        answer 503 on an outage as the session's do. Connections are handed out in the order
        they were asked for (the pool's own order is not fair).

        :raises DatabaseUnavailable: when the database does not answer in time.
        """
        try:
            async with self._rows.connection() as conn:
                yield conn
        except Unavailable as exc:
            raise DatabaseUnavailable() from exc

    async def sweep(self, *, batch_size: int = 1000, timeout: float = 10.0) -> int | None:
        """Delete expired sessions now (`sweep`).

        :param batch_size: rows deleted per transaction.
        :param timeout: seconds each statement may take.
        :returns: the number deleted, or None when another process is sweeping.
        """
        started = time.monotonic()
        deleted = await self._rows.sweep(batch_size=batch_size, timeout=timeout)
        if deleted is not None:
            self._swept(deleted, time.monotonic() - started)
        return deleted

    def sweeper(self, *, interval: float = 300, batch_size: int = 1000, timeout: float = 10.0) -> CleanupContext:
        """For ``app.cleanup_ctx.append(...)``: sweep every `interval` seconds (jittered
        +/-20%) while the app runs. Reads already refuse expired rows; sweeping reclaims their
        space. A failed pass is logged and tried again at the next interval."""
        return _while_running(
            lambda: self._rows.sweep_forever(
                interval=interval, batch_size=batch_size, timeout=timeout, swept=self._swept
            )
        )

    def cache_listener(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> CleanupContext:
        """For ``app.cleanup_ctx.append(...)``: keep the cache's LISTEN connection while the app
        runs. It also carries other processes' session events to this one's hooks (`on_event`),
        which it freezes as the app starts.

        :param connect: opens a new connection outside the pool, for example
            ``lambda: asyncpg.connect(dsn)`` (not through PgBouncer's transaction pooling, which
            cannot carry LISTEN).
        :raises ValueError: when the storage has no cache.
        """
        cache = self.cache
        if cache is None:
            raise ValueError("this storage was made without a cache")
        also = {self._events_channel: self._hooks.notified}
        lost = partial(self._listener_lost, "cache")
        return _while_running(
            lambda: cache.listen(connect, self._rows.names.channel, also=also, lost=lost), before=self._hooks.freeze
        )

    def event_listener(self, connect: Callable[[], Awaitable[asyncpg.Connection]]) -> CleanupContext:
        """For ``app.cleanup_ctx.append(...)`` on a storage without a cache: a LISTEN connection
        that carries other processes' session events (revocations) to this one's hooks
        (`on_event`), which it freezes as the app starts. With a cache, `cache_listener` does it.

        :param connect: as for `cache_listener`.
        :raises ValueError: when the storage has a cache (its listener carries the events).
        """
        if self.cache is not None:
            raise ValueError("this storage's cache_listener carries its events: use that alone")
        lost = partial(self._listener_lost, "events")
        return _while_running(
            lambda: self._hooks.listen(connect, self._events_channel, lost=lost), before=self._hooks.freeze
        )

    def metrics_sampler(self, *, interval: float = 60.0) -> CleanupContext:
        """For ``app.cleanup_ctx.append(...)``: every `interval` seconds while the app runs,
        report to `metrics` the live sessions in the table (a count: one query) and this
        process's cache (on or off, entries, bytes). The first sample is taken at start.

        :raises ValueError: when the storage has no `metrics`.
        """
        metrics = self._metrics
        if metrics is None:
            raise ValueError("this storage was made without metrics")
        if not interval > 0:
            raise ValueError("interval must be positive")
        return _while_running(lambda: self._sample_forever(metrics, interval))

    async def _sample_forever(self, metrics: StorageMetrics, interval: float) -> None:
        timeout = max(self._rows.database_timeout, 5.0)
        while True:
            live: int | None = None
            try:
                live = await self._rows.count_live(timeout=timeout)
            except DATABASE_ERRORS as exc:
                log.info("live sessions not counted: %s", type(exc).__name__)
            cache = self.cache
            metrics.sample(
                live_sessions=live,
                cache_enabled=None if cache is None else cache.enabled,
                cache_entries=0 if cache is None else len(cache),
                cache_bytes=0 if cache is None else cache.held_bytes,
            )
            await asyncio.sleep(interval)

    def _listener_lost(self, listener: str) -> None:
        if self._metrics is not None:
            self._metrics.listener_lost(listener)

    async def _app_started(self, app: web.Application) -> None:
        """``on_startup`` (`setup`): no hook is added once the app runs, as with aiohttp's own
        signals."""
        self._hooks.freeze()

    async def _app_cleanup(self, app: web.Application) -> None:
        """``on_cleanup`` (`setup`): the hooks still running get `hook_timeout` to finish."""
        await self._hooks.drain()


async def get_session(request: web.Request) -> PostgresSession:
    """``aiohttp_session.get_session``, typed: the request's session (loaded on the first call).

    :raises TypeError: when the app's storage is not a PostgresStorage.
    :raises DatabaseUnavailable: when the database does not answer in time.
    """
    session = await aiohttp_session.get_session(request)
    if not isinstance(session, PostgresSession):
        raise TypeError("get_session needs aiohttp_session.setup(app, PostgresStorage(...))")
    return session


async def new_session(request: web.Request) -> PostgresSession:
    """``aiohttp_session.new_session``, typed: a fresh session for a login, replacing the
    request's (which the save then uses up, in the statement that creates this one).

    :raises TypeError: when the app's storage is not a PostgresStorage.
    """
    session = await aiohttp_session.new_session(request)
    if not isinstance(session, PostgresSession):
        raise TypeError("new_session needs aiohttp_session.setup(app, PostgresStorage(...))")
    return session


async def renew_session(request: web.Request) -> PostgresSession:
    """Give the request's session a new ID, keeping its data, creation time and absolute deadline
    (OWASP: renew the session ID on any privilege change, against fixation). The old ID stops
    working when the response is saved, in the same statement that creates the new one; if the
    session ended meanwhile, nothing is created. On a request without a saved session
    (anonymous) it is `new_session` with the data copied: check that the user is signed in
    before granting anything.

    :returns: the new session, to change further.
    :raises TypeError: when the app's storage is not a PostgresStorage.
    :raises DatabaseUnavailable: when the database does not answer in time.
    """
    old = await get_session(request)
    fresh = await new_session(request)
    fresh.update(old)
    fresh.keep_lifetime_of(old)
    fresh.renews = old.id_hash
    fresh.allowed_size = old.size_allowed()  # may keep a size the limit grandfathers
    return fresh


def _check_others(
    *,
    pool: object,
    cookie_name: object,
    secure: object,
    user_id_key: object,
    table: object,
    schema: object,
    cache: object,
    durable_writes: object,
    citus: object,
) -> None:
    """The constructor's checks beyond `check_arguments`'s (see PostgresStorage's :raises:)."""
    if not isinstance(pool, asyncpg.Pool):
        hint = ": pass the pool, not a connection" if isinstance(pool, asyncpg.Connection) else ""
        message = f"pool must be an asyncpg pool (asyncpg.create_pool), got {_type_name(pool)}{hint}"
        raise ArgumentTypeError(message, argument="pool")
    if cache is not None and not isinstance(cache, SessionCache):
        raise ArgumentTypeError(f"cache must be a SessionCache or None, got {_type_name(cache)}", argument="cache")
    names = {"cookie_name": cookie_name, "user_id_key": user_id_key, "table": table, "schema": schema}
    for argument, value in names.items():
        if not isinstance(value, str):
            raise ArgumentTypeError(f"{argument} must be a str, got {_type_name(value)}", argument=argument)
    if not _COOKIE_NAME.fullmatch(str(cookie_name)):
        message = f"cookie_name {cookie_name!r} must be a cookie token: letters, digits and !#$%&'*+-.^_`|~"
        raise ArgumentError(message, argument="cookie_name")
    if not user_id_key:
        raise ArgumentError("user_id_key must not be empty", argument="user_id_key")
    for argument, value in (("secure", secure), ("citus", citus)):
        if value is not None and not isinstance(value, bool):
            message = f"{argument} must be True, False or None, got {_type_name(value)}"
            raise ArgumentTypeError(message, argument=argument)
    if not isinstance(durable_writes, bool):
        message = f"durable_writes must be True or False, got {_type_name(durable_writes)}"
        raise ArgumentTypeError(message, argument="durable_writes")


def _described(key: object) -> str:
    """A key as an error message may name it: its type and length, never its value."""
    if isinstance(key, bytes):
        return f"{len(key)} bytes"
    if isinstance(key, str):
        return f"a str of {len(key)} characters (keys are bytes: .encode() or bytes.fromhex())"
    return f"a {type(key).__name__}"


def _is_hex(key: bytes) -> bool:
    return all(c in b"0123456789abcdefABCDEF" for c in key)


def client_of(request: web.BaseRequest) -> Client:
    """The client details a session keeps: address and User-Agent, as valid text."""
    return Client(
        valid_text(request.remote or "", MAX_IP_CHARS),
        valid_text(request.headers.get(hdrs.USER_AGENT, ""), MAX_USER_AGENT_CHARS),
    )


def valid_text(value: str, max_chars: int) -> str:
    """`value` cut to `max_chars`, as text PostgreSQL accepts: aiohttp hands over a header byte
    that is not UTF-8 as a lone surrogate, which asyncpg cannot encode (DataError), and a text
    column cannot hold NUL. Both become U+FFFD."""
    value = value[:max_chars].replace("\x00", "\ufffd")
    if value.isascii():
        return value
    return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in value)


def _encode(mapping: dict[str, Any]) -> bytes:
    # Nested values changed in place bypass the check at assignment; this is where they fail.
    # The encoder alone would let some through, changed: tuples become lists, NaN becomes null.
    for key, value in mapping.items():
        check_json_value(key, value)
    return orjson.dumps(mapping)


def _logged(ended: tuple[bytes, ...], user_id: UserId, reason: str) -> tuple[bytes, ...]:
    for id_hash in ended:
        events.emit("session.revoked", id_hash, user_id=user_id, reason=reason)
    return ended


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not 0 < len(reason) <= 100:
        raise ValueError("reason must be a str of 1 to 100 characters")


def _while_running(
    work: Callable[[], Coroutine[Any, Any, None]], *, before: Callable[[], None] | None = None
) -> CleanupContext:
    """A cleanup_ctx entry that runs `work()` as a task for as long as the app runs (`before()`
    first, at start)."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        if before is not None:
            before()
        task = asyncio.create_task(work())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    return context
