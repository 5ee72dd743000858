"""Request middlewares, outermost first: proxy headers, security headers, error pages, and the
cross-origin check. The session middleware comes after all of them."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp_session_postgres import DatabaseUnavailable

from . import pages

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def proxy(trust: bool) -> Middleware:
    """With `trust`, take the client address and scheme from the last X-Forwarded-For /
    X-Forwarded-Proto entries (the ones Heroku's router appended; earlier ones come from the
    client) and redirect plain HTTP to HTTPS. Without it, use the connection's own."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not trust:
            return await handler(request)
        changes: dict[str, str] = {}
        proto = _last(request, "X-Forwarded-Proto").lower()
        if proto in ("http", "https"):
            changes["scheme"] = proto
        forwarded_for = _last(request, "X-Forwarded-For")
        if forwarded_for:
            changes["remote"] = forwarded_for
        if changes:
            # Cloned before the session middleware runs, so it sees (and saves on) this request.
            request = request.clone(**changes)
        if request.scheme != "https":
            raise web.HTTPPermanentRedirect(request.url.with_scheme("https").with_port(None))
        return await handler(request)

    return middleware


def _last(request: web.Request, header: str) -> str:
    values = ",".join(request.headers.getall(header, ()))
    return values.rsplit(",", 1)[-1].strip()


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _secure(request, exc)
        raise
    _secure(request, response)
    return response


def _secure(request: web.Request, response: web.StreamResponse) -> None:
    headers = response.headers
    headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    headers.setdefault("X-Content-Type-Options", "nosniff")
    headers.setdefault("Referrer-Policy", "same-origin")
    headers.setdefault("X-Frame-Options", "DENY")
    if request.secure:
        headers.setdefault("Strict-Transport-Security", "max-age=63072000; includeSubDomains")


@web.middleware
async def error_pages(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A short HTML page instead of a traceback when the database is away."""
    try:
        return await handler(request)
    except DatabaseUnavailable:
        response = pages.error(
            503, "Temporarily unavailable", "The service is briefly unavailable. Please try again in a moment."
        )
        response.headers["Retry-After"] = "2"
        return response


@web.middleware
async def cross_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse unsafe requests from other origins, as Go's http.CrossOriginProtection decides:
    Sec-Fetch-Site same-origin/none passes, other values fail; without it, an Origin whose host
    differs from Host fails; a request with neither (curl, scripts) passes. Forms then need no
    CSRF token."""
    if request.method not in _SAFE_METHODS and not _same_origin(request):
        log.info("cross-origin %s %s refused", request.method, request.path)
        return pages.error(403, "Forbidden", "Cross-origin request refused.")
    return await handler(request)


def _same_origin(request: web.Request) -> bool:
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        return urlsplit(origin).netloc.lower() == request.host.lower()
    except ValueError:
        return False
