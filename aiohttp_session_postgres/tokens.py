"""Session tokens: what the cookie carries, and the only things the database ever sees of it.

Cookie value: ``<token>.<signature>``, both unpadded base64url, 43 characters each.
- token: 32 bytes from `secrets` (256 bits), the session's bearer secret.
- signature: HMAC-SHA256 of the token text under the first authentication key. A cookie
  whose signature fails is rejected before any database lookup.
Next keys (a rotation's first step) verify and never sign: a key reaches every process as a next
key before any process signs with it, so no process meets a cookie it cannot verify.
The database keys a session by ``id_hash = SHA-256(token)``, never the token (as Rails and Lucia
do), so a leaked table yields no usable cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from .memo import BoundedMap

TOKEN_BYTES = 32
_B64_LEN = 43  # unpadded base64url of 32 bytes
_COOKIE_RE = re.compile(rf"[A-Za-z0-9_-]{{{_B64_LEN}}}\.[A-Za-z0-9_-]{{{_B64_LEN}}}")


@dataclass(frozen=True)
class VerifiedToken:
    id_hash: bytes
    # False when a key after the first verified it: the caller re-signs the cookie with the first.
    # True for the first key and for a next key (never re-signed back to an older one).
    current_key: bool


_MAX_VERIFIED = 10_000

# An HMAC-SHA256 key shorter than the hash's output weakens it (RFC 2104, section 3).
MIN_KEY_BYTES = 32


class TokenSigner:
    """Signs with the first of `keys`, verifies with any of `keys` and `next_keys`
    (PostgresStorage.check_arguments checks them: at least one key, each at least MIN_KEY_BYTES).

    :param keys: newest first: the first signs, every one verifies; a cookie verified by a later
        one is reported for re-signing (`VerifiedToken.current_key` False).
    :param next_keys: verify only, and a cookie they verify is not re-signed: the keys about to
        be put first, deployed everywhere before any process signs with them. One that is also
        in `keys` counts as one of `keys`.
    """

    def __init__(self, keys: tuple[bytes, ...], next_keys: tuple[bytes, ...] = ()) -> None:
        verifying = keys + tuple(key for key in next_keys if key not in keys)
        # Keyed once: copying a prepared HMAC skips re-deriving the key pads on every request.
        self._macs = tuple(hmac.new(key, digestmod=hashlib.sha256) for key in verifying)
        # Positions 1 .. len(keys) - 1: older keys, whose cookies are re-signed with the first.
        self._older = range(1, len(keys))
        # Cookies that verified: a returning cookie skips the HMAC and SHA-256 (measured at ~4% of
        # a cached read).
        self._verified: BoundedMap[str, VerifiedToken] = BoundedMap(_MAX_VERIFIED)

    def new(self) -> tuple[str, bytes]:
        """A fresh cookie value and its id_hash."""
        token = _b64(secrets.token_bytes(TOKEN_BYTES))
        return self.sign(token), id_hash_of(token)

    def sign(self, token: str) -> str:
        return f"{token}.{self._mac(self._macs[0], token)}"

    def verify(self, cookie: str) -> VerifiedToken | None:
        """The id_hash of a well-formed, validly signed cookie; None for anything else."""
        known = self._verified.get(cookie)
        if known is not None:
            return known
        if not _COOKIE_RE.fullmatch(cookie):
            return None
        token, signature = cookie.split(".")
        given = signature.encode()
        for i, keyed in enumerate(self._macs):
            if hmac.compare_digest(self._mac(keyed, token).encode(), given):
                verified = VerifiedToken(id_hash_of(token), current_key=i not in self._older)
                # Only cookies that verified are remembered (nobody else can make one), so the
                # memory holds real sessions' cookies and a miss costs what it always did.
                self._verified[cookie] = verified
                return verified
        return None

    def resign(self, cookie: str) -> str:
        """The same token signed with the first key (after `verify` accepted it)."""
        return self.sign(cookie.split(".")[0])

    @staticmethod
    def _mac(keyed: hmac.HMAC, token: str) -> str:
        mac = keyed.copy()
        mac.update(token.encode())
        return _b64(mac.digest())


def id_hash_of(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


HANDLE_BYTES = 8


def handle_of(id_hash: bytes) -> str:
    """A short public name for a session (display, revocation). It cannot authenticate: it is a
    prefix of a hash of the token, and finding a token from it means inverting SHA-256."""
    return id_hash[:HANDLE_BYTES].hex()


def fingerprint_of(id_hash: bytes) -> str:
    """Shorter still, for log lines."""
    return id_hash[:4].hex()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
