"""The user's journey through the real app: login, home, logout, and the login form's errors."""

from __future__ import annotations

import asyncpg
from aiohttp.test_utils import TestClient
from support.demo import login, session_cookie


async def test_anonymous_home_redirects_to_login_form(client: TestClient) -> None:
    response = await client.get("/", allow_redirects=False)
    assert response.status == 303
    assert response.headers["Location"] == "/public/login.html"


async def test_login_form_is_served_and_favicon_is_404(client: TestClient) -> None:
    page = await client.get("/public/login.html")
    assert page.status == 200
    text = await page.text()
    assert 'action="/login"' in text
    assert 'name="username"' in text
    assert 'name="password"' in text
    assert (await client.get("/favicon.ico")).status == 404


async def test_login_greets_user_then_logout_ends_session(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    await login(client, *user)
    cookie = session_cookie(client)
    assert cookie is not None
    home = await client.get("/", allow_redirects=False)
    assert home.status == 200
    assert "Hello alice" in await home.text()
    assert home.headers["Cache-Control"] == "no-store"
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 1

    out = await client.post("/logout", allow_redirects=False)
    assert out.status == 303
    assert out.headers["Location"] == "/public/login.html?signed-out=1"
    assert "session=" in out.headers["Set-Cookie"]
    assert "Max-Age=0" in out.headers["Set-Cookie"]
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0
    # The old cookie, replayed, is worthless.
    client.session.cookie_jar.update_cookies({"session": cookie})
    again = await client.get("/", allow_redirects=False)
    assert again.status == 303


async def test_login_is_case_insensitive_on_username_and_shows_stored_spelling(
    client: TestClient, user: tuple[str, str]
) -> None:
    await login(client, "ALICE", user[1])
    assert "Hello alice" in await (await client.get("/")).text()


async def test_wrong_password_and_unknown_user_look_the_same(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    for username, password in ((user[0], "wrong"), ("nobody", "wrong"), ("", ""), ("x" * 65, "pw")):
        response = await client.post("/login", data={"username": username, "password": password}, allow_redirects=False)
        assert response.status == 303
        assert response.headers["Location"] == "/public/login.html?error=1"
        assert "Set-Cookie" not in response.headers
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0


async def test_get_logout_changes_nothing(client: TestClient, user: tuple[str, str], pg: asyncpg.Connection) -> None:
    await login(client, *user)
    page = await client.get("/logout")
    assert page.status == 200
    assert 'method="post"' in await page.text()
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 1
    assert (await client.get("/", allow_redirects=False)).status == 200


async def test_username_is_escaped_in_greeting(client: TestClient, pg: asyncpg.Connection) -> None:
    from support.demo import add_user

    await add_user(pg, "<b>mallory</b>", "pw")
    await login(client, "<b>mallory</b>", "pw")
    text = await (await client.get("/")).text()
    assert "Hello &lt;b&gt;mallory&lt;/b&gt;" in text
    assert "<b>mallory" not in text
