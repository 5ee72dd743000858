"""Rotating keys during a rolling deploy (issue 20, item 4; flask-login#41): two `python -m app
serve` processes on one database, on neighbouring steps of the README's rotation, keep each
other's users signed in. A user logged in through either is walked back and forth between them,
each request re-signing the cookie or re-encrypting the session whenever that process wants to;
for the authentication key, the encryption key and both at once.

The rotation the README described before (the new key first straight away) fails the same walk:
a process still on the old keys signs out the users of one already on the new ones.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from support.demo import add_user, make_settings
from support.rotation import KINDS, Endpoint, Keys, assert_rewrites, neighbours, one_step, sign_outs, two_step
from support.servers import Server, Servers, home, id_hash, is_greeting, new_http, signed_in

from app.config import Settings
from app.throttle import Limits

PASSWORD = "correct horse"
MakeClient = Callable[[Settings], Awaitable[TestClient]]


@pytest.fixture(scope="module")
def rotation_url(create_database: Callable[..., str]) -> str:
    return create_database()


@pytest.fixture
async def db(rotation_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(rotation_url)
    await conn.execute("TRUNCATE sessions, users, login_failures RESTART IDENTITY CASCADE")
    await add_user(conn, "alice", PASSWORD)
    yield conn
    await conn.close()


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    started = Servers(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with new_http() as client:
        yield client


async def start(servers: Servers, url: str, steps: list[tuple[str, Keys]], *, cache: str) -> list[tuple[str, Server]]:
    started = []
    for name, keys in steps:
        # A cap above the test's logins: the cap's trimming is not what is tested here.
        server = await servers.start(url, SESSION_CACHE=cache, SESSION_MAX_PER_USER="100", **keys.env())
        started.append((name, server))
    return started


def endpoint(http: aiohttp.ClientSession, name: str, server: Server) -> Endpoint:
    async def login() -> str:
        return await signed_in(http, server.url, "alice", PASSWORD)

    async def read(cookie: str) -> tuple[bool, str | None]:
        status, text, set_cookie = await home(http, server.url, cookie)
        return is_greeting(status, text, "alice"), set_cookie[0] if set_cookie and set_cookie[0] else None

    return Endpoint(name, login, read)


def version_in(db: asyncpg.Connection) -> Callable[[str], Awaitable[int | None]]:
    async def version(cookie: str) -> int | None:
        return await db.fetchval("SELECT version FROM sessions WHERE id_hash = $1", id_hash(cookie))

    return version


@pytest.mark.parametrize("cache", ["off", "on"], ids=["cache-off", "cache-on"])
@pytest.mark.parametrize("kind", KINDS)
async def test_processes_on_neighbouring_steps_keep_each_others_users_signed_in(
    servers: Servers, rotation_url: str, db: asyncpg.Connection, http: aiohttp.ClientSession, kind: str, cache: str
) -> None:
    """With the session cache off, every read is checked against the row itself; with it on (the
    default), a process may also answer from its memory."""
    steps = two_step(kind)
    made = [endpoint(http, name, server) for name, server in await start(servers, rotation_url, steps, cache=cache)]
    for a, b in neighbours(made):
        problems, hops = await sign_outs(a, b, version=version_in(db))
        assert not problems, (kind, problems)
        assert_rewrites(kind, a, b, hops)


@pytest.mark.parametrize("kind", KINDS)
async def test_the_one_step_rotation_signs_out_users_mid_deploy(
    servers: Servers, rotation_url: str, db: asyncpg.Connection, http: aiohttp.ClientSession, kind: str
) -> None:
    """The walk above, on the README's former rotation: it finds the sign-outs of flask-login#41.
    The cache off, so that each read asks the row: with it on, the older process may serve a
    session it has in memory until the newer one's notification of its re-write arrives."""
    steps = one_step(kind)[:2]
    (before, _), (after, _) = steps
    made = [endpoint(http, name, server) for name, server in await start(servers, rotation_url, steps, cache="off")]
    problems, _ = await sign_outs(*made)
    assert problems == [
        f"logged in through {before}, signed out by {before}",  # once the newer one re-wrote it
        f"logged in through {after}, signed out by {before}",
    ]


async def test_a_device_cookie_signed_on_step_2_is_trusted_on_step_1(
    make_client: MakeClient, db_url: str, user: tuple[str, str]
) -> None:
    """The device cookie (app/devices.py, the login throttle's exemption for a browser that signed
    in before) is signed with the first authentication key: a process on step 1 verifies one
    signed on step 2 with its next key."""
    (_, step1), (_, step2) = two_step("authentication")[1:3]
    limits = Limits(per_username=3, per_username_ip=100, per_ip=100)

    async def client(keys: Keys) -> TestClient:
        return await make_client(
            make_settings(
                db_url,
                authentication_keys=keys.authentication,
                next_authentication_keys=keys.next_authentication,
                login_limits=limits,
            )
        )

    newer, older = await client(step2), await client(step1)

    async def attempt(client: TestClient, password: str, device: str | None = None) -> str:
        headers = {"Cookie": f"device={device}"} if device else {}
        data = {"username": user[0], "password": password}
        response = await client.post("/login", data=data, headers=headers, allow_redirects=False)
        assert response.status in (303, 429), response.status
        return "locked" if response.status == 429 else response.headers["Location"]

    newer.session.cookie_jar.clear()
    response = await newer.post("/login", data={"username": user[0], "password": user[1]}, allow_redirects=False)
    assert response.headers["Location"] == "/"
    device = response.cookies["device"].value
    older.session.cookie_jar.clear()
    for i in range(limits.per_username):  # the username locked for browsers it does not know
        await attempt(older, f"wrong {i}")
    assert await attempt(older, user[1]) == "locked"
    assert await attempt(older, user[1], device) == "/"
