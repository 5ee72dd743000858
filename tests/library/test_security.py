"""aiohttp-security on the store, with the real aiohttp-security from PyPI as the client, through
HTTP: the library's `PostgresIdentityPolicy` (the `[security]` extra) in every scenario of
aiohttp-security's own session-identity tests (remember, identify, forget through redirects) and
its API (`authorized_userid`, `check_authorized`, `check_permission`, `is_anonymous`,
`permits`), plus what the store adds: `remember()` gives a new session ID and the pre-login one
stops working (no fixation), the session is listed under its user, `forget()` deletes the row.
Then aiohttp-security's own unmodified `SessionIdentityPolicy` on the store, as it is.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_security
import aiohttp_session_postgres
import asyncpg
import pytest
from aiohttp import CookieJar, DummyCookieJar, web
from aiohttp.test_utils import TestClient
from aiohttp_security import (
    AbstractAuthorizationPolicy,
    AbstractIdentityPolicy,
    SessionIdentityPolicy,
    authorized_userid,
    check_authorized,
    check_permission,
    forget,
    is_anonymous,
    permits,
    remember,
)
from aiohttp_security.api import IDENTITY_KEY
from aiohttp_session_postgres import PostgresStorage, get_session
from aiohttp_session_postgres.security import PostgresIdentityPolicy
from support.keys import AUTH_KEY, ENC_KEY
from support.readme import readme_security

ClientMaker = Callable[..., Awaitable[TestClient]]
STORAGE = web.AppKey("storage", PostgresStorage)

# Strict: once the parallel work lands these pass, which fails the run until the mark is dropped.

# The users aiohttp-security's authorization policy knows, and what each may do.
PERMISSIONS = {"1": {"read"}, "2": {"read", "write"}, "alice": {"read"}}


class Authorization(AbstractAuthorizationPolicy):
    async def authorized_userid(self, identity: str) -> str | None:
        return identity if identity in PERMISSIONS else None

    async def permits(self, identity: str | None, permission: Any, context: Any = None) -> bool:
        return identity is not None and permission in PERMISSIONS.get(identity, set())


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


async def security_app(
    aiohttp_client: ClientMaker,
    pool: asyncpg.Pool,
    policy: AbstractIdentityPolicy,
    *,
    jar: bool = False,
    more: web.RouteTableDef | None = None,
    **options: Any,
) -> TestClient:
    """An app on the library with aiohttp-security set up over `policy`. `jar`: the client keeps
    cookies as a browser does (to follow redirects); else each request sends the Cookie header
    the test gives it."""
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], **options)
    app = web.Application()
    app[STORAGE] = storage
    aiohttp_session_postgres.setup(app, storage)
    aiohttp_security.setup(app, policy, Authorization())
    routes = web.RouteTableDef()

    @routes.post("/login")
    async def login(request: web.Request) -> web.Response:
        response = web.Response(text="signed in")
        kwargs: dict[str, Any] = {}
        if "max_age" in request.query:
            kwargs["max_age"] = None if request.query["max_age"] == "none" else int(request.query["max_age"])
        await remember(request, response, request.query["user"], **kwargs)
        return response

    @routes.post("/login-and-redirect")
    async def login_and_redirect(request: web.Request) -> web.Response:
        response = web.HTTPFound("/")
        await remember(request, response, request.query["user"])
        raise response

    @routes.post("/logout-and-redirect")
    async def logout_and_redirect(request: web.Request) -> web.Response:
        response = web.HTTPFound("/")
        await forget(request, response)
        raise response

    @routes.post("/logout")
    async def logout(request: web.Request) -> web.Response:
        response = web.Response(text="signed out")
        await forget(request, response)
        return response

    @routes.get("/")
    async def index(request: web.Request) -> web.Response:
        return web.Response(text=await authorized_userid(request) or "")

    @routes.get("/identify")
    async def identify(request: web.Request) -> web.Response:
        return web.Response(text=str(await request.app[IDENTITY_KEY].identify(request)))

    @routes.get("/private")
    async def private(request: web.Request) -> web.Response:
        return web.Response(text=f"hello {await check_authorized(request)}")

    @routes.post("/write")
    async def write(request: web.Request) -> web.Response:
        await check_permission(request, "write")
        return web.Response(text="written")

    @routes.get("/checks")
    async def checks(request: web.Request) -> web.Response:
        anonymous = await is_anonymous(request)
        return web.json_response({"anonymous": anonymous, "may_read": await permits(request, "read")})

    @routes.post("/note")
    async def note(request: web.Request) -> web.Response:
        (await get_session(request))["note"] = request.query["text"]
        return web.Response(text="noted")

    @routes.get("/session")
    async def session(request: web.Request) -> web.Response:
        current = await get_session(request)
        return web.json_response({"data": dict(current), "handle": current.handle})

    @routes.get("/sessions")
    async def sessions(request: web.Request) -> web.Response:
        user: int | str = int(request.query["user"]) if request.query["user"].isdigit() else request.query["user"]
        return web.json_response([info.handle for info in await request.app[STORAGE].list_sessions(user)])  # type: ignore[arg-type]

    app.add_routes(routes)
    if more is not None:
        app.add_routes(more)
    return await aiohttp_client(app, cookie_jar=CookieJar(unsafe=True) if jar else DummyCookieJar())


def cookie(value: str) -> dict[str, str]:
    return {"Cookie": f"session={value}"}


async def signed_in(client: TestClient, user: str, with_cookie: str | None = None) -> str:
    """POST /login as `user` (from the session `with_cookie`, if given); the new cookie."""
    response = await client.post(f"/login?user={user}", headers=cookie(with_cookie) if with_cookie else None)
    assert (response.status, await response.text()) == (200, "signed in")
    return response.cookies["session"].value


async def session_of(client: TestClient, value: str) -> dict[str, Any]:
    response = await client.get("/session", headers=cookie(value))
    assert response.status == 200
    return await response.json()


async def listed(client: TestClient, user: str) -> list[str]:
    return await (await client.get(f"/sessions?user={user}")).json()


async def row_count(pool: asyncpg.Pool) -> int:
    return await pool.fetchval("SELECT count(*) FROM sessions")


# -- PostgresIdentityPolicy: aiohttp-security's session-identity scenarios ----------------------


async def test_remember_stores_the_user_in_a_session_that_later_requests_see(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int))
    value = await signed_in(client, "1")
    seen = await session_of(client, value)
    # Under the storage's user_id_key, converted by user_id_of: the app's own logins do the same.
    assert seen["data"] == {"user_id": 1}
    assert await listed(client, "1") == [seen["handle"]]  # tied to the user: listed, endable, capped


async def test_identify_gives_the_remembered_identity_as_a_str(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int))
    assert await (await client.get("/identify")).text() == "None"  # anonymous
    value = await signed_in(client, "2")
    assert await (await client.get("/identify", headers=cookie(value))).text() == "2"  # str, as aiohttp-security wants


async def test_remember_and_forget_in_raised_redirects_sign_in_and_out(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    # As a browser does: the cookie set by a 302 is kept and sent to the page redirected to.
    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int), jar=True)
    response = await client.post("/login-and-redirect?user=1")
    assert (response.status, response.url.path, await response.text()) == (200, "/", "1")
    assert await row_count(pool) == 1
    response = await client.post("/logout-and-redirect")
    assert (response.status, response.url.path, await response.text()) == (200, "/", "")
    assert await row_count(pool) == 0  # forget ended the session: its row is gone


async def test_the_api_checks_follow_the_remembered_user(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int))
    anonymous = await client.get("/checks")
    assert await anonymous.json() == {"anonymous": True, "may_read": False}
    assert (await client.get("/private")).status == 401
    assert (await client.post("/write")).status == 401
    reader, writer = await signed_in(client, "1"), await signed_in(client, "2")
    assert await (await client.get("/checks", headers=cookie(reader))).json() == {"anonymous": False, "may_read": True}
    response = await client.get("/private", headers=cookie(reader))
    assert (response.status, await response.text()) == (200, "hello 1")
    assert (await client.post("/write", headers=cookie(reader))).status == 403  # signed in, not allowed
    response = await client.post("/write", headers=cookie(writer))
    assert (response.status, await response.text()) == (200, "written")
    # An identity the authorization policy does not know: remembered, but not authorized.
    stranger = await signed_in(client, "3")
    assert await (await client.get("/", headers=cookie(stranger))).text() == ""
    assert (await client.get("/private", headers=cookie(stranger))).status == 401
    assert await (await client.get("/checks", headers=cookie(stranger))).json() == {
        "anonymous": False,
        "may_read": False,
    }


# -- PostgresIdentityPolicy: what the store adds --------------------------------------------------


async def test_remember_gives_a_new_session_id_and_the_pre_login_one_stops_working(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int))
    # A pre-login session that holds something (a planted cookie would look the same).
    response = await client.post("/note?text=cart", headers=None)
    before = response.cookies["session"].value
    after = await signed_in(client, "1", with_cookie=before)
    assert after != before  # fixation: whoever knew the pre-login cookie does not share the login
    assert await session_of(client, before) == {"data": {}, "handle": None}  # used up: anonymous
    assert await (await client.get("/identify", headers=cookie(before))).text() == "None"
    signed = await session_of(client, after)
    assert signed["data"] == {"user_id": 1}  # nothing of a session that may have been planted
    assert await listed(client, "1") == [signed["handle"]]


async def test_forget_deletes_the_row_and_expires_the_cookie(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int))
    value = await signed_in(client, "1")
    assert await row_count(pool) == 1
    response = await client.post("/logout", headers=cookie(value))
    assert (response.status, await response.text()) == (200, "signed out")
    morsel = response.cookies["session"]
    assert (morsel.value, morsel["max-age"], morsel["path"]) == ("", "0", "/")
    assert await row_count(pool) == 0
    assert await listed(client, "1") == []
    assert await (await client.get("/identify", headers=cookie(value))).text() == "None"  # a replay is anonymous
    # Forgetting without a session does nothing, and sets no cookie.
    response = await client.post("/logout")
    assert response.status == 200
    assert "session" not in response.cookies


async def test_a_login_as_another_user_carries_nothing_of_the_previous_users_session(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int, keep_data=True))
    first = await signed_in(client, "1")
    assert (await client.post("/note?text=private to 1", headers=cookie(first))).status == 200
    second = await signed_in(client, "2", with_cookie=first)  # a shared computer: the next user signs in
    assert (await session_of(client, second))["data"] == {"user_id": 2}
    assert await listed(client, "1") == []  # the first user's session was used up by the login
    # The same user signing in again keeps their data (and gets a new ID all the same).
    again = await signed_in(client, "2", with_cookie=second)
    assert (await client.post("/note?text=mine", headers=cookie(again))).status == 200
    newest = await signed_in(client, "2", with_cookie=again)
    assert newest != again
    assert (await session_of(client, newest))["data"] == {"note": "mine", "user_id": 2}


async def test_keep_data_true_carries_the_pre_login_data(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int, keep_data=True))
    before = (await client.post("/note?text=cart")).cookies["session"].value
    after = await signed_in(client, "1", with_cookie=before)
    assert after != before
    assert (await session_of(client, after))["data"] == {"note": "cart", "user_id": 1}
    assert (await session_of(client, before))["data"] == {}


async def test_a_refused_max_age_signs_nobody_in(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    # An app that turns remember()'s ValueError into a 400 answers without a session: the value
    # is checked before the identity is stored.
    more = web.RouteTableDef()

    @more.post("/login-checked")
    async def login_checked(request: web.Request) -> web.Response:
        response = web.Response(text="signed in")
        try:
            await remember(request, response, "1", max_age=int(request.query["max_age"]))
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from exc
        return response

    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int), more=more)
    before = (await client.post("/note?text=cart")).cookies["session"].value
    response = await client.post("/login-checked?max_age=99999999", headers=cookie(before))
    assert response.status == 400
    assert "max_remember_timeout" in await response.text()
    assert "session" not in response.cookies
    assert await listed(client, "1") == []
    assert (await session_of(client, before))["data"] == {"note": "cart"}  # untouched


async def test_remember_refuses_keywords_it_does_not_know(aiohttp_client: ClientMaker, pool: asyncpg.Pool) -> None:
    more = web.RouteTableDef()

    @more.get("/odd")
    async def handler(request: web.Request) -> web.Response:
        response = web.Response()
        with pytest.raises(TypeError, match=r"^remember\(\) got unexpected keyword arguments: remember_me$"):
            await remember(request, response, "1", remember_me=True)
        return web.Response(text="refused")

    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int), more=more)
    assert await (await client.get("/odd")).text() == "refused"


def test_the_policy_refuses_bad_arguments() -> None:
    with pytest.raises(TypeError, match=r"^user_id_of must be callable or None, got str$"):
        PostgresIdentityPolicy(user_id_of="int")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"^keep_data must be True or False, got NoneType$"):
        PostgresIdentityPolicy(keep_data=None)  # type: ignore[arg-type]


async def test_remember_with_max_age_sets_the_sessions_lifetime(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy(user_id_of=int))
    # "Remember me": a cookie, and a server-side lifetime, of 600 s.
    response = await client.post("/login?user=1&max_age=600")
    assert response.cookies["session"]["max-age"] == "600"
    left = await pool.fetchval("SELECT extract(epoch FROM absolute_expires_at - now()) FROM sessions")
    assert 590 <= left <= 600
    # "Do not remember me": a browser-session cookie (no Max-Age, no Expires).
    response = await client.post("/login?user=1&max_age=none")
    morsel = response.cookies["session"]
    assert (morsel["max-age"], morsel["expires"]) == ("", "")


async def test_by_default_the_identity_is_stored_as_the_str_it_is(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    client = await security_app(aiohttp_client, pool, PostgresIdentityPolicy())
    value = await signed_in(client, "alice")
    seen = await session_of(client, value)
    assert seen["data"] == {"user_id": "alice"}
    assert await listed(client, "alice") == [seen["handle"]]
    assert await (await client.get("/private", headers=cookie(value))).text() == "hello alice"


# -- the README's recipe, as written -----------------------------------------------------------


async def test_the_readme_recipe_signs_in_and_out_through_aiohttp_security(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    path = tmp_path / "readme_security.py"
    path.write_text(readme_security())
    spec = importlib.util.spec_from_file_location("readme_security", path)
    assert spec is not None
    assert spec.loader is not None
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)

    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])
    app = web.Application()
    aiohttp_session_postgres.setup(app, storage)
    recipe.setup_security(app)
    client = await aiohttp_client(app)  # keeps cookies, follows redirects: a browser
    assert (await client.get("/")).status == 401
    response = await client.post("/login", data={"username": "mallory"})
    assert (response.status, await response.text()) == (403, "unknown user\n")
    response = await client.post("/login", data={"username": "alice"})
    assert (response.status, response.url.path, await response.text()) == (200, "/", "hello user 1\n")
    assert len(await storage.list_sessions(1)) == 1  # tied to user 1, an int as the app's own logins make it
    assert (await client.post("/write")).status == 403  # alice may read only
    response = await client.post("/logout")
    assert (response.url.path, response.status) == ("/", 401)  # signed out: home refuses
    assert await storage.list_sessions(1) == []
    assert await row_count(pool) == 0
    await client.post("/login", data={"username": "bob"})
    response = await client.post("/write")
    assert (response.status, await response.text()) == (200, "written\n")


# -- aiohttp-security's own SessionIdentityPolicy, unmodified, on the store -------------------------


async def test_the_stock_policy_passes_its_own_scenarios_on_the_store(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    client = await security_app(aiohttp_client, pool, SessionIdentityPolicy(), jar=True)
    response = await client.post("/login-and-redirect?user=1")
    assert (response.status, await response.text()) == (200, "1")
    data = await (await client.get("/session")).json()
    assert data["data"] == {"AIOHTTP_SECURITY": "1"}  # under its own key
    assert await (await client.get("/identify")).text() == "1"
    response = await client.post("/logout-and-redirect")
    assert (response.status, await response.text()) == (200, "")
    # Its forget() removes its key; the session left empty, the store ends it (row and cookie).
    assert await row_count(pool) == 0


async def test_the_stock_policy_keeps_the_pre_login_session_id_and_links_no_user(
    aiohttp_client: ClientMaker, pool: asyncpg.Pool
) -> None:
    """What PostgresIdentityPolicy is for: with the stock policy, a login writes into the session
    the request came with. Its ID is unchanged (session fixation: whoever planted that cookie is
    signed in too), and the store does not know the user (nothing to list, end or cap)."""
    client = await security_app(aiohttp_client, pool, SessionIdentityPolicy())
    before = (await client.post("/note?text=cart")).cookies["session"].value
    response = await client.post("/login?user=1", headers=cookie(before))
    assert response.status == 200
    assert "session" not in response.cookies  # no new cookie: the same session ID
    assert await (await client.get("/identify", headers=cookie(before))).text() == "1"  # the planted cookie is in
    assert await listed(client, "1") == []
    # Its forget() leaves the session (and its ID) alive as long as anything else is in it.
    response = await client.post("/logout", headers=cookie(before))
    assert "session" not in response.cookies
    assert (await session_of(client, before))["data"] == {"note": "cart"}
    assert await row_count(pool) == 1
