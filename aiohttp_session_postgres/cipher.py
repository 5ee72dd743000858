"""Session data at rest: AES-GCM, with the row's id_hash as associated data.

Sealed form: 12-byte random nonce followed by ciphertext and tag. Binding the id_hash means a
row's data copied onto another session's row fails to open. Several keys may be given, newest
first: the first seals, each opens. Next keys (a rotation's first step) open and never seal, and
what they open is not re-sealed under an older key.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

_NONCE_BYTES = 12
_TAG_BYTES = 16
AES_KEY_BYTES = (16, 24, 32)  # AES-128, -192, -256


class DataCipher:
    """Seals with the first of `keys`, opens with any of `keys` and `next_keys`
    (PostgresStorage.check_arguments checks them: at least one key, each of AES_KEY_BYTES).

    :param keys: newest first: the first seals, every one opens.
    :param next_keys: open only, and data they open needs no re-sealing: the keys about to be put
        first. One that is also in `keys` counts as one of `keys`.
    """

    def __init__(self, keys: tuple[bytes, ...], next_keys: tuple[bytes, ...] = ()) -> None:
        opening = keys + tuple(key for key in next_keys if key not in keys)
        self._aeads = tuple(AESGCM(k) for k in opening)
        # Positions of older keys: data they open is re-sealed under the first.
        self._older = range(1, len(keys))

    def seal(self, plaintext: bytes, id_hash: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aeads[0].encrypt(nonce, plaintext, id_hash)

    def open(self, sealed: bytes, id_hash: bytes) -> tuple[bytes, bool] | None:
        """(plaintext, sealed with the first key or a next key: nothing to re-seal), or None when
        no key opens it (including data too short to have been sealed: a used-up session's empty
        row)."""
        if len(sealed) < _NONCE_BYTES + _TAG_BYTES:
            return None
        nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        for i, aead in enumerate(self._aeads):
            try:
                return aead.decrypt(nonce, body, id_hash), i not in self._older
            except InvalidTag:
                continue
        return None
