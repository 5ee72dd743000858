"""Every argument error the library documents, with the message that names the problem: what a
developer wiring the store into their app meets first. (Mutation testing found these untested:
a message or a bound could change and no test would notice.)"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp_session
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, make_mocked_request
from aiohttp_session import Session, SimpleCookieStorage
from aiohttp_session_postgres import (
    ArgumentError,
    PostgresSession,
    PostgresStorage,
    SessionCache,
    get_session,
    new_session,
    renew_session,
    schema_sql,
)
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.tokens import MIN_KEY_BYTES, TokenSigner
from support.keys import AUTH_KEY, ENC_KEY


@pytest.fixture
async def pool(server_url: str) -> asyncpg.Pool:
    """A real pool, never connected: every check comes before the pool is used."""
    return asyncpg.create_pool(server_url, min_size=0, max_size=5)


def storage(pool: asyncpg.Pool, **options: Any) -> PostgresStorage:
    keys = {"authentication_keys": [AUTH_KEY], "encryption_keys": [ENC_KEY]}
    return PostgresStorage(pool, **{**keys, **options})


ORDER = "need 0 <= touch_interval < idle_timeout <= absolute_timeout"
AUTH = f"must be bytes, at least {MIN_KEY_BYTES} long"
AES = "must be bytes, 16, 24 or 32 long (AES-128, -192, -256)"
NAME = "must be a plain identifier: letters, digits and _"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"authentication_keys": []}, "at least one authentication key is required"),
        ({"authentication_keys": [AUTH_KEY, b"short"]}, f"authentication key 2 {AUTH}, not 5 bytes"),
        (
            {"authentication_keys": ["a str, not bytes, of 32 or more"]},
            f"authentication key 1 {AUTH}, not a str of 31 characters (keys are bytes: .encode() or bytes.fromhex())",
        ),
        ({"encryption_keys": []}, "at least one encryption key is required"),
        ({"encryption_keys": [ENC_KEY, os.urandom(20)]}, f"encryption key 2 {AES}, not 20 bytes"),
        (
            {"encryption_keys": ["0123456789abcdef"]},
            f"encryption key 1 {AES}, not a str of 16 characters (keys are bytes: .encode() or bytes.fromhex())",
        ),
        (
            {"encryption_keys": [b"00" * 32]},
            f"encryption key 1 {AES}, not 64 bytes: hex digits? decode them with bytes.fromhex()",
        ),
        ({"touch_interval": 1800}, ORDER),
        ({"touch_interval": -1}, ORDER),
        ({"idle_timeout": 50000}, ORDER),
        ({"database_timeout": 0}, "database_timeout must be positive"),
        ({"max_sessions_per_user": 0}, "max_sessions_per_user must be at least 1 (or None)"),
        ({"max_data_bytes": 0}, "max_data_bytes must be at least 1 (or None)"),
        ({"table": "sessions; DROP TABLE users"}, f"table name 'sessions; DROP TABLE users' {NAME}"),
        ({"schema": "a-b"}, f"schema name 'a-b' {NAME}"),
    ],
    ids=[
        "no-auth-key", "short-auth-key", "str-auth-key", "no-enc-key", "bad-enc-length", "str-enc-key", "hex-enc-key",
        "touch-not-below-idle", "negative-touch", "idle-above-absolute", "zero-db-timeout", "zero-cap",
        "zero-data-bytes", "bad-table", "bad-schema",
    ],
)  # fmt: skip
async def test_the_storage_refuses_bad_arguments_naming_the_problem(
    pool: asyncpg.Pool, options: dict[str, Any], message: str
) -> None:
    # The whole message, not a part: a developer reads it, and a changed one is a changed API.
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        storage(pool, **options)


@pytest.mark.parametrize(
    ("options", "argument", "index"),
    [
        ({"authentication_keys": [AUTH_KEY, b"short"]}, "authentication_keys", 2),
        ({"authentication_keys": []}, "authentication_keys", None),
        ({"encryption_keys": [os.urandom(20)]}, "encryption_keys", 1),
        ({"encryption_keys": []}, "encryption_keys", None),
        ({"touch_interval": 1800}, "touch_interval", None),
        ({"idle_timeout": 50000}, "idle_timeout", None),
        ({"database_timeout": 0}, "database_timeout", None),
        ({"max_sessions_per_user": 0}, "max_sessions_per_user", None),
        ({"max_data_bytes": -1}, "max_data_bytes", None),
    ],
)
async def test_an_argument_error_names_the_argument_and_the_key(
    pool: asyncpg.Pool, options: dict[str, Any], argument: str, index: int | None
) -> None:
    # What an app's configuration maps to its own setting's name (the demo's does).
    with pytest.raises(ArgumentError) as raised:
        storage(pool, **options)
    assert (raised.value.argument, raised.value.index) == (argument, index)


async def test_the_storage_accepts_its_boundaries(pool: asyncpg.Pool) -> None:
    # The edges each rule allows: no touch at all, idle equal to absolute, a cap of one, every
    # AES key size, a key of exactly the minimum length.
    edges = {"idle_timeout": 3600, "absolute_timeout": 3600, "max_sessions_per_user": 1, "database_timeout": 0.01}
    storage(pool, touch_interval=0, max_data_bytes=1, **edges)
    storage(pool, max_data_bytes=None)  # no limit
    for size in (16, 24, 32):
        storage(pool, encryption_keys=[os.urandom(size)])
    storage(pool, authentication_keys=[os.urandom(MIN_KEY_BYTES)])
    TokenSigner((os.urandom(MIN_KEY_BYTES),))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_entries": 0}, "max_entries must be at least 1 and max_age positive"),
        ({"max_age": 0}, "max_entries must be at least 1 and max_age positive"),
        ({"max_bytes": 511}, "max_bytes must be at least 512 (one entry's overhead)"),
    ],
    ids=["no-entries", "zero-age", "bytes-below-one-entry"],
)
def test_the_cache_refuses_bad_arguments(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        SessionCache(**options)
    SessionCache(max_entries=1, max_bytes=512, max_age=0.001)  # the smallest allowed


@pytest.mark.parametrize(
    ("partitions", "ok"), [(1, False), (2, True), (64, True), (65, False), (2.5, False), (True, False)]
)
def test_a_partitioned_table_has_2_to_64_partitions(partitions: Any, ok: bool) -> None:
    if ok:
        assert schema_sql(partitions=partitions).count("PARTITION OF") == partitions
    else:
        with pytest.raises(ValueError, match=r"^partitions must be an integer from 2 to 64$"):
            schema_sql(partitions=partitions)


def test_sealed_data_opens_whatever_its_length() -> None:
    # Even empty plaintext (28 bytes sealed: nonce and tag) opens; only shorter data cannot be ours.
    cipher = DataCipher((ENC_KEY,))
    row = os.urandom(32)
    for plaintext in (b"", b"x", b"{}" * 1000):
        assert cipher.open(cipher.seal(plaintext, row), row) == (plaintext, True)


async def test_the_storage_methods_refuse_what_they_cannot_do(pool: asyncpg.Pool) -> None:
    """Errors a developer meets before any database work, whole."""
    plain = storage(pool)
    with pytest.raises(ValueError, match=r"^this storage was made without a cache$"):
        plain.cache_listener(lambda: asyncpg.connect())
    with pytest.raises(ValueError, match=r"^keep must be a saved session \(the request's own\)$"):
        await plain.end_other_sessions(1, PostgresSession())
    request = make_mocked_request("GET", "/")
    with pytest.raises(TypeError, match=r"^PostgresStorage saves only the sessions it hands out$"):
        await plain.save_session(request, web.Response(), Session("x", data=None, new=True))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (get_session, "get_session needs aiohttp_session.setup(app, PostgresStorage(...))"),
        (new_session, "new_session needs aiohttp_session.setup(app, PostgresStorage(...))"),
        (renew_session, "get_session needs aiohttp_session.setup(app, PostgresStorage(...))"),
    ],
    ids=["get_session", "new_session", "renew_session"],
)
async def test_the_typed_helpers_refuse_another_storage(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    call: Callable[[web.Request], Awaitable[PostgresSession]],
    message: str,
) -> None:
    """get_session, new_session and renew_session promise a PostgresSession: under another
    storage they raise TypeError saying what is missing."""

    async def handler(request: web.Request) -> web.Response:
        with pytest.raises(TypeError) as raised:
            await call(request)
        return web.Response(text=str(raised.value))

    app = web.Application()
    aiohttp_session.setup(app, SimpleCookieStorage())
    app.router.add_get("/", handler)
    client = await aiohttp_client(app)
    response = await client.get("/")
    assert (response.status, await response.text()) == (200, message)


# -- arguments of the wrong type: a TypeError (an ArgumentError too) naming the argument ------------

KEYS = "must be a list of keys (bytes), newest first: got"
SECONDS = "must be a number of seconds (int or float), got"
COUNT = "must be an int or None, got"
FINITE = "must be a finite number of seconds, got"
TOKEN = "must be a cookie token: letters, digits and !#$%&'*+-.^_`|~"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"authentication_keys": AUTH_KEY}, f"{KEYS} a single bytes"),
        ({"encryption_keys": ENC_KEY}, f"{KEYS} a single bytes"),
        ({"encryption_keys": ENC_KEY.hex()}, f"{KEYS} a single str"),
        ({"next_authentication_keys": AUTH_KEY}, f"{KEYS} a single bytes"),
        ({"next_encryption_keys": bytearray(ENC_KEY)}, f"{KEYS} a single bytearray"),
        ({"authentication_keys": None}, f"{KEYS} None"),
        ({"authentication_keys": {AUTH_KEY}}, f"{KEYS} set"),
        ({"authentication_keys": iter([AUTH_KEY])}, f"{KEYS} list_iterator"),
        ({"idle_timeout": "1800"}, f"{SECONDS} str"),
        ({"absolute_timeout": None}, f"{SECONDS} None"),
        ({"touch_interval": False}, f"{SECONDS} bool"),
        ({"database_timeout": "1.5"}, f"{SECONDS} str"),
        ({"max_sessions_per_user": 2.5}, f"{COUNT} float"),
        ({"max_sessions_per_user": True}, f"{COUNT} bool"),
        ({"max_data_bytes": "65536"}, f"{COUNT} str"),
        ({"cache": SessionCache}, "must be a SessionCache or None, got type"),
        ({"cache": {}}, "must be a SessionCache or None, got dict"),
        ({"cookie_name": b"session"}, "must be a str, got bytes"),
        ({"user_id_key": 1}, "must be a str, got int"),
        ({"table": None}, "must be a str, got None"),
        ({"schema": ["public"]}, "must be a str, got list"),
        ({"secure": "yes"}, "must be True, False or None, got str"),
        ({"citus": 1}, "must be True, False or None, got int"),
        ({"durable_writes": None}, "must be True or False, got None"),
    ],
    ids=[
        "single-auth-key", "single-enc-key", "enc-key-as-hex-str", "single-next-auth-key", "single-next-enc-bytearray",
        "no-auth-list", "auth-key-set", "auth-key-iterator", "str-idle", "none-absolute", "bool-touch",
        "str-db-timeout", "float-cap", "bool-cap", "str-data-bytes", "cache-class", "cache-dict", "bytes-cookie-name",
        "int-user-id-key", "none-table", "list-schema", "str-secure", "int-citus", "none-durable",
    ],
)  # fmt: skip
async def test_an_argument_of_the_wrong_type_is_a_type_error_naming_it(
    pool: asyncpg.Pool, options: dict[str, Any], message: str
) -> None:
    # A bytes is itself a sequence (of ints): without the check, a single key passed for a list
    # was read as 32 "keys" and refused with a message about key 1 being an int.
    [argument] = options
    with pytest.raises(TypeError, match=f"^{re.escape(f'{argument} {message}')}$") as raised:
        storage(pool, **options)
    assert isinstance(raised.value, ArgumentError)  # what an app's configuration catches
    assert raised.value.argument == argument


@pytest.mark.parametrize(
    ("options", "index", "message"),
    [
        (
            {"authentication_keys": [AUTH_KEY.decode()]},
            1,
            f"authentication key 1 {AUTH}, not a str of {len(AUTH_KEY)} characters"
            " (keys are bytes: .encode() or bytes.fromhex())",
        ),
        ({"encryption_keys": [ENC_KEY, None]}, 2, f"encryption key 2 {AES}, not a NoneType"),
        ({"next_encryption_keys": [bytearray(ENC_KEY)]}, 1, f"next encryption key 1 {AES}, not a bytearray"),
    ],
    ids=["str-auth-key", "none-enc-key", "bytearray-next-enc-key"],
)
async def test_a_key_that_is_not_bytes_is_a_type_error_naming_its_list_and_place(
    pool: asyncpg.Pool, options: dict[str, Any], index: int, message: str
) -> None:
    [argument] = options
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$") as raised:
        storage(pool, **options)
    assert isinstance(raised.value, ArgumentError)
    assert (raised.value.argument, raised.value.index) == (argument, index)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"idle_timeout": math.inf, "absolute_timeout": math.inf}, f"idle_timeout {FINITE} inf"),
        ({"absolute_timeout": math.inf}, f"absolute_timeout {FINITE} inf"),
        ({"touch_interval": math.nan}, f"touch_interval {FINITE} nan"),
        ({"database_timeout": math.nan}, f"database_timeout {FINITE} nan"),
        ({"database_timeout": math.inf}, f"database_timeout {FINITE} inf"),
        ({"cookie_name": ""}, f"cookie_name '' {TOKEN}"),
        ({"cookie_name": "my session"}, f"cookie_name 'my session' {TOKEN}"),
        ({"cookie_name": "a;b=c"}, f"cookie_name 'a;b=c' {TOKEN}"),
        ({"user_id_key": ""}, "user_id_key must not be empty"),
    ],
    ids=["inf-idle", "inf-absolute", "nan-touch", "nan-db-timeout", "inf-db-timeout", "empty-cookie-name",
         "cookie-name-with-space", "cookie-name-with-separators", "empty-user-id-key"],
)  # fmt: skip
async def test_a_value_outside_its_rule_is_a_value_error_naming_it(
    pool: asyncpg.Pool, options: dict[str, Any], message: str
) -> None:
    # NaN compares false with everything and passed every bound; infinity made a cookie that
    # aiohttp could not write.
    with pytest.raises(ArgumentError, match=f"^{re.escape(message)}$") as raised:
        storage(pool, **options)
    assert not isinstance(raised.value, TypeError)
    assert raised.value.argument == message.split()[0]


@pytest.mark.parametrize(
    ("bad_pool", "message"),
    [
        (None, "pool must be an asyncpg pool (asyncpg.create_pool), got None"),
        ("postgresql://localhost/db", "pool must be an asyncpg pool (asyncpg.create_pool), got str"),
        (object(), "pool must be an asyncpg pool (asyncpg.create_pool), got object"),
    ],
    ids=["none", "dsn", "object"],
)
def test_a_pool_that_is_not_an_asyncpg_pool_is_a_type_error(bad_pool: object, message: str) -> None:
    # Before: None failed with AttributeError ('NoneType' object has no attribute 'get_max_size').
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$") as raised:
        storage(bad_pool)  # type: ignore[arg-type]
    assert isinstance(raised.value, ArgumentError)
    assert raised.value.argument == "pool"


async def test_a_connection_for_the_pool_says_to_pass_the_pool(server_url: str) -> None:
    conn = await asyncpg.connect(server_url)
    try:
        message = "pool must be an asyncpg pool (asyncpg.create_pool), got Connection: pass the pool, not a connection"
        with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
            storage(conn)  # type: ignore[arg-type]
    finally:
        await conn.close()


async def test_a_subclass_of_asyncpg_pool_is_a_pool(lib_url: str) -> None:
    """asyncpg.Pool is asyncpg.pool.Pool; an app's own subclass of it (instrumented, say) is
    accepted and serves the storage. Objects that only look like a pool are not: the storage
    relies on the pool's acquire/release, sizes and expire_connections."""

    class CountingPool(asyncpg.Pool):
        acquired = 0

        async def acquire(self, *, timeout: float | None = None) -> Any:
            CountingPool.acquired += 1
            return await super().acquire(timeout=timeout)

    options = {"max_queries": 50_000, "max_inactive_connection_lifetime": 300.0, "loop": None}
    classes = {"connection_class": asyncpg.Connection, "record_class": asyncpg.Record}
    sub = CountingPool(lib_url, min_size=0, max_size=2, **options, **classes)
    async with sub, storage(sub).connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 0
    assert CountingPool.acquired == 1


def test_check_arguments_refuses_the_wrong_types_as_the_constructor_does() -> None:
    # The demo's configuration calls it without a pool, and catches ArgumentError.
    arguments: dict[str, Any] = {
        "authentication_keys": [AUTH_KEY],
        "encryption_keys": [ENC_KEY],
        "idle_timeout": 1800,
        "absolute_timeout": 43200,
        "touch_interval": 60,
        "database_timeout": 1.5,
        "max_sessions_per_user": None,
    }
    PostgresStorage.check_arguments(**arguments)
    PostgresStorage.check_arguments(**{**arguments, "authentication_keys": (AUTH_KEY,), "database_timeout": 2})
    for wrong in ({"encryption_keys": ENC_KEY}, {"idle_timeout": "1800"}, {"max_data_bytes": 1.0}):
        with pytest.raises(TypeError) as raised:
            PostgresStorage.check_arguments(**{**arguments, **wrong})
        assert isinstance(raised.value, ArgumentError)
        assert raised.value.argument == next(iter(wrong))
    with pytest.raises(ArgumentError) as value_error:
        PostgresStorage.check_arguments(**{**arguments, "database_timeout": math.nan})
    assert value_error.value.argument == "database_timeout"


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ({"table": 1}, "table name must be a str, got int"),
        ({"schema": None}, "schema name must be a str, got NoneType"),
    ],
)
def test_the_schema_functions_refuse_a_name_that_is_not_a_str(names: dict[str, Any], message: str) -> None:
    # Before: re's "expected string or bytes-like object", naming neither argument.
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        schema_sql(**names)
