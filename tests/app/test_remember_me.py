"""The demo's "Remember me" box (issue 21, item 2) and its cookie settings, through the real app:
unticked, a browser-session cookie (no Max-Age: gone when the browser closes) with the ordinary
idle and absolute timeouts; ticked, a cookie and a session of SESSION_REMEMBER_TIMEOUT, ended after
SESSION_REMEMBER_IDLE_TIMEOUT without a request. SESSION_COOKIE_DOMAIN and SESSION_COOKIE_SAMESITE
reach the cookie and its expiry at logout."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie

import asyncpg
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres.tokens import id_hash_of
from support.demo import make_settings
from support.paths import REPO_ROOT

from app.config import DEFAULT_REMEMBER_IDLE_TIMEOUT, DEFAULT_REMEMBER_TIMEOUT, ConfigError, load_settings

MakeClient = Callable[..., Awaitable[TestClient]]


async def post_login(client: TestClient, user: tuple[str, str], **extra: str) -> ClientResponse:
    response = await client.post(
        "/login", data={"username": user[0], "password": user[1], **extra}, allow_redirects=False
    )
    return response


def the_cookie(response: ClientResponse) -> tuple[str, str, dict[str, str | bool]]:
    headers = response.headers.getall("Set-Cookie", [])
    sessions = [h for h in headers if h.split("=", 1)[0].endswith("session")]
    assert len(sessions) == 1, headers
    jar: SimpleCookie = SimpleCookie()
    jar.load(sessions[0])
    ((name, morsel),) = jar.items()
    return name, morsel.value, {key: morsel[key] for key in morsel}


async def lifetime(pg: asyncpg.Connection, cookie: str) -> tuple[object, ...]:
    row = await pg.fetchrow(
        "SELECT idle_timeout, browser_session, extract(epoch FROM absolute_expires_at - created_at)::int AS lifetime,"
        " extract(epoch FROM idle_expires_at - created_at)::int AS idle FROM sessions WHERE id_hash = $1",
        id_hash_of(cookie.split(".")[0]),
    )
    return tuple(row)


async def test_unticked_a_browser_session_cookie_with_the_ordinary_timeouts(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    client = await make_client(make_settings(db_url, idle_timeout=600, absolute_timeout=7200))
    response = await post_login(client, user)
    assert response.status == 303
    name, value, attributes = the_cookie(response)
    assert name == "session"
    assert attributes["max-age"] == ""
    assert attributes["expires"] == ""
    assert await lifetime(pg, value) == (None, True, 7200, 600)
    home = await client.get("/", headers={"Cookie": f"session={value}"}, allow_redirects=False)
    assert home.status == 200


async def test_ticked_a_persistent_cookie_of_the_remember_timeout(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    settings = make_settings(
        db_url, idle_timeout=600, absolute_timeout=7200, remember_timeout=86400, remember_idle_timeout=3600
    )
    client = await make_client(settings)
    response = await post_login(client, user, remember="on")
    assert response.status == 303
    _name, value, attributes = the_cookie(response)
    assert 86399 <= int(str(attributes["max-age"])) <= 86400
    assert await lifetime(pg, value) == (3600, False, 86400, 3600)
    # A day's absence ends an ordinary session; a remembered one lives on past the ordinary
    # absolute timeout, up to its own idle timeout.
    await pg.execute(
        "UPDATE sessions SET created_at = created_at - interval '3000 s', last_seen_at = last_seen_at - interval"
        " '3000 s', idle_expires_at = idle_expires_at - interval '3000 s',"
        " absolute_expires_at = absolute_expires_at - interval '3000 s'"
    )
    home = await client.get("/", headers={"Cookie": f"session={value}"}, allow_redirects=False)
    assert home.status == 200
    # Logout expires it as it was set.
    logout = await client.post("/logout", headers={"Cookie": f"session={value}"}, allow_redirects=False)
    _name, gone, expired = the_cookie(logout)
    assert (gone, expired["max-age"]) == ("", "0")


async def test_a_remember_value_other_than_on_is_a_400(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    client = await make_client(make_settings(db_url))
    response = await post_login(client, user, remember="forever")
    assert response.status == 400
    assert "Set-Cookie" not in response.headers
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0


async def test_cookie_domain_and_samesite_settings(make_client: MakeClient, db_url: str, user: tuple[str, str]) -> None:
    client = await make_client(make_settings(db_url, cookie_domain="example.com", cookie_samesite="Strict"))
    response = await post_login(client, user)
    name, value, attributes = the_cookie(response)
    assert (name, attributes["domain"], attributes["samesite"]) == ("session", "example.com", "Strict")
    logout = await client.post("/logout", headers={"Cookie": f"session={value}"}, allow_redirects=False)
    name, gone, expired = the_cookie(logout)
    assert (name, gone, expired["max-age"], expired["domain"], expired["samesite"]) == (
        "session",
        "",
        "0",
        "example.com",
        "Strict",
    )


# -- settings ---------------------------------------------------------------------------------------

ENV = {
    "DATABASE_URL": "postgresql://app:secret@db.example.com:5432/app",
    "SESSION_AUTHENTICATION_KEY": "a" * 32,
    "SESSION_ENCRYPTION_KEY": "e" * 32,
}


def test_remember_and_cookie_defaults() -> None:
    s = load_settings(ENV)
    assert (s.remember_timeout, s.remember_idle_timeout) == (DEFAULT_REMEMBER_TIMEOUT, DEFAULT_REMEMBER_IDLE_TIMEOUT)
    assert (DEFAULT_REMEMBER_TIMEOUT, DEFAULT_REMEMBER_IDLE_TIMEOUT) == (14 * 86400, 7 * 86400)
    assert (s.cookie_domain, s.cookie_samesite) == (None, "Lax")
    # Never shorter than what the ordinary timeouts are set to.
    long = load_settings({**ENV, "SESSION_ABSOLUTE_TIMEOUT": str(30 * 86400), "SESSION_IDLE_TIMEOUT": str(10 * 86400)})
    assert (long.remember_timeout, long.remember_idle_timeout) == (30 * 86400, 10 * 86400)
    s = load_settings({**ENV, "SESSION_COOKIE_DOMAIN": "example.com", "SESSION_COOKIE_SAMESITE": "strict"})
    assert (s.cookie_domain, s.cookie_samesite) == ("example.com", "Strict")


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"SESSION_REMEMBER_TIMEOUT": "3600"}, "SESSION_REMEMBER_TIMEOUT"),  # below the absolute timeout
        ({"SESSION_REMEMBER_IDLE_TIMEOUT": "60"}, "SESSION_REMEMBER_IDLE_TIMEOUT"),  # below the idle timeout
        ({"SESSION_REMEMBER_IDLE_TIMEOUT": str(15 * 86400)}, "SESSION_REMEMBER_IDLE_TIMEOUT"),  # past its lifetime
        ({"SESSION_REMEMBER_TIMEOUT": "two weeks"}, "SESSION_REMEMBER_TIMEOUT"),
        ({"SESSION_COOKIE_DOMAIN": ".example.com"}, "SESSION_COOKIE_DOMAIN"),
        ({"SESSION_COOKIE_DOMAIN": "example.com;x"}, "SESSION_COOKIE_DOMAIN"),
        ({"SESSION_COOKIE_SAMESITE": "sometimes"}, "SESSION_COOKIE_SAMESITE"),
    ],
)
def test_bad_remember_and_cookie_settings_are_named(values: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({**ENV, **values})
    assert named in str(info.value)
    assert "\n" not in str(info.value)


def test_the_login_page_offers_the_box_unticked() -> None:
    page = (REPO_ROOT / "public" / "login.html").read_text(encoding="utf-8")
    assert '<input id="remember" name="remember" type="checkbox">' in page  # not "checked": opt-in
