"""The session middleware for every kind of response: `setup(app, storage)`.

aiohttp-session's own middleware saves a session only into a plain ``web.Response`` (or a raised
HTTPException): a session changed or invalidated in a handler that returns a StreamResponse, a
WebSocketResponse or a FileResponse is silently never saved (aio-libs/aiohttp-session#373,
#640), so a logout there leaves the session live. This module's middleware saves it in every
case:

- a plain Response, or a raised HTTPException: as aiohttp-session does, once, after the handler;
- a response the handler prepares itself (a stream, a websocket's handshake): when it is
  prepared (aiohttp's ``on_response_prepare`` signal), with its cookie in the headers going out;
- a stream or file response returned unprepared (a FileResponse): after the handler, with its
  cookie, before aiohttp prepares it;
- what changed after the headers went out (a websocket's messages, a stream's body): after the
  handler, in the database only (no cookie can reach the browser any more), or earlier with
  `save_session(request)`. A session created or renewed then, whose new ID would never reach
  the browser, is not saved: `SessionNotSent` names the handler.
"""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import aiohttp_session
from aiohttp import hdrs, web
from aiohttp.http_writer import StreamWriter
from aiohttp.typedefs import Handler, Middleware
from aiohttp_session import Session

from .session import PostgresSession
from .storage import PostgresStorage

# The session as this request last saved (or tried to save) it, set only when a session is saved:
# (the Session object, a deep copy of its data then). Saving again needs a change since.
_SETTLED = web.RequestKey("aiohttp_session_postgres.settled", tuple)
# Saves that go on when their request's task is cancelled (kept here: the loop holds tasks weakly).
_SAVING: set[asyncio.Future[None]] = set()


class SessionNotSent(RuntimeError):
    """A session was created or renewed (`new_session`, `renew_session`) after its response's
    headers went out (a websocket after its handshake, a stream after ``prepare()``): its cookie
    could never reach the browser, so it was not saved. Create or renew a session before the
    response is prepared.

    :ivar handler: the handler's qualified name (``module.function``).
    """

    def __init__(self, handler: str) -> None:
        super().__init__(
            f"handler {handler} created or renewed a session after its response's headers went out: "
            "its cookie cannot reach the browser, so it was not saved; "
            "create or renew the session before the response is prepared (a websocket's handshake)"
        )
        self.handler = handler


def setup(app: web.Application, storage: PostgresStorage) -> None:
    """Install the session middleware, for every kind of response, in place of
    ``aiohttp_session.setup(app, storage)``: appended to `app`'s middlewares (put middlewares
    that clone the request, such as aiohttp-remotes', before it) and hooked on its
    ``on_response_prepare`` signal. A plain Response is saved exactly as aiohttp-session saves
    it, once. The storage's hooks (`PostgresStorage.on_event`) are frozen when the app starts,
    and get their `hook_timeout` to finish at its cleanup.

    :param app: the application (its sub-applications are covered too).
    :param storage: the session storage.
    :raises TypeError: when `storage` is not a PostgresStorage.
    """
    if not isinstance(storage, PostgresStorage):
        raise TypeError("setup() needs a PostgresStorage; for another storage use aiohttp_session.setup")
    app.middlewares.append(session_middleware(storage))
    app.on_response_prepare.append(_on_prepare)
    # The storage's hooks freeze with the app's signals, and finish before the app's cleanup ends.
    app.on_startup.append(storage._app_started)
    app.on_cleanup.append(storage._app_cleanup)


def session_middleware(storage: PostgresStorage) -> Middleware:
    """The middleware alone; `setup` also hooks the response's preparation, without which a
    change made before a handler prepares its own response is saved without its cookie.

    :param storage: the session storage.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[aiohttp_session.STORAGE_KEY] = storage
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            # A raised response (a redirect) carries the session, as with aiohttp-session.
            session = request.get(aiohttp_session.SESSION_KEY)
            if session is not None and session._changed and _unsaved(request, session):
                await storage.save_session(request, exc, session)
            raise
        session = request.get(aiohttp_session.SESSION_KEY)
        if session is None or not session._changed:  # a read: nothing more than aiohttp-session does
            return response
        if not _unsaved(request, session):
            return response
        if isinstance(response, web.Response) and not response.prepared:
            # The common write, as aiohttp-session's: nothing saves after it (the hook skips a
            # plain Response), so nothing needs to remember it.
            await storage.save_session(request, response, session)
        elif not response.prepared:
            await _save(request, storage, session, response)
        else:
            try:
                await _save(request, storage, session, None)
            except web.HTTPException as exc:
                # The response began: an error answer (a 503, a 413) can no longer be sent; raised
                # as one, aiohttp would write it into this response's body. A plain error is
                # logged by aiohttp and cuts the response short, as the failure it is.
                raise RuntimeError(
                    f"the session changed in {_handler_name(request)} after its response began was not"
                    f" saved: {exc.status} {exc.reason}"
                ) from exc
        return response

    return middleware


async def save_session(request: web.Request) -> None:
    """Save the request's session now, in the database only, if it changed since it was last
    saved: for a long-lived websocket, whose changes are otherwise saved when its handler
    returns (a logout over the socket, then ``await save_session(request)``: the session is dead
    for every other request at once). No cookie is sent: once the headers went out none can be;
    the browser keeps its cookie, which names a session that ended, or the same one changed.
    Needs `setup` (else the middleware saves the session again after the handler).

    :raises SessionNotSent: for a session created or renewed in this request and not saved yet
        (its cookie could never reach the browser): nothing is saved.
    :raises RuntimeError: when the app was not set up with `setup`.
    :raises DatabaseUnavailable: when the database does not answer in time.
    """
    if not any(_on_prepare in app.on_response_prepare for app in request.match_info.apps):
        raise RuntimeError("save_session() needs aiohttp_session_postgres.setup(app, storage)")
    storage = request[aiohttp_session.STORAGE_KEY]
    session = request.get(aiohttp_session.SESSION_KEY)
    if session is not None and session._changed and _unsaved(request, session):
        await _save(request, storage, session, None)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """aiohttp's ``on_response_prepare``: a response that is not a plain Response, being
    prepared. Its cookies were already turned into headers (aiohttp does that first), so the
    session's cookie is added as a header."""
    if isinstance(response, web.Response):  # the middleware's, saved there after the handler
        return
    session = request.get(aiohttp_session.SESSION_KEY)
    if session is None or not session._changed or not _unsaved(request, session):
        return
    storage = request.get(aiohttp_session.STORAGE_KEY)
    if not isinstance(storage, PostgresStorage):
        return
    cookies = web.StreamResponse()
    try:
        await _save(request, storage, session, cookies)
    except BaseException:
        # Raised through prepare() and the handler, it becomes the response (a 503 for
        # DatabaseUnavailable). aiohttp has already turned this stream's chunked encoding on for
        # the connection; left on, the error response would be chunked under a Content-Length.
        if isinstance(writer := request.writer, StreamWriter):
            writer.chunked = False
        raise
    for morsel in cookies.cookies.values():
        response.headers.add(hdrs.SET_COOKIE, morsel.output(header="")[1:])


def _unsaved(request: web.Request, session: Session) -> bool:
    """Whether `session` (changed) differs from what this request last saved of it."""
    settled: tuple[Session, dict[str, Any]] | None = request.get(_SETTLED)
    return settled is None or settled[0] is not session or settled[1] != session._mapping


async def _save(
    request: web.Request, storage: PostgresStorage, session: Session, response: web.StreamResponse | None
) -> None:
    """Save `session` with its cookie on `response`, or, with None (its headers went out), in
    the database alone."""
    # Recorded before the attempt: a save at prepare time that failed (a 503 raised through the
    # handler) is not tried again by the middleware on its way out, nor a refusal refused twice.
    request[_SETTLED] = (session, copy.deepcopy(session._mapping))
    if response is not None:
        await storage.save_session(request, response, session)
        return
    if isinstance(session, PostgresSession) and session.id_hash is None and not session.empty:
        raise SessionNotSent(_handler_name(request))
    # The client may well hang up now, having had the whole response (a websocket's close): with
    # aiohttp's handler_cancellation that cancels the handler's task, and a logout must not be
    # lost with it. The cookie goes to a response nobody sends.
    task = asyncio.ensure_future(storage.save_session(request, web.StreamResponse(), session))
    _SAVING.add(task)
    task.add_done_callback(_SAVING.discard)
    await asyncio.shield(task)


def _handler_name(request: web.Request) -> str:
    handler = request.match_info.handler
    return f"{getattr(handler, '__module__', '?')}.{getattr(handler, '__qualname__', repr(handler))}"
