"""Session data at rest: AES-GCM, with the row's id_hash as associated data.

Sealed form: 12-byte random nonce followed by ciphertext and tag. Binding the id_hash means a
row's data copied onto another session's row fails to open. Several keys may be given, newest
first: the newest seals, each opens.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12
_TAG_BYTES = 16


class DataCipher:
    def __init__(self, keys: tuple[bytes, ...]) -> None:
        if not keys:
            raise ValueError("at least one encryption key is required")
        for i, key in enumerate(keys, 1):
            if not isinstance(key, bytes) or len(key) not in (16, 24, 32):
                raise ValueError(f"encryption key {i} must be bytes, 16, 24 or 32 long (AES-128, -192, -256)")
        self._aeads = tuple(AESGCM(k) for k in keys)

    def seal(self, plaintext: bytes, id_hash: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aeads[0].encrypt(nonce, plaintext, id_hash)

    def open(self, sealed: bytes, id_hash: bytes) -> tuple[bytes, bool] | None:
        """(plaintext, sealed with the newest key), or None when no key opens it (including data
        too short to have been sealed: a used-up session's empty row)."""
        if len(sealed) < _NONCE_BYTES + _TAG_BYTES:
            return None
        nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        for i, aead in enumerate(self._aeads):
            try:
                return aead.decrypt(nonce, body, id_hash), i == 0
            except InvalidTag:
                continue
        return None
