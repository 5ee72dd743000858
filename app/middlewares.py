"""The app's one middleware, in front of the session's: what every request goes through.

In order: the request ID for log lines; behind a trusted proxy, the client's address and scheme
from the router's headers, and the redirect of plain HTTP to HTTPS; the refusal of cross-origin
unsafe requests; the 503 page when the database is away, the 413 page when a session would grow
past its size limit; the security headers on whatever
response comes out (headers.py). One layer, not five: aiohttp wraps every middleware in a
function of its own, and the four layers plus a response signal that this replaces cost about a
fifth of a cached read (measured, bench/ scenario 1).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from urllib.parse import urlsplit

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware
from aiohttp_session_postgres import DatabaseUnavailable, SessionDataTooLarge

from . import headers, logs, pages

log = logging.getLogger(__name__)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_MAX_ADDRESS_CHARS = 45
# A host name or an IPv4 address, or an IPv6 one in brackets, and an optional port (dropped).
_HOST_RE = re.compile(r"([A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]{2,45}\])(?::([0-9]{1,5}))?")


def front(trust_proxy: bool) -> Middleware:
    """The middleware. `trust_proxy`: take the client's address and scheme from the last
    X-Forwarded-For / X-Forwarded-Proto entries (the ones Heroku's router appended; earlier ones
    come from the client), and redirect plain HTTP to HTTPS. A last entry that is not an IP
    address is ignored (the connection's own address stands)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        logs.start_request(request)
        https = request.secure
        try:
            if trust_proxy:
                request = _forwarded(request)
                https = request.secure
                if not https:
                    return _to_https(request)
            if request.method not in _SAFE_METHODS and not _same_origin(request):
                log.info("cross-origin %s %s refused", request.method, request.path)
                response = pages.error(403, "Forbidden", "Cross-origin request refused.")
            else:
                response = await handler(request)
        except DatabaseUnavailable as exc:
            response = pages.error(503, "Temporarily unavailable", exc.MESSAGE)
            response.headers[hdrs.RETRY_AFTER] = exc.headers[hdrs.RETRY_AFTER]
        except SessionDataTooLarge as exc:
            # Raised by the session's save, after the handler: nothing of the session was saved
            # (the library logs the sizes as its session.too_large event).
            response = pages.error(413, "Session too large", _too_large(exc.limit))
        except web.HTTPException as exc:  # redirects, 404: a response raised
            headers.secure(exc, https=https)
            raise
        headers.secure(response, https=https)
        return response

    return middleware


def _too_large(limit: int) -> str:
    return (
        f"This would make your session larger than the {limit:,} bytes this site keeps per session,"
        " so your session was not changed."
    )


def _forwarded(request: web.Request) -> web.Request:
    """The request as the client sent it to the router. Cloned before the session middleware
    runs, so that it sees (and saves on) this one."""
    changes: dict[str, str] = {}
    proto = _last(request, "X-Forwarded-Proto").lower()
    if proto in ("http", "https"):
        changes["scheme"] = proto
    last = _last(request, "X-Forwarded-For")
    # Longer than any address (45: IPv6 with an embedded IPv4): refused before the cache, whose
    # slots a client would otherwise fill with kilobytes of its own text.
    forwarded_for = _address(last) if len(last) <= _MAX_ADDRESS_CHARS else None
    if forwarded_for is not None:
        changes["remote"] = forwarded_for
    return request.clone(**changes) if changes else request


def _to_https(request: web.Request) -> web.StreamResponse:
    # The Host header itself: without one (HTTP/1.0), aiohttp's request.host is this machine's
    # own name, which a redirect would disclose.
    host = _HOST_RE.fullmatch(request.headers.get(hdrs.HOST, ""))
    if host is None or int(host[2] or 0) > 65535:
        response = pages.error(400, "Bad request", "The Host header is not a host name.")
    else:
        # Built from the request's Host: no shared cache may keep it for another.
        location = f"https://{host[1]}{_path_and_query(request)}"
        response = web.Response(status=308, headers={"Location": location, "Cache-Control": "no-store"})
    headers.secure(response, https=False)
    return response


def _path_and_query(request: web.Request) -> str:
    """The request's path and query, as sent (still percent-encoded), and nothing else of its
    target: an absolute-form target (`GET http://evil.example/x`, RFC 9112 §3.2.2) gives its path
    and query, not its scheme and host; the asterisk form (`OPTIONS *`) or an empty path gives
    `/`; a fragment, which no browser sends, is dropped. Leading slashes and backslashes become
    one slash: the Location is absolute, so its host is the Host header's whatever follows, but
    `//evil.example` (or `/\\evil.example`, which browsers read alike) is no path of ours and would
    name another host to anything that read the path on its own."""
    url = request.rel_url  # aiohttp keeps only the path and query of an absolute-form target here
    path = _LEADING_SLASHES.sub("/", url.raw_path)
    if not path.startswith("/"):
        path = "/"
    query = url.raw_query_string
    return f"{path}?{query}" if query else path


_LEADING_SLASHES = re.compile(r"^[/\\]+")


def _last(request: web.Request, name: str) -> str:
    """The last entry of a comma-separated header, in its last line if it came in several (the
    router appends its own after whatever the client sent)."""
    values = request.headers.getall(name, None)
    if not values:
        return ""
    value: str = values[-1]
    return value[value.rfind(",") + 1 :].strip()


@functools.lru_cache(maxsize=4096)  # the router's addresses repeat; parsing one took ~5% of a request
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


def _same_origin(request: web.Request) -> bool:
    """As Go's http.CrossOriginProtection decides: Sec-Fetch-Site same-origin/none passes, other
    values fail; without it, an Origin whose host differs from Host fails; a request with neither
    (curl, scripts) passes. Forms then need no CSRF token."""
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
