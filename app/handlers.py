"""The app's pages: home (greets the signed-in user), login, logout, and the user's sessions."""

from __future__ import annotations

import logging
import re

import aiohttp_session
from aiohttp import web
from aiohttp_session import Session
from aiohttp_session_postgres import PostgresSession, get_session, new_session

from . import pages, throttle, users
from .appkeys import DEVICES, HASHER, SETTINGS, STORAGE
from .forms import FormError, read_form
from .passwords import MAX_PASSWORD_BYTES
from .text import plural

log = logging.getLogger(__name__)

LOGIN_PAGE = "/public/login.html"
LOGIN_FAILED = "/public/login.html?error=1"
SIGNED_OUT = "/public/login.html?signed-out=1"
# A message for the next page this session shows (the sessions page), then gone.
NOTICE = "notice"
_HANDLE_RE = re.compile(r"[0-9a-f]{16}")

routes = web.RouteTableDef()


async def _signed_in(request: web.Request) -> PostgresSession:
    """The request's session if a user is signed in; otherwise off to the login form."""
    await _require_user(request)
    return await get_session(request)


async def _require_user(request: web.Request) -> Session:
    """The same, as any aiohttp-session Session: all the home page needs, so the benchmark can
    serve this very page from aiohttp-session's own storages (bench/server.py)."""
    session = await aiohttp_session.get_session(request)
    if session.get("user_id") is None:
        raise web.HTTPSeeOther(LOGIN_PAGE)
    return session


@routes.get("/")
async def home(request: web.Request) -> web.Response:
    session = await _require_user(request)
    return pages.html(pages.home(session["username"]), private=True)


@routes.get("/login")
async def login_page(request: web.Request) -> web.Response:
    # The form lives with the static pages; /login is where people type.
    raise web.HTTPSeeOther(LOGIN_PAGE)


@routes.post("/login")
async def login(request: web.Request) -> web.Response:
    try:
        form = await read_form(request, ("username", "password"), optional=("remember",))
        remember = _checkbox(form, "remember")
    except FormError as exc:
        return pages.bad_form(exc)
    username, password = form["username"], form["password"]
    settings = request.app[SETTINGS]
    storage = request.app[STORAGE]
    # Input that cannot belong to any user is still hashed (against a dummy), so a wrong guess
    # costs the same whatever made it wrong, and whether or not the user exists.
    plausible = users.username_problem(username) is None and len(password.encode()) <= MAX_PASSWORD_BYTES
    hasher, devices = request.app[HASHER], request.app[DEVICES]
    # A login takes its place in the hash queue before anything is done for it, or is refused 503
    # uncounted: a flood of logins costs nobody their tries, and is bounded in database work too.
    # A stranger (no device cookie at all) is refused before any database work. A browser sending
    # a device cookie is looked up first: if the cookie is valid for the username, its place is
    # in the device lane, which strangers cannot fill (passwords.py). A lane rather than refusing
    # strangers by the throttle first: an attacker with enough addresses (the 65,536 /64s of a
    # /48, or a botnet) and fresh usernames stays under every count, and only the device cookie
    # tells the owner apart.
    presented = devices.presented(request)
    admission = None if presented else hasher.admit()
    if admission is None and not presented:
        return pages.busy()
    try:
        async with storage.connection() as conn:
            user = await users.find(conn, username) if plausible else None
            # A browser that signed in as this very user (with the current password) is exempt
            # from the username's lock and its address's: only its own failures count.
            device = devices.trusted(request, user) if user is not None else None
            if admission is None:
                admission = hasher.admit(device=device is not None)
                if admission is None:
                    return pages.busy()
            attempt = await throttle.begin(
                conn, username, user.id if user else None, request.remote or "", device, settings.login_limits
            )
        if isinstance(attempt, throttle.Refusal):
            log.info("event=login.throttled limit=%s ip=%s", attempt.limit, throttle.address_key(request.remote or ""))
            return pages.too_many_attempts(attempt.retry_after)
        ok = await hasher.verify(password if plausible else "", user.password_hash if user else None, admission)
    finally:
        if admission is not None:
            admission.release()
    if not (ok and user):
        raise web.HTTPSeeOther(LOGIN_FAILED)  # the attempt stays recorded as a failure
    async with storage.connection() as conn:
        await throttle.succeeded(conn, attempt)
    # A fresh session: new ID; the session the browser came with is used up. It is created only
    # if the password just verified is still the user's (not reset or deleted meanwhile).
    session = await new_session(request)
    session["user_id"] = user.id
    session["username"] = user.username
    # "Remember me" unticked: a browser-session cookie (gone when the browser closes, OWASP's
    # advice for a session cookie); the server still ends the session at SESSION_IDLE_TIMEOUT and
    # SESSION_ABSOLUTE_TIMEOUT. Ticked: a persistent cookie and a session of
    # SESSION_REMEMBER_TIMEOUT, ended after SESSION_REMEMBER_IDLE_TIMEOUT without a request.
    session.max_age = settings.remember_timeout if remember else None
    session.require(users.credentials_unchanged(user), otherwise=web.HTTPSeeOther(LOGIN_FAILED))
    response = web.HTTPSeeOther("/")
    devices.issue(request, response, user)
    raise response


def _checkbox(form: dict[str, str], name: str) -> bool:
    """A checkbox's state: absent is unticked; ticked sends "on" (HTML's default value)."""
    value = form.get(name)
    if value is not None and value != "on":
        raise FormError(f"field {name!r} must be 'on' when given")
    return value is not None


@routes.get("/logout")
async def logout_page(request: web.Request) -> web.Response:
    # GET never changes state: it offers the button that posts.
    return pages.html(pages.logout_form())


@routes.post("/logout")
async def logout(request: web.Request) -> web.Response:
    session = await get_session(request)
    session.invalidate()
    raise web.HTTPSeeOther(SIGNED_OUT)


@routes.get("/sessions")
async def sessions_page(request: web.Request) -> web.Response:
    session = await _signed_in(request)
    live = await request.app[STORAGE].list_sessions(session["user_id"])
    notice = session.pop(NOTICE, None)
    page = pages.sessions(session["username"], live, current=session.handle, notice=notice)
    return pages.html(page, private=True)


def valid_handle(handle: str) -> bool:
    """A session handle's shape (SessionInfo.handle: 16 lower-case hex digits)."""
    return bool(_HANDLE_RE.fullmatch(handle))


@routes.post("/sessions/revoke")
async def revoke(request: web.Request) -> web.Response:
    session = await _signed_in(request)
    try:
        form = await read_form(request, ("handle",))
    except FormError as exc:
        return pages.bad_form(exc)
    handle = form["handle"]
    if handle == session.handle:
        session.invalidate()  # this very session: a logout (the row goes, the cookie expires)
        raise web.HTTPSeeOther(SIGNED_OUT)
    if not valid_handle(handle):
        return pages.error(400, "Bad request", "That is not a session's handle.")
    # Scoped to this user: another user's handle, or a made-up one, matches nothing (and nothing
    # is said: the page lists what is live).
    if await request.app[STORAGE].end_session(session["user_id"], handle):
        session[NOTICE] = "Signed out 1 session."
    raise web.HTTPSeeOther("/sessions")


@routes.post("/sessions/revoke-others")
async def revoke_others(request: web.Request) -> web.Response:
    session = await _signed_in(request)
    ended = await request.app[STORAGE].end_other_sessions(session["user_id"], session)
    if ended:
        session[NOTICE] = f"Signed out {plural(ended, 'other session')}."
    raise web.HTTPSeeOther("/sessions")
