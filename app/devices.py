"""Device cookies (OWASP, "Slow Down Online Guessing Attacks with Device Cookies"): a browser that
signed in successfully as a user gets a signed cookie naming that user, and with it keeps signing
in while that username is locked for everyone else (throttle.py), so an attacker cannot lock the
owner out of their own devices. The device's own failures are counted and limited instead.

Cookie value: ``<user id>.<device id>.<signature>``; the device ID is 16 random bytes (base64url),
the signature HMAC-SHA256, under the session authentication key, of ``device:<user id>.<device
id>`` and the user's current password hash. So a password reset revokes every device cookie of
that user (whoever knew the old password loses the exemption with it), and the prefix keeps a
device signature from ever verifying as, or being forged from, a session cookie's.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets

from aiohttp import hdrs, web

from .users import User

COOKIE_NAME = "device"
MAX_AGE = 180 * 24 * 3600  # seconds: a device is remembered half a year after its last sign-in
_VALUE_RE = re.compile(r"([0-9]{1,19})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")
_MAX_VALUES = 4  # device cookies of our name looked at per request


class DeviceCookies:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        """keys: the session authentication keys, newest first (the first signs, all verify)."""
        self._keys = keys

    def issue(self, request: web.BaseRequest, response: web.StreamResponse, user: User) -> None:
        """Remember this browser as one of `user`'s devices (a new device ID each sign-in)."""
        device_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        value = f"{user.id}.{device_id}.{self._sign(self._keys[0], user, device_id)}"
        response.set_cookie(
            _name(request),
            value,
            max_age=MAX_AGE,
            path="/",
            secure=request.secure or None,
            httponly=True,
            samesite="Lax",
        )

    def trusted(self, request: web.BaseRequest, user: User) -> str | None:
        """The device ID this browser proves for `user` (as of their current password), or None.
        Every cookie of the name is tried (another one, planted or stale, cannot hide it)."""
        for match in _candidates(request):
            if int(match[1]) != user.id:
                continue
            for key in self._keys:
                if hmac.compare_digest(self._sign(key, user, match[2]), match[3]):
                    return match[2]
        return None

    @staticmethod
    def presented(request: web.BaseRequest) -> bool:
        """Whether the browser sends a cookie shaped like a device cookie: only then is it worth
        a database lookup to tell whether it is one (`trusted`) when strangers are refused."""
        return bool(_candidates(request))

    @staticmethod
    def _sign(key: bytes, user: User, device_id: str) -> str:
        message = f"device:{user.id}.{device_id}\x00{user.password_hash}".encode()
        return base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()).rstrip(b"=").decode()


def _candidates(request: web.BaseRequest) -> list[re.Match[str]]:
    """The well-formed values of the cookies of our name (the first few)."""
    name, parts = _name(request), request.headers.get(hdrs.COOKIE, "").split(";")
    values = [value.strip() for key, sep, value in (p.partition("=") for p in parts) if sep and key.strip() == name]
    return [match for value in values[:_MAX_VALUES] if (match := _VALUE_RE.fullmatch(value))]


def _name(request: web.BaseRequest) -> str:
    return f"__Host-{COOKIE_NAME}" if request.secure else COOKIE_NAME
