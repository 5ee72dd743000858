"""Request middlewares, outermost first: proxy headers, error pages, and the cross-origin check.
The session middleware comes after all of them. (Security headers are added to every response
by headers.py, as it is prepared.)"""

from __future__ import annotations

import ipaddress
import logging
import re
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from aiohttp_session_postgres import DatabaseUnavailable

from . import pages

log = logging.getLogger(__name__)

# Whether the client's request came over HTTPS, as the trusted proxy says.
HTTPS = web.RequestKey("https", bool)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def proxy(trust: bool) -> Middleware:
    """With `trust`, take the client address and scheme from the last X-Forwarded-For /
    X-Forwarded-Proto entries (the ones Heroku's router appended; earlier ones come from the
    client) and redirect plain HTTP to HTTPS. A last entry that is not an IP address is ignored
    (the connection's own address stands). Without `trust`, use the connection's own."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not trust:
            return await handler(request)
        changes: dict[str, str] = {}
        proto = _last(request, "X-Forwarded-Proto").lower()
        if proto in ("http", "https"):
            changes["scheme"] = proto
        forwarded_for = _address(_last(request, "X-Forwarded-For"))
        if forwarded_for is not None:
            changes["remote"] = forwarded_for
        # Noted on the request itself too: the response is prepared with it, not with the clone.
        request[HTTPS] = changes.get("scheme", request.scheme) == "https"
        if changes:
            # Cloned before the session middleware runs, so it sees (and saves on) this request.
            request = request.clone(**changes)
        if request.scheme != "https":
            host = _HOST_RE.fullmatch(request.host)
            if host is None or int(host[2] or 0) > 65535:
                return pages.error(400, "Bad request", "The Host header is not a host name.")
            # Built from the request's Host: no shared cache may keep it for another.
            location = f"https://{host[1]}{request.raw_path}"
            raise web.HTTPPermanentRedirect(location, headers={"Cache-Control": "no-store"})
        return await handler(request)

    return middleware


def _last(request: web.Request, header: str) -> str:
    values = ",".join(request.headers.getall(header, ()))
    return values.rsplit(",", 1)[-1].strip()


# A host name or an IPv4 address, or an IPv6 one in brackets, and an optional port (dropped).
_HOST_RE = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::([0-9]{1,5}))?")


def _address(text: str) -> str | None:
    """`text` as a canonical IP address, or None when it is not one (a scoped IPv6 address, whose
    zone may be any text, is not an address a client on the internet can have)."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return str(address)


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
