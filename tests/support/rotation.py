"""Key rotation across a rolling deploy: the configurations each step of a rotation gives the
processes, and the check that two processes on neighbouring steps keep each other's users signed in.

During a rolling deploy from one step to the next, some processes run the old step's keys and some
the new one's, and a browser's requests land on either. `sign_outs(a, b)` logs a user in through
each of the two and walks the cookie back and forth between them (each hop a read, which re-signs
the cookie or re-encrypts the data whenever the reading process wants to), noting every hop that
found the user signed out.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

OLD_AUTH = b"rotation-old-authentication-key-0123456789"
NEW_AUTH = b"rotation-new-authentication-key-0123456789"
OLD_ENC = b"rotation-old-encryption-key-0123"  # 32 bytes: AES-256
NEW_ENC = b"rotation-new-encryption-key-0123"

KINDS = ("authentication", "encryption", "both")
T = TypeVar("T")


@dataclass(frozen=True)
class Keys:
    """One process's keys: the storage's four key arguments, or the app's four settings."""

    authentication: tuple[bytes, ...] = (OLD_AUTH,)
    encryption: tuple[bytes, ...] = (OLD_ENC,)
    next_authentication: tuple[bytes, ...] = ()
    next_encryption: tuple[bytes, ...] = ()

    def storage_options(self) -> dict[str, list[bytes]]:
        """PostgresStorage's keyword arguments."""
        return {
            "authentication_keys": list(self.authentication),
            "encryption_keys": list(self.encryption),
            "next_authentication_keys": list(self.next_authentication),
            "next_encryption_keys": list(self.next_encryption),
        }

    def env(self) -> dict[str, str | None]:
        """The demo's settings (None: unset)."""

        def joined(keys: tuple[bytes, ...]) -> str | None:
            return ",".join(key.decode() for key in keys) or None

        return {
            "SESSION_AUTHENTICATION_KEY": joined(self.authentication),
            "SESSION_ENCRYPTION_KEY": joined(self.encryption),
            "SESSION_NEXT_AUTHENTICATION_KEY": joined(self.next_authentication),
            "SESSION_NEXT_ENCRYPTION_KEY": joined(self.next_encryption),
        }


def _rotated(kind: str, **change: tuple[bytes, ...]) -> dict[str, tuple[bytes, ...]]:
    """`change` (given for the authentication key, with OLD/NEW_AUTH) applied to the key(s) `kind`
    rotates."""
    out: dict[str, tuple[bytes, ...]] = {}
    swap = {OLD_AUTH: OLD_ENC, NEW_AUTH: NEW_ENC}
    for field, keys in change.items():
        if kind in ("authentication", "both"):
            out[field] = keys
        if kind in ("encryption", "both"):
            out[field.replace("authentication", "encryption")] = tuple(swap[k] for k in keys)
    return out


def two_step(kind: str) -> list[tuple[str, Keys]]:
    """The README's rotation, step by step, of the authentication key, the encryption key or both:
    each configuration a process has at that step."""
    start = Keys()
    return [
        ("0 before", start),
        ("1 next keys everywhere", dataclasses.replace(start, **_rotated(kind, next_authentication=(NEW_AUTH,)))),
        (
            "2 new first, old after",
            dataclasses.replace(
                start, **_rotated(kind, authentication=(NEW_AUTH, OLD_AUTH), next_authentication=(NEW_AUTH,))
            ),
        ),
        (
            "3 old dropped",
            dataclasses.replace(start, **_rotated(kind, authentication=(NEW_AUTH,), next_authentication=(NEW_AUTH,))),
        ),
        ("4 next setting unset", dataclasses.replace(start, **_rotated(kind, authentication=(NEW_AUTH,)))),
    ]


def one_step(kind: str) -> list[tuple[str, Keys]]:
    """The rotation the README described before: the new key put first straight away."""
    start = Keys()
    return [
        ("0 before", start),
        ("1 new first, old after", dataclasses.replace(start, **_rotated(kind, authentication=(NEW_AUTH, OLD_AUTH)))),
        ("2 old dropped", dataclasses.replace(start, **_rotated(kind, authentication=(NEW_AUTH,)))),
    ]


def neighbours(items: Sequence[T]) -> list[tuple[T, T]]:
    """Each item with the next: the pairs of steps a rolling deploy runs side by side."""
    return list(itertools.pairwise(items))


@dataclass
class Endpoint:
    """One process, as a browser sees it.

    :ivar login: signs a user in: the new session's cookie.
    :ivar read: a signed-in page with `cookie`: (still signed in, the cookie the response sets or None).
    """

    name: str
    login: Callable[[], Awaitable[str]]
    read: Callable[[str], Awaitable[tuple[bool, str | None]]]


@dataclass
class Hop:
    origin: str  # the process the user logged in through
    server: str  # the process this request went to
    signed_in: bool
    resigned: bool  # the response set a new cookie value
    version: int | None  # the session row's version after the request (None: not asked)


async def sign_outs(
    a: Endpoint, b: Endpoint, *, version: Callable[[str], Awaitable[int | None]] | None = None, rounds: int = 2
) -> tuple[list[str], list[Hop]]:
    """Log in through each of `a` and `b`, then read `rounds` times through the other and back,
    with whatever cookie the last response set. (every sign-out, said in a line; every hop)."""
    problems: list[str] = []
    hops: list[Hop] = []
    for origin, other in ((a, b), (b, a)):
        cookie = await origin.login()
        for server in [other, origin] * rounds:
            signed_in, new = await server.read(cookie)
            row_version = await version(cookie) if version is not None else None
            hops.append(Hop(origin.name, server.name, signed_in, new is not None and new != cookie, row_version))
            if not signed_in:
                problems.append(f"logged in through {origin.name}, signed out by {server.name}")
                break
            if new is not None:
                cookie = new
    return problems, hops


def assert_rewrites(kind: str, a: Endpoint, b: Endpoint, hops: list[Hop]) -> None:
    """Between steps 1 and 2, step 2 re-signs step 1's cookie (when the authentication key
    rotates) and re-encrypts its row (a row is created at version 1; the re-sign re-saves it too)
    on its first read, and never again; step 1 leaves step 2's cookie and row as they are (no back
    and forth). Between any other neighbours nothing is re-written: each signs and encrypts with a
    key the other calls current."""
    seen = [(hop.resigned, hop.version) for hop in hops]
    if a.name.startswith("1") and b.name.startswith("2"):
        resigned = kind != "encryption"
        assert seen[:4] == [(resigned, 2), (False, 2), (False, 2), (False, 2)], hops
        assert seen[4:] == [(False, 1)] * 4, hops
    else:
        assert seen == [(False, 1)] * 8, hops
