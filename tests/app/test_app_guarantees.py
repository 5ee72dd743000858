"""Guarantees of the demo app that a mutation of the code once left standing: each test here fails
when the line it names is changed (issue 14's table), through the real app and a real PostgreSQL.
The library's are in tests/library/test_guarantees.py.

- the work of a login for a user who does not exist: one scrypt derivation at the configured cost,
  as for one who does (passwords.PasswordHasher.derivations);
- the scrypt parameters stored with a new hash are the configured ones, and the hash is really
  derived with them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from support.demo import TEST_PASSWORD_COST, login, make_settings, run_app_command

from app.appkeys import HASHER
from app.config import Settings

MakeClient = Callable[[Settings], Awaitable[TestClient]]


# -- hash work --------------------------------------------------------------------------------------


async def test_a_login_costs_one_derivation_at_the_configured_cost_whoever_tries(
    make_client: MakeClient, db_url: str, user: tuple[str, str]
) -> None:
    client = await make_client(make_settings(db_url))
    hasher = client.app[HASHER]
    attempts = [
        user,  # known, right password
        (user[0], "wrong"),  # known, wrong password
        ("nobody", "whatever"),  # no such user: the dummy hash
        ("no\x00body", "x"),  # not a possible username: still hashed
        (user[0], "x" * 5000),  # an overlong password: still hashed (against the dummy)
    ]
    for username, password in attempts:
        before = hasher.derivations.copy()
        await client.post("/login", data={"username": username, "password": password}, allow_redirects=False)
        done = hasher.derivations - before
        assert done == {TEST_PASSWORD_COST: 1}, (username, dict(done))


async def test_a_hash_from_before_the_cost_was_raised_is_padded_to_the_configured_cost(
    make_client: MakeClient, db_url: str, user: tuple[str, str]
) -> None:
    # `user` was hashed at TEST_PASSWORD_COST; the app now asks for more. A wrong password for
    # them must cost at least what a wrong guess at an unknown name costs.
    raised = TEST_PASSWORD_COST + 2
    client = await make_client(make_settings(db_url, password_cost=raised))
    hasher = client.app[HASHER]
    for username, expected in ((user[0], {TEST_PASSWORD_COST: 1, raised: 1}), ("nobody", {raised: 1})):
        before = hasher.derivations.copy()
        await client.post("/login", data={"username": username, "password": "wrong"}, allow_redirects=False)
        assert hasher.derivations - before == expected, username
    await login(client, *user)  # and the right password still signs in
    assert "Hello" in await (await client.get("/")).text()


@pytest.mark.parametrize("cost", [5, 6])
async def test_a_new_hash_is_derived_with_the_configured_parameters(db_url: str, cost: int) -> None:
    password = "correct horse battery"
    result = await run_app_command(
        "user", "add", "carol", database_url=db_url, stdin=password.encode() + b"\n", PASSWORD_HASH_COST=str(cost)
    )
    assert result[0] == 0, result
    conn = await asyncpg.connect(db_url)
    try:
        stored = await conn.fetchval("SELECT password_hash FROM users WHERE username = 'carol'")
    finally:
        await conn.close()
    _, scheme, params, salt, digest = stored.split("$")
    assert (scheme, params) == ("scrypt", f"ln={cost},r=8,p=1")
    # Derived with exactly those parameters: recomputed here with the standard library's scrypt.
    unb64 = lambda text: base64.b64decode(text + "=" * (-len(text) % 4))  # noqa: E731
    expected = hashlib.scrypt(password.encode(), salt=unb64(salt), n=2**cost, r=8, p=1, dklen=32)
    assert unb64(digest) == expected
