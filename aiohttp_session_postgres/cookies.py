"""The session cookie: read from the raw Cookie header, verified, set and expired, with the
`__Host-` prefix whenever it is Secure. Every byte of it is hostile until its signature checks."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import hdrs, web

from . import events
from .tokens import TokenSigner, VerifiedToken

# A request may carry several cookies of one name (one set for a sub-path, one by a sibling app on
# the same host over plain HTTP); each verified one may cost a lookup, so only so many are tried.
MAX_CANDIDATES = 4
# Cookies of that name looked at at all (each costs an HMAC): a header can carry hundreds.
MAX_VALUES = 16


class SessionCookie:
    """The session cookie's name and attributes, and the signer that makes and checks its value.
    `bad_signature`, when set, is called once per request whose cookies of the name failed
    verification (the storage's metrics).

    :param name: the cookie's name; ``__Host-`` is put in front of it when the cookie is Secure
        (it then has ``Path=/`` and no ``Domain``: RFC 6265bis), and never read without it.
    :param secure: None: Secure when `request.secure`; True: always; False: never.
    :param path, httponly, samesite: the cookie's attributes, as aiohttp's ``set_cookie`` takes
        them; a cookie is expired with the same ones (browsers ignore a deletion without them).
    :param signer: signs new values and verifies the ones a request brings.
    """

    def __init__(
        self, name: str, *, secure: bool | None, path: str, httponly: bool, samesite: str, signer: TokenSigner
    ) -> None:
        self.name = name
        self.secure = secure
        self.path = path
        self.httponly = httponly
        self.samesite = samesite
        self.signer = signer

    bad_signature: Callable[[], None] | None = None

    def is_secure(self, request: web.BaseRequest) -> bool:
        return request.secure if self.secure is None else self.secure

    def name_for(self, request: web.BaseRequest) -> str:
        """The name the cookie has on this request: browsers refuse a ``__Host-`` cookie without
        Secure, and it pins the cookie to this host and ``Path=/``."""
        return f"__Host-{self.name}" if self.is_secure(request) else self.name

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

    def set(self, request: web.BaseRequest, response: web.StreamResponse, value: str, max_age: int) -> None:
        response.set_cookie(
            self.name_for(request),
            value,
            max_age=max(max_age, 0),
            path=self.path,
            secure=self.is_secure(request) or None,
            httponly=self.httponly,
            samesite=self.samesite,
        )

    def expire(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """Only for a session this very request ended: a browser may already hold a newer cookie
        (a login from another tab) that an expiry sent for an older one would delete. Same
        attributes as when set: browsers ignore a deletion of a ``__Host-`` cookie without them."""
        response.del_cookie(
            self.name_for(request),
            path=self.path,
            secure=self.is_secure(request) or None,
            httponly=self.httponly,
            samesite=self.samesite,
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
