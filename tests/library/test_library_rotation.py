"""Rotating keys across a rolling deploy, through the library alone (issue 20, item 4): a key is
deployed as a next key (verifies, decrypts, never signs or encrypts) before any process puts it
first, so two storages on neighbouring steps of the rotation keep each other's users signed in,
whichever of them re-signs a cookie or re-encrypts a row on read. The rotation that puts a new key
first straight away (the README's before) signs users out; tests/app/test_key_rotation.py does the
same with two `python -m app serve` processes.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import ArgumentError, PostgresStorage
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.tokens import TokenSigner
from support.rotation import (
    KINDS,
    NEW_AUTH,
    NEW_ENC,
    OLD_AUTH,
    OLD_ENC,
    Endpoint,
    Keys,
    assert_rewrites,
    neighbours,
    one_step,
    sign_outs,
    two_step,
)
from support.storage_harness import cookies, id_hash, open_client

ClientMaker = Callable[..., Awaitable[TestClient]]
USER = {"user_id": None, "name": "alice"}


def endpoint(name: str, client: TestClient) -> Endpoint:
    async def login() -> str:
        response = await client.post("/start", json=USER)
        assert response.status == 200, await response.text()
        return response.cookies["session"].value

    async def read(cookie: str) -> tuple[bool, str | None]:
        response = await client.get("/data", headers=cookies(cookie))
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        morsel = response.cookies.get("session")
        return body["data"] == USER, morsel.value if morsel is not None else None

    return Endpoint(name, login, read)


async def endpoints(
    aiohttp_client: ClientMaker, url: str, steps: list[tuple[str, Keys]], *, cache: bool
) -> list[Endpoint]:
    made = []
    for name, keys in steps:
        client, _ = await open_client(aiohttp_client, url, pool_max=2, cache=cache, **keys.storage_options())
        made.append(endpoint(name, client))
    return made


def version_in(pg: asyncpg.Connection) -> Callable[[str], Awaitable[int | None]]:
    async def version(cookie: str) -> int | None:
        return await pg.fetchval("SELECT version FROM sessions WHERE id_hash = $1", id_hash(cookie))

    return version


# -- the signer and the cipher ---------------------------------------------------------------


def test_a_next_key_verifies_and_never_signs_and_its_cookies_are_not_re_signed() -> None:
    step1 = TokenSigner((OLD_AUTH,), (NEW_AUTH,))
    step2 = TokenSigner((NEW_AUTH, OLD_AUTH))
    cookie, _ = step1.new()
    assert TokenSigner((OLD_AUTH,)).verify(cookie) is not None  # signed with the first key
    assert TokenSigner((NEW_AUTH,)).verify(cookie) is None
    from_step2, id_hash2 = step2.new()
    verified = step1.verify(from_step2)
    assert verified is not None
    assert verified.id_hash == id_hash2
    assert verified.current_key, "a cookie under a next key is not to be re-signed with an older one"
    old = step2.verify(cookie)
    assert old is not None
    assert not old.current_key  # under a later key of the list: re-signed with the first
    assert TokenSigner((NEW_AUTH,)).verify(step2.resign(cookie)) is not None
    # A next key that is also among the keys counts as one of them (position decides).
    both = TokenSigner((NEW_AUTH, OLD_AUTH), (NEW_AUTH, OLD_AUTH))
    assert both.verify(step2.new()[0]).current_key  # type: ignore[union-attr]
    assert not both.verify(cookie).current_key  # type: ignore[union-attr]


def test_a_next_key_opens_and_never_seals_and_what_it_opens_is_not_resealed() -> None:
    id_hash = os.urandom(32)
    step1 = DataCipher((OLD_ENC,), (NEW_ENC,))
    step2 = DataCipher((NEW_ENC, OLD_ENC))
    sealed = step1.seal(b"{}", id_hash)
    assert DataCipher((OLD_ENC,)).open(sealed, id_hash) == (b"{}", True)
    assert DataCipher((NEW_ENC,)).open(sealed, id_hash) is None
    assert step1.open(step2.seal(b"{}", id_hash), id_hash) == (b"{}", True)
    assert step2.open(sealed, id_hash) == (b"{}", False)
    both = DataCipher((NEW_ENC, OLD_ENC), (NEW_ENC, OLD_ENC))
    assert both.open(sealed, id_hash) == (b"{}", False)


@pytest.mark.parametrize(
    ("options", "argument", "index", "message"),
    [
        (
            {"next_authentication_keys": [NEW_AUTH, b"short"]},
            "next_authentication_keys",
            2,
            "next authentication key 2",
        ),
        ({"next_authentication_keys": ["a str, not bytes, of 32 or more"]}, "next_authentication_keys", 1, "next"),
        ({"next_encryption_keys": [os.urandom(20)]}, "next_encryption_keys", 1, "next encryption key 1 must be bytes"),
    ],
    ids=["short-next-auth", "str-next-auth", "bad-next-enc"],
)
def test_next_keys_follow_the_rules_of_their_lists(
    options: dict[str, Any], argument: str, index: int, message: str
) -> None:
    arguments: dict[str, Any] = {
        "authentication_keys": [OLD_AUTH],
        "encryption_keys": [OLD_ENC],
        "idle_timeout": 1800,
        "absolute_timeout": 43200,
        "touch_interval": 60,
        "database_timeout": 1.5,
        "max_sessions_per_user": None,
    }
    with pytest.raises(ArgumentError, match=message) as raised:
        PostgresStorage.check_arguments(**{**arguments, **options})
    assert (raised.value.argument, raised.value.index) == (argument, index)
    PostgresStorage.check_arguments(**arguments, next_authentication_keys=[NEW_AUTH], next_encryption_keys=[NEW_ENC])


# -- storages on neighbouring steps, one database ---------------------------------------------


@pytest.mark.parametrize("cache", [False, True], ids=["cache-off", "cache-on"])
@pytest.mark.parametrize("kind", KINDS)
async def test_storages_on_neighbouring_steps_keep_each_others_users_signed_in(
    aiohttp_client: ClientMaker, lib_url: str, lib_pg: asyncpg.Connection, kind: str, cache: bool
) -> None:
    steps = two_step(kind)
    made = await endpoints(aiohttp_client, lib_url, steps, cache=cache)
    for a, b in neighbours(made):
        problems, hops = await sign_outs(a, b, version=version_in(lib_pg))
        assert not problems, (kind, problems)
        assert_rewrites(kind, a, b, hops)


@pytest.mark.parametrize("kind", KINDS)
async def test_the_one_step_rotation_signs_out_users_of_the_newer_step(
    aiohttp_client: ClientMaker, lib_url: str, kind: str
) -> None:
    """What the two-step rotation prevents: with the new key put first straight away, a storage
    still on the old keys cannot read what the new one signed or encrypted (flask-login#41)."""
    (before, keys_before), (after, keys_after) = one_step(kind)[:2]
    made = await endpoints(aiohttp_client, lib_url, [(before, keys_before), (after, keys_after)], cache=False)
    problems, _ = await sign_outs(*made)
    assert problems == [
        f"logged in through {before}, signed out by {before}",  # after the newer one re-wrote it
        f"logged in through {after}, signed out by {before}",
    ]
