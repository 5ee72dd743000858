"""The app's pages: home (greets the signed-in user), login, logout."""

from __future__ import annotations

from aiohttp import web
from aiohttp_session import get_session, new_session

from . import pages, users
from .appkeys import HASHER, POOL, SETTINGS
from .db import connection
from .forms import FormError, read_form
from .passwords import MAX_PASSWORD_BYTES

LOGIN_PAGE = "/public/login.html"
LOGIN_FAILED = "/public/login.html?error=1"

routes = web.RouteTableDef()


@routes.get("/")
async def home(request: web.Request) -> web.Response:
    session = await get_session(request)
    if session.get("user_id") is None:
        raise web.HTTPSeeOther(LOGIN_PAGE)
    return pages.html(pages.home(session["username"]), private=True)


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    try:
        form = await read_form(request, ("username", "password"))
    except FormError as exc:
        return pages.error(400, "Bad request", str(exc))
    username, password = form["username"], form["password"]
    user = None
    # Input that cannot belong to any user is still hashed (against a dummy), so a wrong guess
    # costs the same whatever made it wrong.
    plausible = users.username_problem(username) is None and len(password.encode()) <= MAX_PASSWORD_BYTES
    if plausible:
        settings = request.app[SETTINGS]
        async with connection(request.app[POOL], settings.database_timeout) as conn:
            user = await users.find(conn, username)
    candidate = password if plausible else ""
    ok = await request.app[HASHER].verify(candidate, user.password_hash if user else None)
    if not (ok and user):
        raise web.HTTPSeeOther(LOGIN_FAILED)
    # A fresh session: new ID, and the row of the one the browser came with is deleted.
    session = await new_session(request)
    session["user_id"] = user.id
    session["username"] = user.username
    raise web.HTTPSeeOther("/")


@routes.get("/logout")
async def logout_page(request: web.Request) -> web.Response:
    # GET never changes state: it offers the button that posts.
    return pages.html(pages.logout_form())


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    session = await get_session(request)
    session.invalidate()
    raise web.HTTPSeeOther("/")
