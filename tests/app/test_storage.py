"""PostgresStorage through the real app: what the cookie may carry, what the table holds, when a
session ends, when a read writes, and the HTTP protections around it (cookie attributes, proxy
scheme, security headers, cross-origin refusal, strict form parsing).

Everything runs against real PostgreSQL. Writes are counted through the row's `xmin`: every
UPDATE of a row makes a new row version with a new `xmin`, so an unchanged `xmin` proves no write.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres.tokens import TokenSigner, id_hash_of
from support.demo import add_user, login, make_settings, session_cookie
from support.keys import AUTH_KEY
from yarl import URL

from app.config import Settings
from app.headers import CONTENT_SECURITY_POLICY

MakeClient = Callable[..., Awaitable[TestClient]]

LOGIN_PAGE = "/public/login.html"
OTHER_AUTH_KEY = b"another-authentication-key-0123456789abcdef"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
HTTPS = {"X-Forwarded-Proto": "https"}


# -- helpers -------------------------------------------------------------------------------


def db_settings(db_url: str, **overrides: object) -> Settings:
    """The database path: these tests change rows behind the app's back (no notification) and
    count what a read writes, so the session cache, on by default, is off here; test_cache.py
    and the multi-process tests cover it."""
    return make_settings(db_url, cache=False, **overrides)


@pytest.fixture
def settings(db_url: str) -> Settings:
    return db_settings(db_url)


def id_hash(cookie: str) -> bytes:
    return id_hash_of(cookie.split(".")[0])


def flip(text: str, index: int) -> str:
    """`text` with the character at `index` replaced by another base64url character."""
    replacement = "B" if text[index] == "A" else "A"
    return text[:index] + replacement + text[index + 1 :]


async def get_home(client: TestClient, cookie: str | None = None, *, name: str = "session", **headers: str):
    """GET / sending exactly `name=cookie` (the client's cookie jar is emptied first)."""
    client.session.cookie_jar.clear()
    if cookie is not None:
        headers["Cookie"] = f"{name}={cookie}"
    return await client.get("/", headers=headers, allow_redirects=False)


def is_anonymous(response: ClientResponse) -> bool:
    return response.status == 303 and response.headers["Location"] == LOGIN_PAGE


def the_set_cookie(response: ClientResponse) -> tuple[str, str, dict[str, str]]:
    """(name, value, attributes with lower-cased names) of the response's one Set-Cookie of the
    session (a login's device cookie, test_throttle.py's, is left out)."""
    headers = [h for h in response.headers.getall("Set-Cookie", []) if not h.startswith(("device=", "__Host-device="))]
    assert len(headers) == 1, headers
    first, *rest = (part.strip() for part in headers[0].split(";"))
    name, _, value = first.partition("=")
    attributes = {}
    for part in rest:
        key, _, val = part.partition("=")
        attributes[key.lower()] = val
    return name, value, attributes


def assert_cookie_untouched(response: ClientResponse) -> None:
    """A cookie naming no live session is left alone: neither replaced by a live one nor expired
    (the browser may already hold a newer cookie, which an expiry would delete)."""
    assert response.headers.getall("Set-Cookie", []) == []


async def row_state(pg: asyncpg.Connection, cookie: str) -> asyncpg.Record | None:
    return await pg.fetchrow(
        "SELECT xmin::text AS xmin, created_at, last_seen_at, idle_expires_at, absolute_expires_at"
        " FROM sessions WHERE id_hash = $1",
        id_hash(cookie),
    )


async def session_count(pg: asyncpg.Connection) -> int:
    """Session rows, not counting tombstones (the rows of sessions a login used up)."""
    return await pg.fetchval("SELECT count(*) FROM sessions WHERE replaced_at IS NULL")


async def is_tombstone(pg: asyncpg.Connection, cookie: str) -> bool:
    """The cookie's session was used up by a login or renewal: its row keeps no data and is not
    live, and the sweeper removes it later."""
    row = await pg.fetchrow(
        "SELECT replaced_at IS NOT NULL AS replaced, data = '\\x'::bytea AS empty, user_id,"
        " idle_expires_at <= now() AS expired FROM sessions WHERE id_hash = $1",
        id_hash(cookie),
    )
    return row is not None and row["replaced"] and row["empty"] and row["user_id"] is None and row["expired"]


async def logged_in(make_client: MakeClient, settings: Settings, username: str, password: str) -> TestClient:
    client = await make_client(settings)
    await login(client, username, password)
    return client


# -- the cookie's signature ----------------------------------------------------------------

# Each derives a bad cookie value from a real, live one ("<token>.<signature>").
BAD_COOKIES: dict[str, Callable[[str, str], str]] = {
    "token char flipped": lambda t, s: f"{flip(t, 7)}.{s}",
    "token last char flipped": lambda t, s: f"{flip(t, 42)}.{s}",
    "signature char flipped": lambda t, s: f"{t}.{flip(s, 0)}",
    "signature last char flipped": lambda t, s: f"{t}.{flip(s, 42)}",
    "signed with another key": lambda t, s: TokenSigner((OTHER_AUTH_KEY,)).sign(t),
    "token alone": lambda t, s: t,
    "signature missing": lambda t, s: f"{t}.",
    "empty": lambda t, s: "",
    "garbage": lambda t, s: "garbage",
    "padded base64": lambda t, s: f"{t}=.{s}",
    "standard base64 alphabet": lambda t, s: f"{t[:-1]}+.{s}",
    "token too long": lambda t, s: f"{t}A.{s}",
    "signature too long": lambda t, s: f"{t}.{s}A",
    "extra part": lambda t, s: f"{t}.{s}.{s}",
    "overlong": lambda t, s: "A" * 4000,
    "signature swapped with token": lambda t, s: f"{s}.{t}",
}


@pytest.mark.parametrize("kind", list(BAD_COOKIES))
async def test_badly_signed_or_malformed_cookie_is_anonymous(
    client: TestClient, user: tuple[str, str], kind: str
) -> None:
    await login(client, *user)
    good = session_cookie(client)
    assert good is not None
    token, signature = good.split(".")
    assert (await get_home(client, good)).status == 200

    response = await get_home(client, BAD_COOKIES[kind](token, signature))
    assert is_anonymous(response)
    assert_cookie_untouched(response)


async def test_badly_signed_cookie_is_never_looked_up(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    """With the sessions table locked, any lookup waits past database_timeout and answers 503;
    so a 303 for a tampered cookie proves its signature was checked without asking the database."""
    client = await logged_in(make_client, db_settings(db_url, database_timeout=0.5), *user)
    good = session_cookie(client)
    assert good is not None
    token, signature = good.split(".")
    tampered = [
        f"{flip(token, 3)}.{signature}",
        f"{token}.{flip(signature, 3)}",
        TokenSigner((OTHER_AUTH_KEY,)).sign(token),  # the live token, under the wrong key
        "garbage",
    ]

    async with asyncio.timeout(10):  # a bug here must fail the test, not hang it
        async with pg.transaction():
            await pg.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
            for value in tampered:
                assert is_anonymous(await get_home(client, value)), value
            async with asyncio.timeout(3):  # database_timeout (0.5 s) bounds the wait
                blocked = await get_home(client, good)
            assert blocked.status == 503
            assert blocked.headers["Retry-After"] == "2"
        # Lock released (transaction ended): the same cookie works again.
        assert (await get_home(client, good)).status == 200


async def test_validly_signed_cookie_without_row_is_anonymous(client: TestClient, pg: asyncpg.Connection) -> None:
    cookie, _ = TokenSigner((AUTH_KEY,)).new()
    response = await get_home(client, cookie)
    assert is_anonymous(response)
    assert_cookie_untouched(response)
    assert await session_count(pg) == 0


async def test_deleted_row_makes_cookie_anonymous(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    await login(client, *user)
    cookie = session_cookie(client)
    assert cookie is not None
    assert (await get_home(client, cookie)).status == 200
    assert await pg.execute("DELETE FROM sessions WHERE id_hash = $1", id_hash(cookie)) == "DELETE 1"
    assert is_anonymous(await get_home(client, cookie))


# -- expiry --------------------------------------------------------------------------------


async def test_new_session_deadlines_follow_settings(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    client = await logged_in(make_client, db_settings(db_url, idle_timeout=600, absolute_timeout=7200), *user)
    cookie = session_cookie(client)
    assert cookie is not None
    row = await row_state(pg, cookie)
    assert row is not None
    assert row["idle_expires_at"] - row["created_at"] == timedelta(seconds=600)
    assert row["absolute_expires_at"] - row["created_at"] == timedelta(seconds=7200)


async def test_idle_timeout_ends_session(make_client: MakeClient, db_url: str, user: tuple[str, str]) -> None:
    settings = db_settings(db_url, idle_timeout=1, absolute_timeout=10, touch_interval=0)
    client = await logged_in(make_client, settings, *user)
    cookie = session_cookie(client)
    assert cookie is not None
    assert (await get_home(client, cookie)).status == 200
    await asyncio.sleep(1.5)
    assert is_anonymous(await get_home(client, cookie))


async def test_absolute_timeout_ends_even_an_active_session(
    make_client: MakeClient, db_url: str, user: tuple[str, str]
) -> None:
    """Requests every 0.4 s keep sliding a 2 s idle deadline, past the first 2 s; the 3 s
    absolute deadline still ends the session. The cookie is sent explicitly: the client would
    drop it by itself at its Max-Age, and what is tested here is the server's refusal."""
    settings = db_settings(db_url, idle_timeout=2, absolute_timeout=3, touch_interval=0)
    client = await logged_in(make_client, settings, *user)
    cookie = session_cookie(client)
    assert cookie is not None
    loop = asyncio.get_running_loop()
    start = loop.time()
    while loop.time() - start < 2.2:  # beyond the idle timeout: only sliding keeps it alive
        assert (await get_home(client, cookie)).status == 200
        await asyncio.sleep(0.4)
    while loop.time() - start < 3.5:  # still active, through the absolute deadline
        await get_home(client, cookie)  # 200 until the deadline, then 303
        await asyncio.sleep(0.4)
    assert is_anonymous(await get_home(client, cookie))


@pytest.mark.parametrize(
    "expire_sql",
    [
        "idle_expires_at = now() - interval '1 second'",
        "idle_expires_at = now() - interval '2 seconds', absolute_expires_at = now() - interval '1 second'",
    ],
    ids=["idle", "idle and absolute"],
)
async def test_past_deadline_in_the_table_ends_session_without_touching_it(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection, expire_sql: str
) -> None:
    client = await make_client(db_settings(db_url))
    await login(client, *user)
    cookie = session_cookie(client)
    assert cookie is not None
    await pg.execute(f"UPDATE sessions SET {expire_sql}")
    before = await row_state(pg, cookie)

    assert is_anonymous(await client.get("/", allow_redirects=False))
    # An expired row is neither revived nor slid by the read.
    assert await row_state(pg, cookie) == before


async def test_touch_never_slides_idle_deadline_past_absolute(
    make_client: MakeClient, settings: Settings, client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    await login(client, *user)
    cookie = session_cookie(client)
    assert cookie is not None
    await pg.execute(
        "UPDATE sessions SET last_seen_at = now() - interval '120 seconds',"
        " idle_expires_at = now() + interval '5 seconds', absolute_expires_at = now() + interval '10 seconds'"
    )
    before = await row_state(pg, cookie)
    assert before is not None
    # Another process (this one remembers touching the row at login, and the last touch was
    # moved back behind its back: never so in production, where it only moves forward).
    other = await make_client(settings)
    assert (await get_home(other, cookie)).status == 200
    after = await row_state(pg, cookie)
    assert after is not None
    assert after["xmin"] != before["xmin"]  # it was touched
    assert after["absolute_expires_at"] == before["absolute_expires_at"]
    assert after["idle_expires_at"] == before["absolute_expires_at"]


# -- what the table holds ------------------------------------------------------------------


async def test_table_holds_no_token_signature_or_plaintext(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    await login(client, *user)
    cookie = session_cookie(client)
    assert cookie is not None
    token, signature = cookie.split(".")
    raw_token = base64.urlsafe_b64decode(token + "=")
    raw_signature = base64.urlsafe_b64decode(signature + "=")

    row = await pg.fetchrow("SELECT * FROM sessions")
    assert row is not None
    assert row["id_hash"] == hashlib.sha256(token.encode()).digest()
    forbidden_bytes = [token.encode(), signature.encode(), raw_token, raw_signature, b"alice", b"username"]
    for column, value in row.items():
        blob = value if isinstance(value, bytes) else str(value).encode()
        for needle in forbidden_bytes:
            assert needle not in blob, (column, needle)

    # Every column as PostgreSQL renders it (bytea as hex), and the bytea columns as text.
    as_text = await pg.fetchval("SELECT s::text FROM sessions s")
    as_text += await pg.fetchval("SELECT encode(data, 'escape') || encode(id_hash, 'escape') FROM sessions")
    forbidden_text = [token, signature, raw_token.hex(), raw_signature.hex(), "alice", "username"]
    for needle in forbidden_text:
        assert needle not in as_text, needle


async def test_data_copied_onto_another_row_does_not_open(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    settings = db_settings(db_url)
    await add_user(pg, "bob", "bob-password")
    alice = await logged_in(make_client, settings, *user)
    bob = await logged_in(make_client, settings, "bob", "bob-password")
    alice_cookie, bob_cookie = session_cookie(alice), session_cookie(bob)
    assert alice_cookie is not None
    assert bob_cookie is not None

    await pg.execute(
        "UPDATE sessions SET data = (SELECT data FROM sessions WHERE id_hash = $1) WHERE id_hash = $2",
        id_hash(alice_cookie),
        id_hash(bob_cookie),
    )
    assert is_anonymous(await bob.get("/", allow_redirects=False))
    page = await alice.get("/", allow_redirects=False)
    assert page.status == 200
    assert "Hello alice" in await page.text()


# -- fixation ------------------------------------------------------------------------------


@pytest.mark.parametrize("second_user", ["alice", "bob"])
async def test_login_again_replaces_session(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection, second_user: str
) -> None:
    passwords = {"alice": user[1], "bob": "bob-password"}
    await add_user(pg, "bob", passwords["bob"])
    await login(client, *user)
    first = session_cookie(client)
    assert first is not None

    await login(client, second_user, passwords[second_user])
    second = session_cookie(client)
    assert second is not None
    assert second != first
    assert await is_tombstone(pg, first)
    assert await session_count(pg) == 1
    assert is_anonymous(await get_home(client, first))
    page = await get_home(client, second)
    assert page.status == 200
    assert f"Hello {second_user}" in await page.text()


async def test_planted_session_cookie_is_replaced_at_login(
    make_client: MakeClient, settings: Settings, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    """An attacker logs in, plants their cookie in the victim's browser; the victim's login must
    not continue on the planted ID, and the attacker's copy must stop working."""
    await add_user(pg, "mallory", "mallory-password")
    attacker = await logged_in(make_client, settings, "mallory", "mallory-password")
    planted = session_cookie(attacker)
    assert planted is not None

    victim = await make_client(settings)
    response = await victim.post(
        "/login",
        data={"username": user[0], "password": user[1]},
        headers={"Cookie": f"session={planted}"},
        allow_redirects=False,
    )
    assert response.status == 303
    assert response.headers["Location"] == "/"
    _, victim_cookie, _ = the_set_cookie(response)
    assert victim_cookie != planted
    assert await session_count(pg) == 1
    assert is_anonymous(await get_home(attacker, planted))
    page = await get_home(victim, victim_cookie)
    assert page.status == 200
    assert "Hello alice" in await page.text()


# -- when reads write ----------------------------------------------------------------------


async def test_reads_within_touch_interval_write_nothing(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    await login(client, *user)  # default touch interval: 60 s
    cookie = session_cookie(client)
    assert cookie is not None
    before = await row_state(pg, cookie)
    for _ in range(10):
        assert (await client.get("/", allow_redirects=False)).status == 200
    assert await row_state(pg, cookie) == before  # same xmin, same timestamps


async def test_read_after_touch_interval_slides_idle_deadline_once(
    make_client: MakeClient, settings: Settings, client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    await login(client, *user)
    cookie = session_cookie(client)
    assert cookie is not None
    await pg.execute(
        "UPDATE sessions SET last_seen_at = last_seen_at - interval '61 seconds',"
        " idle_expires_at = idle_expires_at - interval '61 seconds'"
    )
    stale = await row_state(pg, cookie)
    assert stale is not None
    # Read through another process: this one remembers its own touch at login (time is moved
    # back behind its back here, which never happens in production).
    client = await make_client(settings)
    client.session.cookie_jar.update_cookies({"session": cookie})

    assert (await client.get("/", allow_redirects=False)).status == 200
    touched = await row_state(pg, cookie)
    assert touched is not None
    assert touched["xmin"] != stale["xmin"]
    db_now = await pg.fetchval("SELECT now()")
    assert abs(touched["last_seen_at"] - db_now) < timedelta(seconds=5)
    assert touched["idle_expires_at"] - stale["idle_expires_at"] >= timedelta(seconds=60)
    assert touched["idle_expires_at"] == touched["last_seen_at"] + timedelta(seconds=1800)

    assert (await client.get("/", allow_redirects=False)).status == 200
    assert await row_state(pg, cookie) == touched


async def test_one_second_touch_interval_with_real_time(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    settings = db_settings(db_url, idle_timeout=60, absolute_timeout=600, touch_interval=1)
    client = await logged_in(make_client, settings, *user)
    cookie = session_cookie(client)
    assert cookie is not None
    created = await row_state(pg, cookie)
    assert created is not None
    assert (await client.get("/", allow_redirects=False)).status == 200
    assert await row_state(pg, cookie) == created

    await asyncio.sleep(1.2)
    assert (await client.get("/", allow_redirects=False)).status == 200
    touched = await row_state(pg, cookie)
    assert touched is not None
    assert touched["xmin"] != created["xmin"]
    assert touched["last_seen_at"] - created["last_seen_at"] >= timedelta(seconds=1)
    assert touched["idle_expires_at"] > created["idle_expires_at"]

    assert (await client.get("/", allow_redirects=False)).status == 200
    assert await row_state(pg, cookie) == touched


async def test_anonymous_requests_create_no_row_and_no_cookie(client: TestClient, pg: asyncpg.Connection) -> None:
    for path in ("/", "/logout", LOGIN_PAGE):
        response = await client.get(path, allow_redirects=False)
        assert "Set-Cookie" not in response.headers, path
    assert await session_count(pg) == 0


async def test_logout_deletes_row_and_expires_cookie_with_same_attributes(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    await login(client, *user)
    cookie = session_cookie(client)
    assert cookie is not None
    assert (await client.get("/logout")).status == 200
    assert await row_state(pg, cookie) is not None

    out = await client.post("/logout", allow_redirects=False)
    assert out.status == 303
    assert await row_state(pg, cookie) is None
    name, value, attributes = the_set_cookie(out)
    assert name == "session"
    assert value in ("", '""')
    assert attributes["max-age"] == "0"
    assert attributes["path"] == "/"
    assert "httponly" in attributes
    assert attributes["samesite"] == "Lax"
    assert "secure" not in attributes
    assert is_anonymous(await get_home(client, cookie))


# -- cookie attributes and the proxy's scheme ----------------------------------------------


async def test_login_cookie_attributes_over_plain_http(
    make_client: MakeClient, db_url: str, user: tuple[str, str]
) -> None:
    client = await make_client(
        db_settings(db_url, absolute_timeout=7200, remember_timeout=7200, remember_idle_timeout=1800)
    )
    # "Remember me" ticked: a persistent cookie (unticked: a browser-session cookie, issue 21;
    # test_remember_me.py).
    response = await client.post(
        "/login", data={"username": user[0], "password": user[1], "remember": "on"}, allow_redirects=False
    )
    assert response.status == 303
    name, value, attributes = the_set_cookie(response)
    assert name == "session"
    assert TokenSigner((AUTH_KEY,)).verify(value) is not None
    assert attributes["max-age"] == "7200"
    assert attributes["path"] == "/"
    assert attributes["samesite"] == "Lax"
    assert "httponly" in attributes
    assert "secure" not in attributes
    assert "domain" not in attributes
    unticked = await client.post("/login", data={"username": user[0], "password": user[1]}, allow_redirects=False)
    name, value, attributes = the_set_cookie(unticked)
    assert name == "session"
    assert "max-age" not in attributes
    assert "expires" not in attributes
    assert (attributes["path"], attributes["samesite"]) == ("/", "Lax")
    assert "httponly" in attributes
    assert "secure" not in attributes
    assert "domain" not in attributes


async def test_untrusted_proxy_header_is_ignored(client: TestClient, user: tuple[str, str]) -> None:
    response = await client.post(
        "/login", data={"username": user[0], "password": user[1]}, headers=HTTPS, allow_redirects=False
    )
    assert response.status == 303
    name, _, attributes = the_set_cookie(response)
    assert name == "session"
    assert "secure" not in attributes
    assert "Strict-Transport-Security" not in response.headers


@pytest.fixture
async def proxied(make_client: MakeClient, db_url: str) -> TestClient:
    """A client of the app behind a trusted proxy (TRUST_PROXY on)."""
    return await make_client(db_settings(db_url, trust_proxy=True))


@pytest.mark.parametrize("headers", [{"X-Forwarded-Proto": "http"}, {}], ids=["forwarded http", "no header"])
async def test_trusted_proxy_redirects_plain_http_to_https(proxied: TestClient, headers: dict[str, str]) -> None:
    response = await proxied.get(f"{LOGIN_PAGE}?x=1", headers=headers, allow_redirects=False)
    assert response.status == 308
    location = URL(response.headers["Location"])
    assert location.scheme == "https"
    assert location.path_qs == f"{LOGIN_PAGE}?x=1"


async def test_trusted_proxy_https_uses_secure_host_prefixed_cookie(
    proxied: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    response = await proxied.post(
        "/login", data={"username": user[0], "password": user[1]}, headers=HTTPS, allow_redirects=False
    )
    assert response.status == 303
    name, cookie, attributes = the_set_cookie(response)
    assert name == "__Host-session"
    assert "secure" in attributes
    assert attributes["path"] == "/"
    assert "domain" not in attributes
    assert "httponly" in attributes
    assert attributes["samesite"] == "Lax"

    page = await get_home(proxied, cookie, name="__Host-session", **HTTPS)
    assert page.status == 200
    assert "Hello alice" in await page.text()
    # Over HTTPS only the prefixed cookie counts: one a subdomain could set is not read.
    assert is_anonymous(await get_home(proxied, cookie, name="session", **HTTPS))

    proxied.session.cookie_jar.clear()
    out = await proxied.post("/logout", headers={**HTTPS, "Cookie": f"__Host-session={cookie}"}, allow_redirects=False)
    assert out.status == 303
    assert await session_count(pg) == 0
    name, _, attributes = the_set_cookie(out)
    assert name == "__Host-session"
    assert attributes["max-age"] == "0"
    assert "secure" in attributes  # without it browsers ignore the deletion of a __Host- cookie
    assert attributes["path"] == "/"


# -- security headers ----------------------------------------------------------------------


def assert_security_headers(response: ClientResponse) -> None:
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Referrer-Policy"] == "same-origin"


async def test_security_headers_on_pages(client: TestClient, user: tuple[str, str]) -> None:
    responses = [
        await client.get(LOGIN_PAGE),
        await client.get("/", allow_redirects=False),
        await client.post("/login", data="x", headers=FORM),  # 400
        await client.post("/login", data={"username": "a", "password": "b"}, headers={"Sec-Fetch-Site": "cross-site"}),
    ]
    await login(client, *user)
    responses += [await client.get("/"), await client.get("/logout")]
    assert [r.status for r in responses] == [200, 303, 400, 403, 200, 200]
    for response in responses:
        assert_security_headers(response)
        assert "Strict-Transport-Security" not in response.headers


async def test_hsts_only_over_https_behind_trusted_proxy(proxied: TestClient, client: TestClient) -> None:
    secure = await proxied.get(LOGIN_PAGE, headers=HTTPS)
    assert secure.status == 200
    assert_security_headers(secure)
    assert secure.headers["Strict-Transport-Security"] == "max-age=63072000; includeSubDomains"

    untrusted = await client.get(LOGIN_PAGE, headers=HTTPS)
    assert untrusted.status == 200
    assert "Strict-Transport-Security" not in untrusted.headers


# -- cross-origin requests -----------------------------------------------------------------


def own_origin(client: TestClient) -> str:
    return str(client.make_url("/").origin())


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
    ],
    ids=["sec-fetch cross-site", "sec-fetch same-site", "foreign origin", "null origin"],
)
async def test_cross_origin_login_is_refused(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection, headers: dict[str, str]
) -> None:
    response = await client.post(
        "/login", data={"username": user[0], "password": user[1]}, headers=headers, allow_redirects=False
    )
    assert response.status == 403
    assert "Set-Cookie" not in response.headers
    assert await session_count(pg) == 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Site": "same-origin"},
        {"Sec-Fetch-Site": "none"},
        {"Sec-Fetch-Site": "same-origin", "Origin": "http://evil.example"},
        {"Origin": "OWN"},
        {},
    ],
    ids=["sec-fetch same-origin", "sec-fetch none", "sec-fetch wins over origin", "own origin", "neither header"],
)
async def test_same_origin_or_headerless_login_passes(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection, headers: dict[str, str]
) -> None:
    if headers.get("Origin") == "OWN":
        headers = {"Origin": own_origin(client)}
    response = await client.post(
        "/login", data={"username": user[0], "password": user[1]}, headers=headers, allow_redirects=False
    )
    assert response.status == 303
    assert response.headers["Location"] == "/"
    assert await session_count(pg) == 1


async def test_cross_site_logout_is_refused_and_session_survives(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    await login(client, *user)
    response = await client.post("/logout", headers={"Sec-Fetch-Site": "cross-site"}, allow_redirects=False)
    assert response.status == 403
    assert "Set-Cookie" not in response.headers
    assert await session_count(pg) == 1
    assert (await client.get("/", allow_redirects=False)).status == 200


# -- malformed login forms -----------------------------------------------------------------


def _bad_bodies(password: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    """Bodies that carry alice's right credentials (so only the malformation can refuse them),
    except where the malformation is the credentials' own encoding."""
    good = f"username=alice&password={password}"
    return {
        "invalid utf-8 escape": (b"username=%ff&password=x", FORM),
        "raw non-ascii bytes": (f"username=alic\u00e9&password={password}".encode(), FORM),
        "missing field": (b"username=alice", FORM),
        "repeated field": (f"{good}&username=alice".encode(), FORM),
        "pair without '='": (f"{good}&junk".encode(), FORM),
        "too many fields": (f"{good}{'&a=1' * 20}".encode(), FORM),
        "over 8 KiB": (f"{good}&pad={'x' * 8200}".encode(), FORM),
        "json": (f'{{"username": "alice", "password": "{password}"}}'.encode(), {"Content-Type": "application/json"}),
        "no content type": (good.encode(), {}),
    }


@pytest.mark.parametrize(
    "kind",
    [
        "invalid utf-8 escape",
        "raw non-ascii bytes",
        "missing field",
        "repeated field",
        "pair without '='",
        "too many fields",
        "over 8 KiB",
        "json",
        "no content type",
    ],
)
async def test_malformed_login_form_is_400_without_session(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection, kind: str
) -> None:
    body, headers = _bad_bodies(user[1])[kind]
    response = await client.post("/login", data=body, headers=headers, allow_redirects=False)
    assert response.status == 400
    assert response.content_type == "text/html"
    assert "Set-Cookie" not in response.headers
    assert await session_count(pg) == 0


async def test_chunked_form_over_8_kib_is_400(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    """Without a Content-Length the limit is enforced while reading."""

    async def body() -> AsyncIterator[bytes]:
        yield f"username=alice&password={user[1]}&pad=".encode()
        for _ in range(3):
            yield b"x" * 3000

    response = await client.post("/login", data=body(), headers=FORM, allow_redirects=False)
    assert response.status == 400
    assert await session_count(pg) == 0


async def test_form_just_under_the_limits_logs_in(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    """The controls for the 400s above: same shape, within the limits."""
    good = f"username=alice&password={user[1]}"
    body = f"{good}{'&a=1' * 10}&pad="
    body += "x" * (8 * 1024 - len(body))
    response = await client.post("/login", data=body.encode(), headers=FORM, allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/"
    assert await session_count(pg) == 1
