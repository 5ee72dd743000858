"""A session's life as users see it, through the real app: the sessions page, revoking one or all
other sessions, what each row records about its client, password resets and deleted users, the
security headers of every page, and what the logs say (and never say).

Separate TestClients (separate cookie jars, distinct User-Agents) are separate devices.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import PostgresStorage
from aiohttp_session_postgres.tokens import TokenSigner
from support.demo import AppLog, add_user, login, make_settings, run_app_command, session_cookie
from support.keys import AUTH_KEY, ENC_KEY

from app import users
from app.appkeys import POOL
from app.passwords import hash_once
from app.throttle import Limits

MakeClient = Callable[..., Awaitable[TestClient]]
AiohttpClient = Callable[..., Awaitable[TestClient]]

CHROME_LINUX = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
FIREFOX_WINDOWS = "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:133.0) Gecko/20100101 Firefox/133.0"
SAFARI_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko)"
    " Version/17.5 Mobile/15E148 Safari/604.1"
)
LOGIN_PAGE = "/public/login.html"
HTTPS = {"X-Forwarded-Proto": "https"}


# -- helpers -------------------------------------------------------------------------------


class Devices:
    """Browsers on one running app, each with its own cookie jar and User-Agent."""

    def __init__(self, base: TestClient, aiohttp_client: AiohttpClient) -> None:
        self.base = base
        self._aiohttp_client = aiohttp_client

    async def new(self, user_agent: str) -> TestClient:
        return await self._aiohttp_client(self.base.server, headers={"User-Agent": user_agent})


@pytest.fixture
async def devices(client: TestClient, aiohttp_client: AiohttpClient) -> Devices:
    return Devices(client, aiohttp_client)


@pytest.fixture
async def bob(pg: asyncpg.Connection) -> tuple[str, str]:
    password = secrets.token_urlsafe(12)
    await add_user(pg, "bob", password)
    return "bob", password


def token_of(cookie: str) -> str:
    return cookie.split(".")[0]


def id_hash_of(cookie: str) -> bytes:
    return hashlib.sha256(token_of(cookie).encode()).digest()


def handle_of(cookie: str) -> str:
    return id_hash_of(cookie)[:8].hex()


def cookie_of(client: TestClient) -> str:
    cookie = session_cookie(client)
    assert cookie is not None, "not logged in"
    return cookie


def session_rows(page: str) -> dict[str, str]:
    """The sessions table: handle -> that row's HTML. Fails on a row without exactly one handle
    or on a handle listed twice."""
    tbody = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    rows = re.findall(r"<tr>(.*?)</tr>", tbody, re.S)
    found: dict[str, str] = {}
    for row in rows:
        handles = re.findall(r'name="handle" value="([^"]*)"', row)
        assert len(handles) == 1, row
        assert handles[0] not in found, "a session listed twice"
        found[handles[0]] = row
    return found


async def sessions_page(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, str]:
    response = await client.get("/sessions", headers=headers, allow_redirects=False)
    assert response.status == 200, response.status
    assert response.headers["Cache-Control"] == "no-store"
    return session_rows(await response.text())


async def is_anonymous(client: TestClient, headers: dict[str, str] | None = None) -> bool:
    response = await client.get("/", headers=headers, allow_redirects=False)
    if response.status == 200:
        return False
    assert response.status == 303, response.status
    assert response.headers["Location"] == LOGIN_PAGE
    return True


async def revoke(client: TestClient, handle: str) -> ClientResponse:
    return await client.post("/sessions/revoke", data={"handle": handle}, allow_redirects=False)


async def row_counts(pg: asyncpg.Connection) -> dict[int | None, int]:
    return dict(await pg.fetch("SELECT user_id, count(*) FROM sessions GROUP BY user_id"))


async def live_handles(pg: asyncpg.Connection, username: str) -> set[str]:
    rows = await pg.fetch(
        "SELECT s.id_hash FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.username = $1", username
    )
    return {r["id_hash"][:8].hex() for r in rows}


def set_cookies(response: ClientResponse) -> list[tuple[str, str, dict[str, str]]]:
    """Each Set-Cookie header of the session cookie as (name, value, {lowercased attribute: value});
    the device cookie a login also sets (test_throttle.py's) is left out."""
    parsed = []
    for header in response.headers.getall("Set-Cookie", []):
        first, *attributes = (part.strip() for part in header.split(";"))
        name, _, value = first.partition("=")
        if name in ("device", "__Host-device"):
            continue
        attrs = {}
        for attribute in attributes:
            key, _, val = attribute.partition("=")
            attrs[key.lower()] = val
        parsed.append((name, value, attrs))
    return parsed


async def run_app(*args: str, database_url: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    return await run_app_command(*args, database_url=database_url, stdin=stdin)


# -- the sessions page ---------------------------------------------------------------------


async def test_sessions_page_lists_my_live_sessions_only(
    devices: Devices, user: tuple[str, str], bob: tuple[str, str], pg: asyncpg.Connection
) -> None:
    chrome, firefox, iphone = [await devices.new(ua) for ua in (CHROME_LINUX, FIREFOX_WINDOWS, SAFARI_IPHONE)]
    await login(chrome, *user)
    await login(firefox, *user)
    await login(iphone, *user)
    bobs = await devices.new(CHROME_LINUX)
    await login(bobs, *bob)
    # The iPhone's session runs out: it is no longer listed.
    await pg.execute(
        "UPDATE sessions SET idle_expires_at = now() - interval '1 second' WHERE id_hash = $1",
        id_hash_of(cookie_of(iphone)),
    )

    rows = await sessions_page(chrome)
    assert set(rows) == {handle_of(cookie_of(chrome)), handle_of(cookie_of(firefox))}
    mine, other = rows[handle_of(cookie_of(chrome))], rows[handle_of(cookie_of(firefox))]
    assert "Chrome on Linux" in mine
    assert "this device" in mine
    assert "Firefox on Windows" in other
    assert "this device" not in other
    for row in rows.values():
        assert "127.0.0.1" in row
    assert handle_of(cookie_of(bobs)) not in (await (await chrome.get("/sessions")).text())

    # Seen from the other device, the mark moves with it.
    rows = await sessions_page(firefox)
    assert "this device" in rows[handle_of(cookie_of(firefox))]
    assert "this device" not in rows[handle_of(cookie_of(chrome))]
    assert (await (await firefox.get("/sessions")).text()).count("this device") == 1

    # Bob sees his own, on a Chrome too, and none of Alice's.
    assert set(await sessions_page(bobs)) == {handle_of(cookie_of(bobs))}


async def test_device_names(devices: Devices, user: tuple[str, str]) -> None:
    iphone = await devices.new(SAFARI_IPHONE)
    await login(iphone, *user)
    (row,) = (await sessions_page(iphone)).values()
    assert "Mobile Safari on iOS (iPhone)" in row


async def test_sessions_pages_require_login(client: TestClient, user: tuple[str, str], pg: asyncpg.Connection) -> None:
    other = await client.post("/login", data={"username": user[0], "password": user[1]}, allow_redirects=False)
    assert other.status == 303
    client.session.cookie_jar.clear()  # the session exists, but this browser is anonymous now
    before = await row_counts(pg)
    (handle,) = await live_handles(pg, "alice")
    for method, path, data in (
        ("GET", "/sessions", None),
        ("POST", "/sessions/revoke", {"handle": handle}),
        ("POST", "/sessions/revoke-others", None),
    ):
        response = await client.request(method, path, data=data, allow_redirects=False)
        assert response.status == 303, (path, response.status)
        assert response.headers["Location"] == LOGIN_PAGE
    assert await row_counts(pg) == before


# -- revoking ------------------------------------------------------------------------------


async def test_revoking_another_of_my_sessions_signs_that_device_out(
    devices: Devices, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    chrome, firefox = await devices.new(CHROME_LINUX), await devices.new(FIREFOX_WINDOWS)
    await login(chrome, *user)
    await login(firefox, *user)
    response = await revoke(chrome, handle_of(cookie_of(firefox)))
    assert response.status == 303
    assert response.headers["Location"] == "/sessions"
    assert "Set-Cookie" not in response.headers  # my own cookie stays

    assert await is_anonymous(firefox)
    assert not await is_anonymous(chrome)
    assert await live_handles(pg, "alice") == {handle_of(cookie_of(chrome))}


async def test_revoking_with_a_handle_that_is_not_mine_deletes_nothing(
    devices: Devices, user: tuple[str, str], bob: tuple[str, str], pg: asyncpg.Connection
) -> None:
    chrome, firefox, bobs = [await devices.new(ua) for ua in (CHROME_LINUX, FIREFOX_WINDOWS, SAFARI_IPHONE)]
    await login(chrome, *user)
    await login(firefox, *user)
    await login(bobs, *bob)
    before = await row_counts(pg)
    firefox_hash = id_hash_of(cookie_of(firefox))
    for handle in (
        handle_of(cookie_of(bobs)),  # another user's session
        secrets.token_hex(8),  # made up
        "",
        "not-a-handle",
        firefox_hash[:4].hex(),  # a prefix of my other session's handle
        firefox_hash.hex(),  # its whole id hash
        handle_of(cookie_of(firefox)) + "00",
        " " + handle_of(cookie_of(firefox)),
        "é" * 16,
    ):
        response = await revoke(chrome, handle)
        if re.fullmatch(r"[0-9a-f]{16}", handle):  # a handle, just not one of mine
            assert response.status == 303, (handle, response.status)
            assert response.headers["Location"] == "/sessions"
        else:  # not a handle at all
            assert response.status == 400, (handle, response.status)
        assert await row_counts(pg) == before, handle
    for client in (chrome, firefox, bobs):
        assert not await is_anonymous(client)


async def test_revoke_with_a_bad_form_is_a_400(devices: Devices, user: tuple[str, str], pg: asyncpg.Connection) -> None:
    chrome, firefox = await devices.new(CHROME_LINUX), await devices.new(FIREFOX_WINDOWS)
    await login(chrome, *user)
    await login(firefox, *user)
    handle = handle_of(cookie_of(firefox))
    before = await row_counts(pg)
    for body in (b"", b"other=1", f"handle={handle}&handle={handle}".encode(), b"handle=%ff%fe"):
        response = await chrome.post(
            "/sessions/revoke",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            allow_redirects=False,
        )
        assert response.status == 400, body
        assert response.content_type == "text/html"
    assert await row_counts(pg) == before
    assert not await is_anonymous(firefox)


async def test_revoking_my_own_handle_logs_me_out(
    devices: Devices, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    chrome, firefox = await devices.new(CHROME_LINUX), await devices.new(FIREFOX_WINDOWS)
    await login(chrome, *user)
    await login(firefox, *user)
    response = await revoke(chrome, handle_of(cookie_of(chrome)))
    assert response.status == 303
    assert response.headers["Location"] == "/public/login.html?signed-out=1"  # it was a logout
    ((name, value, attrs),) = set_cookies(response)
    assert name == "session"
    assert value in ("", '""')
    assert attrs["max-age"] == "0"
    assert await live_handles(pg, "alice") == {handle_of(cookie_of(firefox))}
    assert await is_anonymous(chrome)
    assert not await is_anonymous(firefox)


async def test_revoke_others_keeps_only_the_current_session(
    devices: Devices, user: tuple[str, str], bob: tuple[str, str], pg: asyncpg.Connection
) -> None:
    chrome, firefox, iphone, bobs = [
        await devices.new(ua) for ua in (CHROME_LINUX, FIREFOX_WINDOWS, SAFARI_IPHONE, CHROME_LINUX)
    ]
    for device in (chrome, firefox, iphone):
        await login(device, *user)
    await login(bobs, *bob)
    response = await chrome.post("/sessions/revoke-others", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/sessions"
    assert await live_handles(pg, "alice") == {handle_of(cookie_of(chrome))}
    assert await live_handles(pg, "bob") == {handle_of(cookie_of(bobs))}
    assert await is_anonymous(firefox)
    assert await is_anonymous(iphone)
    assert not await is_anonymous(chrome)
    assert not await is_anonymous(bobs)
    assert set(await sessions_page(chrome)) == {handle_of(cookie_of(chrome))}


# -- what a row records about its client ---------------------------------------------------


async def test_row_records_client_ip_and_user_agent(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    # Not behind a trusted proxy: X-Forwarded-For is the client's say-so and is ignored.
    response = await client.post(
        "/login",
        data={"username": user[0], "password": user[1]},
        headers={"User-Agent": FIREFOX_WINDOWS, "X-Forwarded-For": "1.2.3.4, 5.6.7.8", **HTTPS},
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/"
    row = await pg.fetchrow("SELECT client_ip, user_agent FROM sessions")
    assert tuple(row) == ("127.0.0.1", FIREFOX_WINDOWS)
    assert set_cookies(response)[0][0] == "session"  # and X-Forwarded-Proto made nothing secure


async def test_behind_trusted_proxy_row_records_the_last_forwarded_address(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    client = await make_client(make_settings(db_url, trust_proxy=True))
    headers = {"User-Agent": CHROME_LINUX, "X-Forwarded-For": "1.2.3.4, 5.6.7.8", **HTTPS}
    response = await client.post(
        "/login", data={"username": user[0], "password": user[1]}, headers=headers, allow_redirects=False
    )
    assert response.headers["Location"] == "/"
    row = await pg.fetchrow("SELECT client_ip, user_agent FROM sessions")
    assert tuple(row) == ("5.6.7.8", CHROME_LINUX)
    ((name, value, _),) = set_cookies(response)
    assert name == "__Host-session"
    (listed,) = (await sessions_page(client, {**headers, "Cookie": f"{name}={value}"})).values()
    assert "5.6.7.8" in listed
    assert "1.2.3.4" not in listed
    assert "Chrome on Linux" in listed


async def test_trusted_proxy_redirects_plain_http(make_client: MakeClient, db_url: str) -> None:
    client = await make_client(make_settings(db_url, trust_proxy=True))
    response = await client.get("/sessions", headers={"X-Forwarded-Proto": "http"}, allow_redirects=False)
    assert response.status == 308
    assert response.headers["Location"].startswith("https://")


# -- handles -------------------------------------------------------------------------------


async def test_handle_is_derived_from_the_id_hash_and_cannot_authenticate(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    await login(client, *user)
    cookie = cookie_of(client)
    (handle,) = await sessions_page(client)
    stored = await pg.fetchval("SELECT id_hash FROM sessions")
    assert stored == id_hash_of(cookie)
    assert handle == stored[:8].hex()
    page = await (await client.get("/sessions")).text()
    assert token_of(cookie) not in page
    assert cookie.split(".")[1] not in page

    client.session.cookie_jar.clear()
    for value in (handle, stored.hex(), f"{handle}.{cookie.split('.')[1]}"):
        for path in ("/", "/sessions"):
            response = await client.get(path, headers={"Cookie": f"session={value}"}, allow_redirects=False)
            assert response.status == 303, (value, path)
            assert response.headers["Location"] == LOGIN_PAGE
    # The real cookie still works: the refusals above were about the values, not the client.
    assert not await is_anonymous(client, {"Cookie": f"session={cookie}"})


# -- password resets and deleted users -----------------------------------------------------


async def test_password_reset_ends_every_session_of_that_user(
    devices: Devices, user: tuple[str, str], bob: tuple[str, str], pg: asyncpg.Connection, db_url: str
) -> None:
    chrome, firefox, bobs = [await devices.new(ua) for ua in (CHROME_LINUX, FIREFOX_WINDOWS, SAFARI_IPHONE)]
    await login(chrome, *user)
    await login(firefox, *user)
    await login(bobs, *bob)
    new_hash = await hash_once("a brand new password", 4)
    async with asyncpg.create_pool(db_url, min_size=1, max_size=1) as pool:
        storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])
        assert await users.set_password(storage, "ALICE", new_hash) == (False, "alice")  # a reset, not a new user

    assert await is_anonymous(chrome)
    assert await is_anonymous(firefox)
    assert not await is_anonymous(bobs)
    assert await live_handles(pg, "alice") == set()
    await login(chrome, "alice", "a brand new password")
    assert not await is_anonymous(chrome)


async def test_password_reset_from_the_cli_ends_sessions(
    devices: Devices, user: tuple[str, str], pg: asyncpg.Connection, db_url: str
) -> None:
    chrome = await devices.new(CHROME_LINUX)
    await login(chrome, *user)
    code, out, err = await run_app("user", "add", "alice", database_url=db_url, stdin=b"reset-by-operator\n")
    assert code == 0, err
    assert out.strip() == "reset the password of alice and ended their sessions"
    assert await is_anonymous(chrome)
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0
    await login(chrome, "alice", "reset-by-operator")


async def test_deleting_a_user_deletes_their_sessions(
    devices: Devices, user: tuple[str, str], bob: tuple[str, str], pg: asyncpg.Connection
) -> None:
    chrome, bobs = await devices.new(CHROME_LINUX), await devices.new(FIREFOX_WINDOWS)
    await login(chrome, *user)
    await login(bobs, *bob)
    await pg.execute("DELETE FROM users WHERE username = 'alice'")
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 1
    assert await is_anonymous(chrome)
    assert not await is_anonymous(bobs)


async def test_deleting_a_user_from_the_cli_deletes_their_sessions(
    devices: Devices, user: tuple[str, str], bob: tuple[str, str], pg: asyncpg.Connection, db_url: str
) -> None:
    chrome, bobs = await devices.new(CHROME_LINUX), await devices.new(FIREFOX_WINDOWS)
    await login(chrome, *user)
    await login(bobs, *bob)
    code, _, err = await run_app("user", "delete", "alice", database_url=db_url)
    assert code == 0, err
    assert await live_handles(pg, "bob") == {handle_of(cookie_of(bobs))}
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 1
    assert await is_anonymous(chrome)


# -- security headers ----------------------------------------------------------------------


def assert_security_headers(response: ClientResponse, *, https: bool = False) -> None:
    where = f"{response.method} {response.url.path} -> {response.status}"
    csp = response.headers.get("Content-Security-Policy", "")
    assert "default-src 'none'" in csp, where
    assert "frame-ancestors 'none'" in csp, where
    assert "unsafe-inline" not in csp, where
    assert "unsafe-eval" not in csp, where
    assert response.headers.get("X-Content-Type-Options") == "nosniff", where
    assert response.headers.get("Referrer-Policy") in ("same-origin", "no-referrer", "strict-origin"), where
    assert response.headers.get("X-Frame-Options") == "DENY", where
    if https:
        hsts = response.headers.get("Strict-Transport-Security", "")
        assert re.match(r"max-age=[1-9][0-9]{6,}", hsts), where  # at least ~12 days; we send 2 years
    else:
        assert "Strict-Transport-Security" not in response.headers, where


async def assert_html_page(response: ClientResponse, status: int, *, https: bool = False) -> None:
    assert response.status == status, (response.url.path, response.status)
    assert response.content_type == "text/html"
    assert_security_headers(response, https=https)
    # The CSP forbids inline script and style, so the page must not rely on them.
    text = await response.text()
    assert re.search(r"<script(?![^>]*\bsrc=)", text) is None
    assert "<style" not in text
    assert " style=" not in text
    assert re.search(r"\son[a-z]+=", text) is None


async def test_every_page_carries_the_security_headers(
    client: TestClient, user: tuple[str, str], make_client: MakeClient, db_url: str
) -> None:
    await assert_html_page(await client.get("/public/login.html"), 200)
    await assert_html_page(await client.post("/login", data=b"junk", allow_redirects=False), 400)
    await assert_html_page(
        await client.post("/logout", headers={"Origin": "https://evil.example"}, allow_redirects=False), 403
    )
    assert_security_headers(await client.get("/", allow_redirects=False))  # the 303
    assert_security_headers(await client.get("/no-such-page"))  # 404
    assert_security_headers(await client.get("/public/style.css"))
    await login(client, *user)
    await assert_html_page(await client.get("/"), 200)
    await assert_html_page(await client.get("/sessions"), 200)
    await assert_html_page(await client.get("/logout"), 200)
    assert_security_headers(await client.post("/logout", allow_redirects=False))

    throttled = await make_client(make_settings(db_url, login_limits=Limits(per_username_ip=1)))
    await throttled.post("/login", data={"username": "alice", "password": "wrong"}, allow_redirects=False)
    await assert_html_page(
        await throttled.post("/login", data={"username": "alice", "password": "wrong"}, allow_redirects=False), 429
    )

    # The database goes away: a 503 page, still with the headers.
    await client.app[POOL].close()
    response = await client.post("/login", data={"username": "alice", "password": "x"}, allow_redirects=False)
    await assert_html_page(response, 503)
    assert response.headers["Retry-After"].isdigit()


async def test_over_https_hsts_and_a_host_prefixed_secure_cookie(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    client = await make_client(make_settings(db_url, trust_proxy=True))
    await assert_html_page(await client.get("/public/login.html", headers=HTTPS), 200, https=True)
    await assert_html_page(await client.post("/login", data=b"junk", headers=HTTPS), 400, https=True)
    response = await client.post(
        "/login", data={"username": user[0], "password": user[1]}, headers=HTTPS, allow_redirects=False
    )
    assert response.headers["Location"] == "/"
    assert_security_headers(response, https=True)
    ((name, value, attrs),) = set_cookies(response)
    assert name == "__Host-session"
    assert "secure" in attrs
    assert "httponly" in attrs
    assert attrs["path"] == "/"
    assert attrs["samesite"].lower() == "lax"
    assert "domain" not in attrs
    cookie = {"Cookie": f"__Host-session={value}"}

    await assert_html_page(await client.get("/", headers={**HTTPS, **cookie}), 200, https=True)
    await assert_html_page(await client.get("/sessions", headers={**HTTPS, **cookie}), 200, https=True)
    await assert_html_page(await client.get("/logout", headers={**HTTPS, **cookie}), 200, https=True)
    # Over HTTPS only the prefixed name counts.
    assert await is_anonymous(client, {**HTTPS, "Cookie": f"session={value}"})

    out = await client.post("/logout", headers={**HTTPS, **cookie}, allow_redirects=False)
    assert out.status == 303
    assert_security_headers(out, https=True)
    ((name, deleted, attrs),) = set_cookies(out)
    assert name == "__Host-session"
    assert deleted in ("", '""')
    assert attrs["max-age"] == "0"
    assert attrs["path"] == "/"
    assert "secure" in attrs
    assert "httponly" in attrs
    assert attrs["samesite"].lower() == "lax"
    assert "domain" not in attrs
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0
    assert await is_anonymous(client, {**HTTPS, **cookie})


async def test_over_plain_http_the_cookie_is_not_secure(client: TestClient, user: tuple[str, str]) -> None:
    response = await client.post("/login", data={"username": user[0], "password": user[1]}, allow_redirects=False)
    ((name, _, attrs),) = set_cookies(response)
    assert name == "session"
    assert "secure" not in attrs
    assert "httponly" in attrs
    assert attrs["samesite"].lower() == "lax"
    assert_security_headers(response, https=False)


# -- logs ----------------------------------------------------------------------------------


def one_event(app_log: AppLog, event: str, request_id: str) -> str:
    found = [
        line
        for line in app_log.events()
        if line.startswith(f"event={event} ") and line.endswith(f" request_id={request_id}")
    ]
    assert len(found) == 1, (event, request_id, app_log.events())
    return found[0]


async def test_session_events_are_logged_without_secrets(
    devices: Devices, pg: asyncpg.Connection, app_log: AppLog
) -> None:
    username, password = "carol-0b5e91", "Pw-" + secrets.token_hex(12)
    await add_user(pg, username, password)
    laptop, phone, stranger = [await devices.new(ua) for ua in (CHROME_LINUX, SAFARI_IPHONE, FIREFOX_WINDOWS)]

    response = await laptop.post(
        "/login",
        data={"username": username, "password": password},
        headers={"X-Request-ID": "req-login-1"},
        allow_redirects=False,
    )
    assert response.headers["Location"] == "/"
    cookie = cookie_of(laptop)
    line = one_event(app_log, "session.created", "req-login-1")
    assert re.search(r" fp=([0-9a-f]{8})( |$)", line)
    assert f" fp={id_hash_of(cookie)[:4].hex()}" in line

    assert (await laptop.get("/", headers={"X-Request-ID": "req-home-1"})).status == 200
    await login(phone, username, password)
    phone_cookie = cookie_of(phone)

    bad = f"{token_of(cookie)}.{TokenSigner((b'another-key-' * 4,)).sign(token_of(cookie)).split('.')[1]}"
    response = await stranger.get(
        "/", headers={"Cookie": f"session={bad}", "X-Request-ID": "req-bad-1"}, allow_redirects=False
    )
    assert response.status == 303
    one_event(app_log, "session.bad_signature", "req-bad-1")

    response = await laptop.post(
        "/sessions/revoke",
        data={"handle": handle_of(phone_cookie)},
        headers={"X-Request-ID": "req-revoke-1"},
        allow_redirects=False,
    )
    assert response.status == 303
    line = one_event(app_log, "session.revoked", "req-revoke-1")
    assert f" fp={id_hash_of(phone_cookie)[:4].hex()}" in line  # the session that was ended

    assert (await laptop.post("/logout", headers={"X-Request-ID": "req-out-1"}, allow_redirects=False)).status == 303
    one_event(app_log, "session.ended", "req-out-1")

    secrets_seen = {
        "password": password,
        "cookie": cookie,
        "token": token_of(cookie),
        "signature": cookie.split(".")[1],
        "other cookie": phone_cookie,
        "other token": token_of(phone_cookie),
        "forged cookie": bad,
    }
    assert app_log.lines()
    for line in app_log.lines():
        for what, value in secrets_seen.items():
            assert value not in line, f"{what} logged: {line}"
    for line in app_log.events():
        assert username not in line, line  # session data


async def test_a_request_id_that_is_not_a_token_is_replaced(
    client: TestClient, user: tuple[str, str], app_log: AppLog
) -> None:
    response = await client.post(
        "/login",
        data={"username": user[0], "password": user[1]},
        headers={"X-Request-ID": "x event=forged fp=deadbeef"},
        allow_redirects=False,
    )
    assert response.status == 303
    (line,) = [line for line in app_log.events() if line.startswith("event=session.created")]
    assert "forged" not in line
    assert re.search(r" request_id=[0-9a-f]{32}( |$)", line), line


async def test_get_login_leads_to_the_login_form(client: TestClient) -> None:
    response = await client.get("/login", allow_redirects=False)
    assert (response.status, response.headers["Location"]) == (303, "/public/login.html")
