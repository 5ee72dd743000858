"""A small app on the library alone for the cookie's attributes and each session's lifetime:
a login that may set `session.max_age`, a read that reports it, a change of it on a loaded
session, a renewal and a logout. `X-Test-Scheme: https` makes the request look secure (as a
forwarded-scheme middleware does), so per-request Secure can be driven over plain HTTP.

    client = await lifetime_app(aiohttp_client, pool, secure=True, domain="example.com")
    response = await login(client, max_age="none")
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from http.cookies import Morsel, SimpleCookie
from typing import Any

import aiohttp_session
import asyncpg
from aiohttp import ClientResponse, DummyCookieJar, web
from aiohttp.test_utils import TestClient
from aiohttp.typedefs import Handler
from aiohttp_session_postgres import PostgresStorage, get_session, new_session, renew_session

from support.keys import AUTH_KEY, ENC_KEY

STORAGE = web.AppKey("lifetime_storage", PostgresStorage)
HTTPS = {"X-Test-Scheme": "https"}


def max_age_of(text: str) -> int | None:
    return None if text == "none" else int(text)


async def lifetime_app(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    pool: asyncpg.Pool,
    *,
    prefix: str = "",
    keys: tuple[bytes, ...] = (AUTH_KEY,),
    **options: Any,
) -> TestClient:
    """The app on `pool`, its storage made with `options` (touch_interval 0: every read
    touches); its routes under `prefix` (for a cookie Path)."""
    options = {"database_timeout": 1.0, "touch_interval": 0, **options}
    storage = PostgresStorage(pool, authentication_keys=list(keys), encryption_keys=[ENC_KEY], **options)
    app = web.Application(middlewares=[_scheme_from_header])
    app[STORAGE] = storage
    aiohttp_session.setup(app, storage)
    routes = web.RouteTableDef()

    @routes.post(prefix + "/login")
    async def login(request: web.Request) -> web.Response:
        session = await new_session(request)
        session["user_id"] = 1
        if "max_age" in request.query:
            session.max_age = max_age_of(request.query["max_age"])
        return web.json_response({"max_age": session.max_age})

    @routes.get(prefix + "/info")
    async def info(request: web.Request) -> web.Response:
        session = await get_session(request)
        return web.json_response({"data": dict(session), "max_age": session.max_age, "new": session.new})

    @routes.post(prefix + "/max-age")
    async def set_max_age(request: web.Request) -> web.Response:
        # The value as given: "none", an integer, or anything else (a string, to see it refused).
        session = await get_session(request)
        raw = request.query["value"]
        value: Any = raw if raw.startswith("str:") else max_age_of(raw)
        try:
            session.max_age = value[4:] if isinstance(value, str) else value
        except (TypeError, ValueError) as exc:
            return web.Response(status=400, text=f"{type(exc).__name__}: {exc}")
        return web.json_response({"max_age": session.max_age})

    @routes.post(prefix + "/renew")
    async def renew(request: web.Request) -> web.Response:
        fresh = await renew_session(request)
        return web.json_response({"max_age": fresh.max_age})

    @routes.post(prefix + "/write")
    async def write(request: web.Request) -> web.Response:
        session = await get_session(request)
        session["count"] = session.get("count", 0) + 1
        return web.json_response({"max_age": session.max_age})

    @routes.post(prefix + "/logout")
    async def logout(request: web.Request) -> web.Response:
        (await get_session(request)).invalidate()
        return web.Response(text="bye")

    app.add_routes(routes)
    return await aiohttp_client(app, cookie_jar=DummyCookieJar())


@web.middleware
async def _scheme_from_header(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.headers.get("X-Test-Scheme") == "https":
        request = request.clone(scheme="https")
    return await handler(request)


def set_cookies(response: ClientResponse) -> list[tuple[str, Morsel[str]]]:
    """Every Set-Cookie of the response, parsed: (name, morsel)."""
    found = []
    for header in response.headers.getall("Set-Cookie", []):
        jar: SimpleCookie = SimpleCookie()
        jar.load(header)
        found.extend(jar.items())
    return found


def only_cookie(response: ClientResponse) -> tuple[str, Morsel[str]]:
    cookies = set_cookies(response)
    assert len(cookies) == 1, response.headers.getall("Set-Cookie", [])
    return cookies[0]


def raw_set_cookie(response: ClientResponse) -> str:
    headers = response.headers.getall("Set-Cookie", [])
    assert len(headers) == 1, headers
    return headers[0]


def sent(name: str, value: str, **extra: str) -> dict[str, str]:
    """Headers that send the cookie `name`=`value` back (and `extra` headers)."""
    return {"Cookie": f"{name}={value}", **extra}
