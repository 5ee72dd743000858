"""The session cookie's attributes (issue 21, item 1), through HTTP with the real library: each
option as it reaches Set-Cookie, the same attributes on every expiry, the ``__Host-`` prefix only
where its rules hold and ``__Secure-`` otherwise when Secure, ``SameSite=None`` only with
Secure, ``cookie_params`` telling the truth, and every bad attribute refused at construction,
naming its argument."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import ArgumentError, PostgresStorage
from support.hosts import browser
from support.keys import AUTH_KEY, ENC_KEY
from support.lifetime_app import HTTPS, lifetime_app, only_cookie, raw_set_cookie, sent

ClientMaker = Callable[..., Awaitable[TestClient]]


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


def storage(pool: asyncpg.Pool, **options: Any) -> PostgresStorage:
    return PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], **options)


# -- checked at construction ------------------------------------------------------------------------

REFUSED = [
    ({"domain": ".example.com"}, "domain"),
    ({"domain": "example.com:8080"}, "domain"),
    ({"domain": "https://example.com"}, "domain"),
    ({"domain": "exa mple.com"}, "domain"),
    ({"domain": "example.com;path=/"}, "domain"),
    ({"domain": "example.com\r\nX-Evil: 1"}, "domain"),
    ({"domain": ""}, "domain"),
    ({"domain": "-bad-.example.com"}, "domain"),
    ({"path": "app"}, "path"),
    ({"path": ""}, "path"),
    ({"path": "/app;domain=evil.example"}, "path"),
    ({"path": "/app\n"}, "path"),
    ({"path": "/caf\u00e9"}, "path"),
    ({"samesite": "lax"}, "samesite"),
    ({"samesite": "none"}, "samesite"),
    ({"samesite": "Whatever"}, "samesite"),
    ({"samesite": "None", "secure": False}, "samesite"),
    ({"cookie_name": "__Host-session"}, "cookie_name"),
    ({"cookie_name": "__secure-session"}, "cookie_name"),
    ({"cookie_name": "my session"}, "cookie_name"),
    ({"cookie_name": "a;b"}, "cookie_name"),
    ({"cookie_name": ""}, "cookie_name"),
]


@pytest.mark.parametrize(("options", "argument"), REFUSED)
async def test_a_bad_cookie_attribute_is_refused_naming_it(
    pool: asyncpg.Pool, options: dict[str, Any], argument: str
) -> None:
    with pytest.raises(ArgumentError) as raised:
        storage(pool, **options)
    assert raised.value.argument == argument
    assert argument in str(raised.value)
    # The same check without a pool, for an app's configuration.
    with pytest.raises(ArgumentError):
        PostgresStorage.check_arguments(
            authentication_keys=[AUTH_KEY],
            encryption_keys=[ENC_KEY],
            idle_timeout=1800,
            absolute_timeout=43200,
            touch_interval=60,
            database_timeout=1.5,
            max_sessions_per_user=None,
            **options,
        )


WRONG_TYPES = [
    {"domain": b"example.com"},
    {"path": None},
    {"samesite": None},  # aiohttp-session's "no attribute": not offered, browsers differ on it
    {"httponly": "yes"},
    {"httponly": None},
    {"secure": "true"},
    {"cookie_name": None},
]


@pytest.mark.parametrize("options", WRONG_TYPES)
async def test_a_cookie_attribute_of_the_wrong_type_is_a_type_error_naming_it(
    pool: asyncpg.Pool, options: dict[str, Any]
) -> None:
    with pytest.raises(TypeError) as raised:
        storage(pool, **options)
    assert next(iter(options)) in str(raised.value)
    assert isinstance(raised.value, ArgumentError)
    assert raised.value.argument == next(iter(options))


async def test_cookie_params_tell_the_truth(pool: asyncpg.Pool) -> None:
    made = storage(
        pool, secure=True, domain="example.com", path="/app", samesite="Strict", httponly=False, absolute_timeout=7200
    )
    assert made.cookie_params == {
        "domain": "example.com",
        "max_age": 7200,
        "path": "/app",
        "secure": True,
        "httponly": False,
        "samesite": "Strict",
    }
    assert made.max_age == 7200
    assert made.cookie_name == "session"  # the base name; the prefix is the request's
    assert storage(pool).cookie_params == {
        "domain": None,
        "max_age": 43200,
        "path": "/",
        "secure": None,  # decided per request
        "httponly": True,
        "samesite": "Lax",
    }


# -- through HTTP ----------------------------------------------------------------------------------


async def test_defaults_on_plain_http(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    client = await lifetime_app(aiohttp_client, pool, absolute_timeout=3600, idle_timeout=600)
    response = await client.post("/login")
    name, morsel = only_cookie(response)
    assert name == "session"
    assert (morsel["path"], morsel["domain"], morsel["samesite"]) == ("/", "", "Lax")
    assert morsel["httponly"] is True
    assert not morsel["secure"]
    assert 3599 <= int(morsel["max-age"]) <= 3600


async def test_secure_host_only_cookie_is_host_prefixed(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    client = await lifetime_app(aiohttp_client, pool, secure=True)
    response = await client.post("/login")
    name, morsel = only_cookie(response)
    assert name == "__Host-session"
    assert morsel["secure"] is True
    assert (morsel["path"], morsel["domain"]) == ("/", "")
    assert (await client.get("/info", headers=sent(name, morsel.value))).status == 200
    assert (await (await client.get("/info", headers=sent(name, morsel.value))).json())["data"] == {"user_id": 1}
    # Never read without its prefix.
    assert (await (await client.get("/info", headers=sent("session", morsel.value))).json())["new"] is True


@pytest.mark.parametrize(
    ("options", "prefix", "path", "domain"),
    [
        ({"domain": "example.com"}, "", "/", "example.com"),
        ({"path": "/app"}, "/app", "/app", ""),
        ({"domain": "app.example.com", "path": "/app"}, "/app", "/app", "app.example.com"),
    ],
)
async def test_a_secure_cookie_with_a_domain_or_a_path_is_secure_prefixed(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool, options: dict[str, str], prefix: str, path: str, domain: str
) -> None:
    """``__Host-`` forbids a Domain and any Path but ``/``: such a Secure cookie is named
    ``__Secure-`` (RFC 6265bis 4.1.3.1), which browsers still refuse without Secure."""
    client = await lifetime_app(aiohttp_client, pool, prefix=prefix, secure=True, **options)
    response = await client.post(prefix + "/login")
    name, morsel = only_cookie(response)
    assert name == "__Secure-session"
    assert (morsel["path"], morsel["domain"], morsel["secure"]) == (path, domain, True)
    data = await (await client.get(prefix + "/info", headers=sent(name, morsel.value))).json()
    assert data["data"] == {"user_id": 1}
    for other in ("session", "__Host-session"):
        assert (await (await client.get(prefix + "/info", headers=sent(other, morsel.value))).json())["new"] is True
    # Logout expires it with the same name, Domain, Path, Secure and SameSite.
    gone = await client.post(prefix + "/logout", headers=sent(name, morsel.value))
    expired_name, expired = only_cookie(gone)
    assert expired_name == "__Secure-session"
    assert expired.value == ""
    assert expired["max-age"] == "0"
    assert (expired["path"], expired["domain"], expired["secure"], expired["samesite"]) == (path, domain, True, "Lax")


async def test_a_cookie_not_secure_with_a_domain_keeps_the_plain_name(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    client = await lifetime_app(aiohttp_client, pool, secure=False, domain="example.com", samesite="Strict")
    response = await client.post("/login", headers=HTTPS)  # secure=False: never Secure, whatever the request
    name, morsel = only_cookie(response)
    assert name == "session"
    assert (morsel["domain"], morsel["samesite"], morsel["secure"]) == ("example.com", "Strict", "")
    gone = await client.post("/logout", headers=sent(name, morsel.value))
    expired_name, expired = only_cookie(gone)
    assert (expired_name, expired["max-age"], expired["domain"], expired["samesite"]) == (
        "session",
        "0",
        "example.com",
        "Strict",
    )


async def test_httponly_false_and_samesite_strict(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    client = await lifetime_app(aiohttp_client, pool, httponly=False, samesite="Strict")
    response = await client.post("/login")
    header = raw_set_cookie(response)
    assert "HttpOnly" not in header
    assert "SameSite=Strict" in header
    name, morsel = only_cookie(response)
    gone = await client.post("/logout", headers=sent(name, morsel.value))
    assert "HttpOnly" not in raw_set_cookie(gone)
    assert "SameSite=Strict" in raw_set_cookie(gone)


async def test_per_request_secure_follows_the_scheme(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    client = await lifetime_app(aiohttp_client, pool, domain="example.com")
    plain = await client.post("/login")
    assert only_cookie(plain)[0] == "session"
    assert "Secure" not in raw_set_cookie(plain)
    secure = await client.post("/login", headers=HTTPS)
    name, morsel = only_cookie(secure)
    assert (name, morsel["secure"], morsel["domain"]) == ("__Secure-session", True, "example.com")
    gone = await client.post("/logout", headers=sent(name, morsel.value, **HTTPS))
    expired_name, expired = only_cookie(gone)
    assert (expired_name, expired["secure"], expired["domain"], expired["max-age"]) == (
        "__Secure-session",
        True,
        "example.com",
        "0",
    )


async def test_samesite_none_with_secure(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    client = await lifetime_app(aiohttp_client, pool, secure=True, samesite="None")
    response = await client.post("/login")
    header = raw_set_cookie(response)
    assert "SameSite=None" in header
    assert "Secure" in header
    name, morsel = only_cookie(response)
    assert name == "__Host-session"
    gone = await client.post("/logout", headers=sent(name, morsel.value))
    assert "SameSite=None" in raw_set_cookie(gone)
    assert "Secure" in raw_set_cookie(gone)


async def test_samesite_none_decided_per_request_falls_back_to_lax_on_plain_http(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    """secure=None: on HTTPS the cookie is ``SameSite=None; Secure``; on a plain-HTTP request
    (a development server) it is ``SameSite=Lax``, never ``SameSite=None`` without Secure, which
    browsers refuse."""
    client = await lifetime_app(aiohttp_client, pool, samesite="None")
    secure = await client.post("/login", headers=HTTPS)
    assert "SameSite=None" in raw_set_cookie(secure)
    assert "Secure" in raw_set_cookie(secure)
    plain = await client.post("/login")
    header = raw_set_cookie(plain)
    assert "SameSite=Lax" in header
    assert "Secure" not in header
    name, morsel = only_cookie(plain)
    gone = await client.post("/logout", headers=sent(name, morsel.value))
    assert "SameSite=Lax" in raw_set_cookie(gone)
    assert "Secure" not in raw_set_cookie(gone)


# -- a Domain cookie shared by sibling hosts, as a browser's cookie jar keeps it -------------------


@pytest.mark.parametrize("domain", ["example.com", None])
async def test_a_domain_cookie_is_shared_by_sibling_hosts_and_ended_from_either(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool, domain: str | None
) -> None:
    """app.example.com and api.example.com (both this machine), one storage with
    ``domain="example.com"``: a login on one is the session on the other, and a logout on the
    other ends it for both. Without a domain the cookie is host-only: the other host never sees
    it."""
    client = await lifetime_app(aiohttp_client, pool, secure=False, domain=domain)
    port = client.server.port
    app, api = f"http://app.example.com:{port}", f"http://api.example.com:{port}"
    async with browser("app.example.com", "api.example.com") as http:
        async with http.post(app + "/login") as response:
            assert response.status == 200
        async with http.get(api + "/info") as response:
            seen = (await response.json())["data"]
        if domain is None:
            assert seen == {}
            return
        assert seen == {"user_id": 1}
        async with http.post(api + "/logout") as response:
            assert "Domain=example.com" in response.headers["Set-Cookie"]
        assert [cookie.key for cookie in http.cookie_jar] == []  # the jar dropped it
        async with http.get(app + "/info") as response:
            assert (await response.json())["new"] is True
