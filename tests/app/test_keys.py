"""Key rotation through the real app, restarted with new key lists: new keys first, old ones kept,
then the old ones removed (steps 2 and 3 of the README's rotation). A session read under an old
key is re-encrypted and its cookie re-signed on that request; removing an old key ends exactly the
sessions that still depend on it. Processes on neighbouring steps side by side, next keys
included: test_key_rotation.py.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import asyncpg
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.tokens import TokenSigner, id_hash_of
from support.demo import login, make_settings, session_cookie

MakeClient = Callable[..., Awaitable[TestClient]]

K1 = b"authentication-key-one-0123456789abcdef"
K2 = b"authentication-key-two-0123456789abcdef"
E1 = b"encryption-key-one-0123456789abc"
E2 = b"encryption-key-two-0123456789abc"
LOGIN_PAGE = "/public/login.html"


def id_hash(cookie: str) -> bytes:
    return id_hash_of(cookie.split(".")[0])


async def get_home(client: TestClient, cookie: str) -> ClientResponse:
    """GET / sending exactly this cookie."""
    client.session.cookie_jar.clear()
    return await client.get("/", headers={"Cookie": f"session={cookie}"}, allow_redirects=False)


def is_anonymous(response: ClientResponse) -> bool:
    return response.status == 303 and response.headers["Location"] == LOGIN_PAGE


def set_cookie_value(response: ClientResponse) -> str | None:
    """The value of the live session cookie the response sets, if any."""
    headers = response.headers.getall("Set-Cookie", [])
    if not headers:
        return None
    assert len(headers) == 1, headers
    morsel = response.cookies["session"]
    assert morsel["max-age"] not in ("", "0"), headers
    return morsel.value


async def row(pg: asyncpg.Connection, cookie: str) -> asyncpg.Record | None:
    return await pg.fetchrow("SELECT data, version FROM sessions WHERE id_hash = $1", id_hash(cookie))


async def logged_in_cookie(make_client: MakeClient, db_url: str, user: tuple[str, str]) -> str:
    client = await make_client(make_settings(db_url, authentication_keys=(K1,), encryption_keys=(E1,)))
    # "Remember me" ticked: a persistent cookie, whose re-signed copy must keep a Max-Age.
    await login(client, *user, remember=True)
    cookie = session_cookie(client)
    assert cookie is not None
    return cookie


async def test_rotation_rewrites_on_first_read_and_old_keys_can_then_go(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    touched = await logged_in_cookie(make_client, db_url, user)
    untouched = await logged_in_cookie(make_client, db_url, user)
    assert TokenSigner((K1,)).verify(touched) is not None
    before = await row(pg, touched)
    assert before is not None
    assert DataCipher((E1,)).open(before["data"], id_hash(touched)) is not None

    rotated = await make_client(make_settings(db_url, authentication_keys=(K2, K1), encryption_keys=(E2, E1)))
    home = await get_home(rotated, touched)
    assert home.status == 200
    assert "Hello alice" in await home.text()

    # That request re-wrote the row under E2 ...
    after = await row(pg, touched)
    assert after is not None
    assert after["version"] == before["version"] + 1
    opened = DataCipher((E2,)).open(after["data"], id_hash(touched))
    assert opened is not None
    assert DataCipher((E1,)).open(after["data"], id_hash(touched)) is None
    assert DataCipher((E1,)).open(before["data"], id_hash(touched))[0] == opened[0]  # type: ignore[index]
    # ... and re-signed the same token with K2.
    resigned = set_cookie_value(home)
    assert resigned is not None
    # Its Max-Age is what is left of the session's absolute lifetime (the database's clock).
    left = await pg.fetchval(
        "SELECT extract(epoch FROM absolute_expires_at - now()) FROM sessions WHERE id_hash = $1", id_hash(touched)
    )
    assert abs(int(home.cookies["session"]["max-age"]) - float(left)) <= 2
    assert resigned != touched
    verified = TokenSigner((K2,)).verify(resigned)
    assert verified is not None
    assert verified.id_hash == id_hash(touched)
    assert TokenSigner((K1,)).verify(resigned) is None

    # Once moved over, further reads rewrite nothing.
    again = await get_home(rotated, resigned)
    assert again.status == 200
    assert set_cookie_value(again) is None
    assert (await row(pg, touched))["version"] == after["version"]  # type: ignore[index]

    # Old keys removed: the re-written session lives on, the untouched one has ended.
    new_only = await make_client(make_settings(db_url, authentication_keys=(K2,), encryption_keys=(E2,)))
    assert (await get_home(new_only, resigned)).status == 200
    assert is_anonymous(await get_home(new_only, untouched))
    # The old cookie value of the survivor is signed with K1 only: it no longer works either.
    assert is_anonymous(await get_home(new_only, touched))


async def test_each_old_key_alone_ends_the_sessions_that_depend_on_it(
    make_client: MakeClient, db_url: str, user: tuple[str, str]
) -> None:
    """An untouched session depends on both K1 (cookie) and E1 (data): keeping either one alone
    is not enough, keeping both is."""
    untouched = await logged_in_cookie(make_client, db_url, user)
    for auth, enc in (((K2,), (E2, E1)), ((K2, K1), (E2,))):
        partial = await make_client(make_settings(db_url, authentication_keys=auth, encryption_keys=enc))
        assert is_anonymous(await get_home(partial, untouched)), (auth, enc)
    both = await make_client(make_settings(db_url, authentication_keys=(K2, K1), encryption_keys=(E2, E1)))
    assert (await get_home(both, untouched)).status == 200


async def test_rotating_only_the_authentication_key_re_signs_and_re_saves(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    cookie = await logged_in_cookie(make_client, db_url, user)
    before = await row(pg, cookie)
    rotated = await make_client(make_settings(db_url, authentication_keys=(K2, K1), encryption_keys=(E1,)))
    home = await get_home(rotated, cookie)
    assert home.status == 200
    resigned = set_cookie_value(home)
    assert resigned is not None
    assert TokenSigner((K2,)).verify(resigned) is not None
    after = await row(pg, cookie)
    assert after["version"] == before["version"] + 1  # type: ignore[index]
    assert after["data"] != before["data"]  # type: ignore[index]
    assert DataCipher((E1,)).open(after["data"], id_hash(cookie)) is not None  # type: ignore[index]
    only_k2 = await make_client(make_settings(db_url, authentication_keys=(K2,), encryption_keys=(E1,)))
    assert (await get_home(only_k2, resigned)).status == 200


async def test_rotating_only_the_encryption_key_re_encrypts_without_a_new_cookie(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    cookie = await logged_in_cookie(make_client, db_url, user)
    before = await row(pg, cookie)
    rotated = await make_client(make_settings(db_url, authentication_keys=(K1,), encryption_keys=(E2, E1)))
    home = await get_home(rotated, cookie)
    assert home.status == 200
    assert set_cookie_value(home) is None, "the cookie is already signed with the newest key"
    after = await row(pg, cookie)
    assert after["version"] == before["version"] + 1  # type: ignore[index]
    assert DataCipher((E2,)).open(after["data"], id_hash(cookie)) is not None  # type: ignore[index]
    only_e2 = await make_client(make_settings(db_url, authentication_keys=(K1,), encryption_keys=(E2,)))
    assert (await get_home(only_e2, cookie)).status == 200
