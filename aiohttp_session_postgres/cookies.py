"""The session cookie: its attributes (checked once, at construction), read from the raw Cookie
header, verified, set and expired, with the ``__Host-`` or ``__Secure-`` prefix whenever it is
Secure. Every byte of it is hostile until its signature checks."""

from __future__ import annotations

import re
from collections.abc import Callable

from aiohttp import hdrs, web

from . import events
from .tokens import TokenSigner, VerifiedToken

# A request may carry several cookies of one name (one set for a sub-path, one by a sibling app on
# the same host over plain HTTP); each verified one may cost a lookup, so only so many are tried.
MAX_CANDIDATES = 4
# Cookies of that name looked at at all (each costs an HMAC): a header can carry hundreds.
MAX_VALUES = 16

SAMESITE_VALUES = ("Lax", "Strict", "None")

# RFC 6265 section 4.1.1: a cookie name is an RFC 2616 token.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# RFC 6265 section 4.1.1: path-value is any CHAR (US-ASCII) but the controls and ";".
_PATH = re.compile(r"/[\x20-\x3a\x3c-\x7e]*")
# A plain host name (RFC 1123 labels: letters, digits, hyphens inside), or an IPv4 address.
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_PREFIXES = ("__host-", "__secure-")


def check_cookie_attributes(
    *,
    cookie_name: object,
    domain: object,
    path: object,
    secure: object,
    httponly: object,
    samesite: object,
) -> list[tuple[str, str, type[Exception]]]:
    """The problems of these cookie attributes, each as (argument, message, TypeError or
    ValueError); empty when they are all good. The storage raises the first."""
    problems: list[tuple[str, str, type[Exception]]] = []
    if not isinstance(cookie_name, str):
        problems.append(("cookie_name", f"cookie_name must be a str, got {_type_name(cookie_name)}", TypeError))
    elif not _TOKEN.fullmatch(cookie_name):
        message = f"cookie_name {cookie_name!r} must be a cookie token: letters, digits and !#$%&'*+-.^_`|~"
        problems.append(("cookie_name", message, ValueError))
    elif cookie_name.lower().startswith(_PREFIXES):
        problems.append(
            ("cookie_name", "cookie_name must not carry a __Host- or __Secure- prefix: the storage adds it", ValueError)
        )
    if domain is not None:
        if not isinstance(domain, str):
            problems.append(("domain", f"domain must be a str or None, got {_type_name(domain)}", TypeError))
        elif len(domain) > 253 or not all(_LABEL.fullmatch(label) for label in domain.split(".")):
            problems.append(
                (
                    "domain",
                    "domain must be a plain host name such as example.com (letters, digits, hyphens and dots;"
                    " no leading dot, port, scheme, spaces, ';' or control characters)",
                    ValueError,
                )
            )
    if not isinstance(path, str):
        problems.append(("path", f"path must be a str, got {_type_name(path)}", TypeError))
    elif not _PATH.fullmatch(path):
        problems.append(
            ("path", "path must start with '/' and hold only printable ASCII, no ';' (RFC 6265)", ValueError)
        )
    if secure is not None and not isinstance(secure, bool):
        problems.append(("secure", f"secure must be True, False or None, got {_type_name(secure)}", TypeError))
    if not isinstance(httponly, bool):
        problems.append(("httponly", f"httponly must be True or False, got {_type_name(httponly)}", TypeError))
    if not isinstance(samesite, str):
        message = f"samesite must be one of the strings 'Lax', 'Strict', 'None', got {_type_name(samesite)}"
        problems.append(("samesite", message, TypeError))
    elif samesite not in SAMESITE_VALUES:
        problems.append(("samesite", "samesite must be one of 'Lax', 'Strict', 'None' (spelt so)", ValueError))
    elif samesite == "None" and secure is False:
        problems.append(
            ("samesite", "samesite='None' needs a Secure cookie: browsers refuse it with secure=False", ValueError)
        )
    return problems


def _type_name(value: object) -> str:
    return "None" if value is None else type(value).__name__


class SessionCookie:
    """The session cookie's name and attributes, and the signer that makes and checks its value.
    `bad_signature`, when set, is called once per request whose cookies of the name failed
    verification (the storage's metrics).

    :param name: the cookie's base name. A Secure cookie gets a prefix (RFC 6265bis section
        4.1.3): ``__Host-`` when it has ``Path=/`` and no ``Domain`` (the cookie is then pinned
        to this host), else ``__Secure-``; a cookie that is not Secure keeps the plain name. It
        is read under the same name only.
    :param secure: None: Secure when `request.secure`; True: always; False: never.
    :param domain, path, httponly, samesite: the cookie's attributes, as aiohttp's
        ``set_cookie`` takes them; a cookie is expired with the same ones (browsers ignore a
        deletion without them). ``SameSite=None`` on a request that is not Secure (secure=None,
        plain HTTP) is sent as ``Lax``: browsers refuse ``SameSite=None`` without Secure.
    :param signer: signs new values and verifies the ones a request brings.
    """

    def __init__(
        self,
        name: str,
        *,
        secure: bool | None,
        domain: str | None = None,
        path: str,
        httponly: bool,
        samesite: str,
        signer: TokenSigner,
    ) -> None:
        self.name = name
        self.secure = secure
        self.domain = domain
        self.path = path
        self.httponly = httponly
        self.samesite = samesite
        self.signer = signer
        host_only = path == "/" and domain is None
        self._secure_name = f"__Host-{name}" if host_only else f"__Secure-{name}"

    bad_signature: Callable[[], None] | None = None

    def is_secure(self, request: web.BaseRequest) -> bool:
        return request.secure if self.secure is None else self.secure

    def name_for(self, request: web.BaseRequest) -> str:
        """The name the cookie has on this request: browsers refuse a prefixed cookie without
        Secure; ``__Host-`` also pins it to this host and ``Path=/``."""
        return self._secure_name if self.is_secure(request) else self.name

    def samesite_for(self, secure: bool) -> str:
        """The SameSite attribute sent: ``None`` needs Secure, so on a plain-HTTP request (only
        possible with secure=None) it falls back to ``Lax``."""
        return "Lax" if self.samesite == "None" and not secure else self.samesite

    def values(self, request: web.BaseRequest) -> list[str]:
        """Every value sent under the cookie's name, verified or not, in the order sent."""
        return cookie_values(request.headers.get(hdrs.COOKIE), self.name_for(request))

    def candidates(self, request: web.BaseRequest) -> list[tuple[str, VerifiedToken]]:
        """Every cookie of the name whose signature verifies, in the order sent (at most
        MAX_CANDIDATES of the first MAX_VALUES). One that does not verify (another app's, a
        tampered one) is passed over: it neither ends the session nor is ever expired by us."""
        found, bad = [], 0
        for value in self.values(request)[:MAX_VALUES]:
            verified = self.signer.verify(value)
            if verified is None:
                bad += 1
                continue
            found.append((value, verified))
            if len(found) == MAX_CANDIDATES:
                break
        if bad:  # one line per request, however many cookies it sent
            events.emit("session.bad_signature", cookies=bad)
            if self.bad_signature is not None:
                self.bad_signature()
        return found

    def set(self, request: web.BaseRequest, response: web.StreamResponse, value: str, max_age: int | None) -> None:
        """Set the cookie; `max_age` None: a browser-session cookie (no Max-Age, no Expires),
        which the browser drops when it closes."""
        secure = self.is_secure(request)
        response.set_cookie(
            self.name_for(request),
            value,
            max_age=None if max_age is None else max(max_age, 0),
            domain=self.domain,
            path=self.path,
            secure=secure or None,
            httponly=self.httponly,
            samesite=self.samesite_for(secure),
        )

    def expire(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """Only for a session this very request ended: a browser may already hold a newer cookie
        (a login from another tab) that an expiry sent for an older one would delete. Same
        attributes as when set: browsers ignore a deletion of a prefixed cookie without Secure,
        and one of another Domain or Path deletes another cookie."""
        secure = self.is_secure(request)
        response.del_cookie(
            self.name_for(request),
            domain=self.domain,
            path=self.path,
            secure=secure or None,
            httponly=self.httponly,
            samesite=self.samesite_for(secure),
        )


def cookie_values(header: str | None, name: str) -> list[str]:
    """The values of every cookie called `name` in a Cookie header, in the order sent (browsers
    send the most specific path first). Read from the raw header: request.cookies builds a Morsel
    for every cookie, which was a measurable share of a cache hit. Quotes are kept: a quoted value
    is no token and fails verification."""
    if not header or name not in header:
        return []
    values = []
    for part in header.split(";"):
        key, sep, value = part.partition("=")
        if sep and key.strip() == name:
            values.append(value.strip())
    return values
