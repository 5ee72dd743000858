"""Device cookies (OWASP, "Slow Down Online Guessing Attacks with Device Cookies"): a browser that
signed in successfully as a user gets a signed cookie naming that user, and with it keeps signing
in while that username is locked for everyone else (throttle.py), so an attacker cannot lock the
owner out of their own devices. The device's own failures are counted and limited instead.

Cookie value: ``<user id>.<device id>.<signature>``; the device ID is 16 random bytes (base64url),
the signature HMAC-SHA256 of ``device:<user id>.<device id>`` under the session authentication
key (the prefix keeps it from ever verifying as, or being forged from, a session cookie's).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from aiohttp import web

COOKIE_NAME = "device"
MAX_AGE = 180 * 24 * 3600  # seconds: a device is remembered half a year after its last sign-in
_VALUE_RE = re.compile(r"([0-9]{1,19})\.([A-Za-z0-9_-]{22})\.([A-Za-z0-9_-]{43})")


@dataclass(frozen=True)
class Device:
    user_id: int
    device_id: str


class DeviceCookies:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        """keys: the session authentication keys, newest first (the first signs, all verify)."""
        self._keys = keys

    def issue(self, request: web.BaseRequest, response: web.StreamResponse, user_id: int) -> None:
        """Remember this browser as one of `user_id`'s devices."""
        device_id = base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()
        value = f"{user_id}.{device_id}.{self._sign(self._keys[0], user_id, device_id)}"
        response.set_cookie(
            _name(request),
            value,
            max_age=MAX_AGE,
            path="/",
            secure=request.secure or None,
            httponly=True,
            samesite="Lax",
        )

    def read(self, request: web.BaseRequest) -> Device | None:
        """The device this browser proves to be, or None (no cookie, or one that does not verify)."""
        value = request.cookies.get(_name(request))
        match = _VALUE_RE.fullmatch(value) if value else None
        if match is None:
            return None
        user_id, device_id, signature = int(match[1]), match[2], match[3]
        for key in self._keys:
            if hmac.compare_digest(self._sign(key, user_id, device_id), signature):
                return Device(user_id, device_id)
        return None

    @staticmethod
    def _sign(key: bytes, user_id: int, device_id: str) -> str:
        digest = hmac.new(key, f"device:{user_id}.{device_id}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _name(request: web.BaseRequest) -> str:
    return f"__Host-{COOKIE_NAME}" if request.secure else COOKIE_NAME
