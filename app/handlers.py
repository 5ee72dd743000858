"""The app's pages: home (greets the signed-in user), login, logout, and the user's sessions."""

from __future__ import annotations

from aiohttp import web
from aiohttp_session import get_session, new_session

from . import events, pages, throttle, user_sessions, users
from .appkeys import HASHER, POOL, SETTINGS, STORAGE
from .db import connection
from .forms import FormError, read_form
from .passwords import MAX_PASSWORD_BYTES
from .session import PgSession
from .tokens import handle_of

LOGIN_PAGE = "/public/login.html"
LOGIN_FAILED = "/public/login.html?error=1"

routes = web.RouteTableDef()


async def _signed_in(request: web.Request) -> PgSession:
    """The request's session if a user is signed in; otherwise off to the login form."""
    session = await get_session(request)
    if not isinstance(session, PgSession) or session.get("user_id") is None:
        raise web.HTTPSeeOther(LOGIN_PAGE)
    return session


@routes.get("/")
async def home(request: web.Request) -> web.Response:
    session = await _signed_in(request)
    return pages.html(pages.home(session["username"]), private=True)


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    try:
        form = await read_form(request, ("username", "password"))
    except FormError as exc:
        return pages.error(400, "Bad request", str(exc))
    username, password = form["username"], form["password"]
    settings = request.app[SETTINGS]
    ip = request.remote or ""
    # Input that cannot belong to any user is still hashed (against a dummy), so a wrong guess
    # costs the same whatever made it wrong, and whether or not the user exists.
    plausible = users.username_problem(username) is None and len(password.encode()) <= MAX_PASSWORD_BYTES
    async with connection(request.app[POOL], settings.database_timeout) as conn:
        refusal = await throttle.check(conn, username, ip, settings.login_limits)
        user = await users.find(conn, username) if plausible and refusal is None else None
    if refusal is not None:
        events.emit(request, "login.throttled", limit=refusal.limit, ip=ip)
        return pages.too_many_attempts(refusal.retry_after)
    ok = await request.app[HASHER].verify(password if plausible else "", user.password_hash if user else None)
    async with connection(request.app[POOL], settings.database_timeout) as conn:
        if ok and user:
            await throttle.clear(conn, username, ip)
        else:
            await throttle.record_failure(conn, username, ip)
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


@routes.get("/sessions")
async def sessions_page(request: web.Request) -> web.Response:
    session = await _signed_in(request)
    settings = request.app[SETTINGS]
    async with connection(request.app[POOL], settings.database_timeout) as conn:
        live = await user_sessions.list_live(conn, session["user_id"])
    return pages.html(pages.sessions(session["username"], live, current=session.id_hash), private=True)


@routes.post("/sessions/revoke")
async def revoke(request: web.Request) -> web.Response:
    session = await _signed_in(request)
    try:
        form = await read_form(request, ("handle",))
    except FormError as exc:
        return pages.error(400, "Bad request", str(exc))
    handle = form["handle"]
    settings = request.app[SETTINGS]
    # Scoped to this user: another user's handle, or a made-up one, matches nothing.
    async with connection(request.app[POOL], settings.database_timeout) as conn:
        ended = await user_sessions.end_one(conn, session["user_id"], handle)
    request.app[STORAGE].forget(ended)
    if ended:
        events.emit(request, "session.revoked", session.id_hash, handle=handle)
        if session.id_hash is not None and handle_of(session.id_hash) == handle:
            session.invalidate()  # revoked this very session: expire its cookie too
    raise web.HTTPSeeOther("/sessions")


@routes.post("/sessions/revoke-others")
async def revoke_others(request: web.Request) -> web.Response:
    session = await _signed_in(request)
    assert session.id_hash is not None
    settings = request.app[SETTINGS]
    async with connection(request.app[POOL], settings.database_timeout) as conn:
        ended = await user_sessions.end_others(conn, session["user_id"], session.id_hash)
    request.app[STORAGE].forget(ended)
    events.emit(request, "session.revoked_others", session.id_hash, count=len(ended))
    raise web.HTTPSeeOther("/sessions")
