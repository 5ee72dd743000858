"""The cookie's form and the memory of verified cookies (tokens.py): found untested by mutation
testing (tests/MUTANTS.md)."""

from __future__ import annotations

import re

from aiohttp_session_postgres.tokens import _MAX_VERIFIED, TokenSigner, id_hash_of
from support.keys import AUTH_KEY

COOKIE = re.compile(r"[A-Za-z0-9_-]{43}\.[A-Za-z0-9_-]{43}")


def test_every_cookie_is_two_43_character_base64url_parts_and_verifies() -> None:
    # 87 characters, as documented: a token of 32 random bytes and its HMAC-SHA256, unpadded.
    # Many, so that every last character (a padding strip that took more than "=") comes up.
    signer = TokenSigner((AUTH_KEY,))
    for _ in range(2000):
        cookie, id_hash = signer.new()
        assert COOKIE.fullmatch(cookie), cookie
        verified = TokenSigner((AUTH_KEY,)).verify(cookie)  # a process that never saw it
        assert verified is not None
        assert verified.id_hash == id_hash == id_hash_of(cookie.split(".")[0])


def test_the_memory_of_verified_cookies_is_bounded_and_keeps_working_when_full() -> None:
    signer = TokenSigner((AUTH_KEY,))
    cookies = [signer.new()[0] for _ in range(_MAX_VERIFIED + 50)]
    for cookie in cookies:
        assert signer.verify(cookie) is not None
    assert len(signer._verified) == _MAX_VERIFIED  # the oldest went first
    assert cookies[0] not in signer._verified
    assert signer.verify(cookies[0]) is not None  # forgotten, so verified again
    assert signer.verify("x" * 43 + "." + "y" * 43) is None
