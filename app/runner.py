"""Serving the app, one process (`serve`) or as each gunicorn worker's runner (workers.py).

aiohttp answers a request it cannot parse (a header over 8190 bytes, a malformed chunk, a bad
request line) before any middleware runs, with a 400 whose body quotes up to 100 bytes of the
offending input, and logs that input at ERROR with a traceback: a whole session cookie, or a
login form's password. aiohttp 3.14 has no setting for this, so the runner here makes every
connection a `_RequestHandler`, whose `handle_error` answers with the status line alone, with the
security headers, and logs one line without any byte of the request. The same path serves a 500
(an exception no middleware caught): its traceback is logged (it is our bug), its body is fixed.

The same `_RequestHandler` applies the header timeout and the bound on open connections
(connections.py), which aiohttp 3.14 does not have, in one process and in every gunicorn worker
alike (gunicorn's own limits, `--worker-connections` and `--timeout`, do not apply to aiohttp's
worker).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from . import headers
from .config import Settings
from .connections import (
    DEFAULT_HEADER_TIMEOUT,
    DEFAULT_MAX_CONNECTIONS,
    REFUSAL,
    REFUSAL_LINGER,
    SPARE_FILES,
    ConnectionGuard,
)
from .server import StartupError, create_app

log = logging.getLogger(__name__)

AppFactory = Callable[[Settings], Awaitable[web.Application]]

# Heroku sends SIGTERM and kills 30 s later: in-flight requests get 25 s to finish.
SHUTDOWN_TIMEOUT = 25
# Heroku's router keeps idle connections 90 s; close ours later than it does.
KEEPALIVE_TIMEOUT = 95


class _RequestHandler(web.RequestHandler):
    def __init__(self, manager: web.Server, *, guard: ConnectionGuard, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = guard
        self._header_timer: asyncio.TimerHandle | None = None
        self._waiting = True  # for a request's headers (not handling one)
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._start_header_timer()
        self._guard.opened(self)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered 503 already: what it sends is read and dropped until it is closed
        # aiohttp counts the requests whose headers it parsed (or failed to parse) in _request_count.
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:  # a request's headers are in: it is being handled
            self._stop_header_timer()
            self._waiting = False
            self._guard.busy(self)
        elif data and self._waiting and self._header_timer is None:
            # The next request on a kept-alive connection began and its headers are not all in.
            # (A request whose headers come in one packet, the usual case, arms no timer at all.)
            self._start_header_timer()

    async def finish_response(
        self, request: web.BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        result = await super().finish_response(request, resp, start_time)
        if not self._messages:  # no pipelined request queued: waiting for the next one
            self._waiting = True
            self._guard.idle(self)
        return result

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        self._guard.closed(self)
        super().connection_lost(exc)

    def refuse(self) -> None:
        """Answer 503 to a connection there is no room for, without reading its request. Closed a
        moment later, or when the client closes first: closing a socket with unread bytes in it
        sends a reset, which would destroy the answer before the client read it."""
        self._stop_header_timer()
        self._refused = True
        if self.transport is not None:
            self.transport.write(REFUSAL)
            if self.transport.can_write_eof():
                self.transport.write_eof()
        # The one timer a connection has (header timeout, then this): connection_lost cancels it.
        self._header_timer = self._loop.call_later(REFUSAL_LINGER, self.force_close)

    def _start_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._guard.header_timeout, self._header_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        # Closed without an answer, as aiohttp's keep-alive timer closes a connection: nothing
        # the client sent is read further, or logged (the bound's line counts what matters).
        self._header_timer = None
        self.force_close()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, ConnectionError):
            # The client went away mid-request: no answer can reach it, and it is no bug of ours.
            log.info("client closed the connection during %s %s", request.method, request.rel_url.path)
        elif status >= 500:
            log.error("error handling %s %s", request.method, request.rel_url.path, exc_info=exc)
        else:
            # The exception's message quotes the request's bytes: only its kind is logged.
            log.warning("bad request from %s: %s", request.remote, type(exc).__name__ if exc else status)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was already started: no error page can follow")
        response = web.Response(status=status, text=f"{status} {HTTPStatus(status).phrase}\n")
        headers.secure(response, https=False)  # HSTS is sent on the app's own HTTPS responses
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp reads what is left of a body after the response (to keep the connection), and
        # logs a body that then fails to decode (a bad chunk, bad gzip) with a traceback quoting
        # it. One line without the bytes is enough: the client sent garbage.
        exc = kw.get("exc_info")
        if isinstance(exc, (web.RequestPayloadError, ConnectionError)):
            log.warning("bad request body: %s", type(exc).__name__)
            return
        super().log_exception(*args, **kw)


class _Server(web.Server):
    guard: ConnectionGuard  # set by Runner

    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, loop=self._loop, guard=self.guard, **self._kwargs)


class Runner(web.AppRunner):
    """aiohttp's AppRunner whose connections answer protocol-level errors safely, time out slow
    request headers and are bounded in number (connections.py).

    :param header_timeout: seconds a request's line and headers may take (HTTP_HEADER_TIMEOUT)
    :param max_connections: open connections of this process (HTTP_MAX_CONNECTIONS)
    """

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float = DEFAULT_HEADER_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        **kwargs: Any,
    ) -> None:
        super().__init__(app, **kwargs)
        self.guard = ConnectionGuard(header_timeout=header_timeout, max_connections=max_connections)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application builds its Server itself; this makes that same object build ours.
        server.__class__ = _Server
        assert isinstance(server, _Server)
        server.guard = self.guard
        return server

    async def cleanup(self) -> None:
        self.guard.close()
        await super().cleanup()


def runner(
    app: web.Application,
    *,
    access_log: bool,
    handle_signals: bool = False,
    header_timeout: float = DEFAULT_HEADER_TIMEOUT,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
) -> Runner:
    return Runner(
        app,
        handle_signals=handle_signals,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        header_timeout=header_timeout,
        max_connections=max_connections,
    )


def ensure_open_files(settings: Settings) -> None:
    """Make sure the process may open the files its connections need: HTTP_MAX_CONNECTIONS, the
    pool's, and SPARE_FILES. A soft limit below that is raised (as far as the hard limit allows;
    gunicorn and its workers inherit it); StartupError if the hard limit is lower. Without this a
    bound above the limit would not hold: accepting would fail first."""
    needed = settings.http_max_connections + settings.database_pool_max + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        fits = hard - needed + settings.http_max_connections
        lower = f"set HTTP_MAX_CONNECTIONS to {fits} at most, or " if fits >= 1 else ""
        raise StartupError(
            f"HTTP_MAX_CONNECTIONS={settings.http_max_connections} needs {needed} open files, and this process"
            f" may open {hard} (ulimit -n): {lower}raise the limit"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    log.info("open files limit raised from %d to %d for HTTP_MAX_CONNECTIONS", soft, needed)


def serve(settings: Settings, app_factory: AppFactory = create_app) -> None:
    """Serve one process until SIGINT/SIGTERM: stop accepting, let requests in flight finish (up
    to SHUTDOWN_TIMEOUT), run the app's cleanup, return. StartupError if it cannot start.
    `app_factory`: the app to serve (the benchmark serves variants of it the same way)."""
    try:
        import uvloop

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    main = loop.create_task(_serve(settings, app_factory))
    try:
        loop.run_until_complete(main)
    except (web.GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(main)  # its finally: the runner's cleanup
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(settings: Settings, app_factory: AppFactory) -> None:
    app = await app_factory(settings)
    serving = runner(
        app,
        access_log=settings.access_log,
        handle_signals=True,
        header_timeout=settings.http_header_timeout,
        max_connections=settings.http_max_connections,
    )
    await serving.setup()
    try:
        try:
            await web.TCPSite(serving, settings.host, settings.port).start()
        except OSError as exc:  # the port is taken, or not ours to take
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            raise StartupError(
                f"cannot listen on {settings.host}:{settings.port}: {reason.lower()} (set PORT)"
            ) from None
        log.info("serving on http://%s:%d", settings.host, settings.port)
        await asyncio.Event().wait()  # until a signal raises GracefulExit
    finally:
        await serving.cleanup()
