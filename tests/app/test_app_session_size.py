"""Memory bounded by bytes (issue 20, item 5), through the demo app: a request whose save would
grow the session past SESSION_MAX_DATA_BYTES answers a 413 page and changes nothing of the
session; a session already over the limit (written before it) still serves, and can end; and
sessions of 900 kB keep the process's cache within SESSION_CACHE_MAX_BYTES, by the cache's own
count of bytes.

The demo's own sessions are small (a login's holds about 40 bytes of JSON): the large ones here
are written into the table as a version of the app without a limit would have left them, sealed
with the app's key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import orjson
import pytest
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.tokens import handle_of, id_hash_of
from support.demo import login, make_settings, session_cookie
from support.keys import ENC_KEY
from support.storage_harness import build_app, cookies, new_cookie

from app.appkeys import STORAGE
from app.config import Settings

MakeClient = Callable[[Settings], Awaitable[TestClient]]
MiB = 2**20
LIMIT = 1024


def _id_hash(cookie: str) -> bytes:
    return id_hash_of(cookie.split(".")[0])


async def _grow_to(pg: asyncpg.Connection, cookie: str, size: int) -> dict[str, object]:
    """Pad the cookie's session to `size` bytes of JSON, as an app without a limit could have
    written it (a new version: the caches hear of it)."""
    id_hash = _id_hash(cookie)
    row = await pg.fetchrow("SELECT data FROM sessions WHERE id_hash = $1", id_hash)
    cipher = DataCipher((ENC_KEY,))
    opened = cipher.open(row["data"], id_hash)
    assert opened is not None
    data = orjson.loads(opened[0])
    data["pad"] = ""
    data["pad"] = "x" * (size - len(orjson.dumps(data)))
    plaintext = orjson.dumps(data)
    assert len(plaintext) == size
    sealed = cipher.seal(plaintext, id_hash)
    await pg.execute("UPDATE sessions SET data = $2, version = version + 1 WHERE id_hash = $1", id_hash, sealed)
    return data


async def _row(pg: asyncpg.Connection, cookie: str) -> asyncpg.Record | None:
    return await pg.fetchrow("SELECT data, version FROM sessions WHERE id_hash = $1", _id_hash(cookie))


async def _ready(client: TestClient) -> None:
    cache = client.app[STORAGE].cache
    if cache is None:
        return
    for _ in range(200):
        if cache.enabled:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the cache listener never came up")


async def _two_browsers(
    make_client: MakeClient, settings: Settings, user: tuple[str, str]
) -> tuple[TestClient, str, str]:
    """A client signed in as `user`, and the cookies of its session and of another browser's."""
    client = await make_client(settings)
    await _ready(client)
    await login(client, *user)
    other = session_cookie(client)
    client.session.cookie_jar.clear()
    await login(client, *user)
    mine = session_cookie(client)
    assert other is not None
    assert mine is not None
    return client, mine, other


@pytest.mark.parametrize("cache", [False, True], ids=["cache-off", "cache-on"])
async def test_a_request_that_would_grow_the_session_past_the_limit_is_a_413_page(
    make_client: MakeClient, db_url: str, pg: asyncpg.Connection, user: tuple[str, str], cache: bool
) -> None:
    settings = make_settings(db_url, cache=cache, max_data_bytes=LIMIT)
    client, mine, other = await _two_browsers(make_client, settings, user)
    await _grow_to(pg, mine, LIMIT - 10)  # under the limit: it serves and saves as usual
    assert (await client.get("/", allow_redirects=False)).status == 200
    before = await _row(pg, mine)

    # Signing out the other browser sets a notice in this session ("Signed out 1 session."),
    # which would take it past 1,024 bytes: the save is refused.
    response = await client.post("/sessions/revoke", data={"handle": handle_of(_id_hash(other))}, allow_redirects=False)
    assert response.status == 413
    assert response.content_type == "text/html"
    page = await response.text()
    assert "<h1>Session too large</h1>" in page
    assert "larger than the 1,024 bytes this site keeps per session, so your session was not changed." in page
    assert "xxxxxxxx" not in page
    assert "Traceback" not in page
    assert "Set-Cookie" not in response.headers
    assert response.headers["X-Content-Type-Options"] == "nosniff"  # the app's headers, as on every page

    assert await _row(pg, mine) == before  # the same data, the same version
    assert (await client.get("/", allow_redirects=False)).status == 200  # still signed in
    # The handler had done its work before the save (the other browser is signed out); only this
    # session's change, the notice, was refused.
    assert await _row(pg, other) is None


async def test_a_session_already_over_the_limit_still_serves_and_can_end(
    make_client: MakeClient, db_url: str, pg: asyncpg.Connection, user: tuple[str, str]
) -> None:
    # Written before the limit existed, or under a larger one: 5,000 bytes against 1,024.
    settings = make_settings(db_url, cache=True, max_data_bytes=LIMIT)
    client, mine, _ = await _two_browsers(make_client, settings, user)
    await _grow_to(pg, mine, 5000)
    home = await client.get("/", allow_redirects=False)
    assert home.status == 200
    assert "Hello alice" in await home.text()
    assert (await client.get("/sessions", allow_redirects=False)).status == 200
    before = await _row(pg, mine)
    grow = await client.post("/sessions/revoke-others", allow_redirects=False)
    assert grow.status == 413
    assert await _row(pg, mine) == before
    # A logout needs no room: the row goes, the cookie is expired.
    bye = await client.post("/logout", allow_redirects=False)
    assert bye.status == 303
    assert await _row(pg, mine) is None
    assert (await client.get("/", allow_redirects=False)).status == 303


async def test_900_kb_sessions_keep_the_cache_within_its_bytes(
    make_client: MakeClient,
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    db_url: str,
    pg: asyncpg.Connection,
) -> None:
    # The case: 120 anonymous sessions of 900 kB grew a process by 123-131 MB with the
    # cache on. Here, with SESSION_CACHE_MAX_BYTES at 2 MiB, the process's cache counts its
    # bytes after every request: never over 2 MiB, whatever the number of such sessions.
    size = 900_000
    writer = await aiohttp_client(
        build_app(await asyncpg.create_pool(db_url, min_size=1, max_size=2), max_data_bytes=None),
        cookie_jar=DummyCookieJar(),
    )  # the library as it was before the limit: no limit
    made = [new_cookie(await writer.post("/start", json={"pad": chr(97 + i) * size})) for i in range(8)]

    settings = make_settings(db_url, cache=True, cache_max_bytes=2 * MiB)
    client = await make_client(settings)
    await _ready(client)
    cache = client.app[STORAGE].cache
    assert cache is not None
    assert cache.max_bytes == 2 * MiB
    for round_ in range(2):
        for cookie in made:
            response = await client.get("/", headers=cookies(cookie), allow_redirects=False)
            assert response.status == 303  # anonymous: to the login form, its session loaded
            assert 0 < cache.held_bytes <= 2 * MiB, (round_, cache.held_bytes)
            assert len(cache) <= 2
    assert len(cache) == 2
    assert await pg.fetchval("SELECT count(*) FROM sessions WHERE octet_length(data) > $1", size) == 8
