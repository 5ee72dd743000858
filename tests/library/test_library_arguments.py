"""Every argument error the library documents, with the message that names the problem: what a
developer wiring the store into their app meets first. (Mutation testing found these untested:
a message or a bound could change and no test would notice.)"""

from __future__ import annotations

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
        ({"authentication_keys": [AUTH_KEY, b"short"]}, f"authentication key 2 {AUTH}"),
        ({"authentication_keys": ["a str, not bytes, of 32 or more"]}, f"authentication key 1 {AUTH}"),
        ({"encryption_keys": []}, "at least one encryption key is required"),
        ({"encryption_keys": [ENC_KEY, os.urandom(20)]}, f"encryption key 2 {AES}"),
        ({"encryption_keys": ["0123456789abcdef"]}, f"encryption key 1 {AES}"),
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
        "no-auth-key", "short-auth-key", "str-auth-key", "no-enc-key", "bad-enc-length", "str-enc-key",
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
