"""Serving the app, one process (`serve`) or as each gunicorn worker's runner (workers.py).

aiohttp answers a request it cannot parse (a header over 8190 bytes, a malformed chunk, a bad
request line) before any middleware runs, with a 400 whose body quotes up to 100 bytes of the
offending input, and logs that input at ERROR with a traceback: a whole session cookie, or a
login form's password. aiohttp 3.14 has no setting for this, so the runner here makes every
connection a `_RequestHandler`, whose `handle_error` answers with the status line alone, with the
security headers, and logs one line without any byte of the request. The same path serves a 500
(an exception no middleware caught): its traceback is logged (it is our bug), its body is fixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from . import headers
from .config import Settings
from .server import StartupError, create_app

log = logging.getLogger(__name__)

AppFactory = Callable[[Settings], Awaitable[web.Application]]

# Heroku sends SIGTERM and kills 30 s later: in-flight requests get 25 s to finish.
SHUTDOWN_TIMEOUT = 25
# Heroku's router keeps idle connections 90 s; close ours later than it does.
KEEPALIVE_TIMEOUT = 95


class _RequestHandler(web.RequestHandler):
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
    def __call__(self) -> web.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """aiohttp's AppRunner whose connections answer protocol-level errors safely."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The application builds its Server itself; this makes that same object build ours.
        server.__class__ = _Server
        return server


def runner(app: web.Application, *, access_log: bool, handle_signals: bool = False) -> Runner:
    return Runner(
        app,
        handle_signals=handle_signals,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
    )


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
    serving = runner(app, access_log=settings.access_log, handle_signals=True)
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
