"""Password hashing: scrypt from `cryptography`, run off the event loop.

Stored form: ``$scrypt$ln=15,r=8,p=1$<salt>$<hash>`` (base64, unpadded). The parameters travel
with each hash, so the cost can be raised later and old hashes still verify. scrypt at N=2^15
takes ~70 ms and 32 MiB; `cryptography` releases the GIL while hashing, so a thread pool keeps
the loop free, and a semaphore caps how many hashes (and how much memory) run at once.

A login takes its place in a queue (`admit`) before anything is done for it (database work,
the throttle's count) and keeps it until its hash is done; it is refused (503) when the queue is
full, so a flood of logins is bounded in hashes, memory and database work alike. Strangers share
one queue; a browser holding a device cookie for the username (devices.py) has a lane of its
own, so strangers filling theirs cannot refuse the owner. Device cookies are given only to
browsers that signed in with the password, so nobody else can fill that lane, and the device
throttle (throttle.py) bounds what one device can do with it.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

_R, _P, _SALT_BYTES, _HASH_BYTES = 8, 1, 16, 32
MAX_PASSWORD_BYTES = 1024  # longer input is refused before hashing: hashing is the DoS surface


class Admission:
    """A login's place in one of the hasher's queues, from `PasswordHasher.admit` until `release`
    (idempotent)."""

    def __init__(self, hasher: PasswordHasher, device: bool) -> None:
        self.device = device
        self._hasher: PasswordHasher | None = hasher

    def release(self) -> None:
        if self._hasher is not None:
            self._hasher._leave(self.device)
            self._hasher = None


class PasswordHasher:
    def __init__(
        self,
        cost: int = 15,
        concurrency: int = 2,
        max_waiting: int = 32,
        device_concurrency: int = 1,
        device_max_waiting: int = 8,
    ) -> None:
        """
        :param cost: log2 of scrypt's N.
        :param concurrency: hashes running at once in this process for strangers (logins without
            a device cookie for the username).
        :param max_waiting: strangers' logins in hand beyond those, past which `busy` is true
            and `admit` refuses (a login flood must not queue without bound: each queued hash is
            memory, and a wait of 70 ms at cost 15).
        :param device_concurrency: hashes running at once in the device lane, on threads of its
            own: the owner's login never waits for a stranger's hash to finish.
        :param device_max_waiting: the same bound for the device lane.
        """
        self._cost = cost
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="scrypt")
        self._slots = asyncio.Semaphore(concurrency)
        self._queued = 0
        self._max_queued = concurrency + max_waiting
        self._device_executor = ThreadPoolExecutor(max_workers=device_concurrency, thread_name_prefix="scrypt-device")
        self._device_slots = asyncio.Semaphore(device_concurrency)
        self._device_queued = 0
        self._max_device_queued = device_concurrency + device_max_waiting
        # Derivations run by this hasher, by cost: how the tests check that every login attempt
        # costs the same work (a dummy hash for an unknown user), never by timing.
        self.derivations: Counter[int] = Counter()
        # Verified against when the user does not exist, so a miss costs what a hit costs.
        self._dummy = _hash(os.urandom(16).hex(), cost)

    async def hash(self, password: str) -> str:
        encoded: str = await self._run(None, _hash, password, self._cost)
        self.derivations[self._cost] += 1
        return encoded

    async def verify(self, password: str, encoded: str | None, admission: Admission | None = None) -> bool:
        """At least one derivation at the configured cost whether or not `encoded` is given
        (None: unknown user), so login time does not tell who exists: a hash made at a lower
        cost (before the cost was raised), or a malformed one, is padded with the dummy's.

        :param admission: the login's place (`admit`), which says its lane; None: a place in the
            strangers' queue is taken for the call, full or not.
        """
        ok, cost = await self._run(admission, _verify, password, encoded or self._dummy)
        if cost is not None:
            self.derivations[cost] += 1
        if encoded is not None and (cost is None or cost < self._cost):
            _, padding = await self._run(admission, _verify, password, self._dummy)
            self.derivations[padding] += 1
        return bool(ok) and encoded is not None

    @property
    def busy(self) -> bool:
        """So many strangers' logins are in hand that a new one is refused (503)."""
        return self._queued >= self._max_queued

    def admit(self, *, device: bool = False) -> Admission | None:
        """A place for one login until its hash is done, or None when its queue is full (answer
        503, before counting the attempt). The caller releases it, whatever happens.

        :param device: the browser holds a valid device cookie for the username: a place in the
            device lane, which strangers never fill (in the strangers' queue if the lane is full:
            many owners signing in at once).
        """
        if device and self._device_queued < self._max_device_queued:
            self._device_queued += 1
            return Admission(self, device=True)
        if self._queued < self._max_queued:
            self._queued += 1
            return Admission(self, device=False)
        return None

    def _leave(self, device: bool) -> None:
        if device:
            self._device_queued -= 1
        else:
            self._queued -= 1

    async def _run(self, admission: Admission | None, fn, *args):  # type: ignore[no-untyped-def]
        loop = asyncio.get_running_loop()
        # The device lane hashes on a strangers' thread when one is free (so owners' logins are
        # not limited to the lane's thread at rest), otherwise on its own, never behind them.
        if admission is not None and admission.device and self._slots.locked():
            async with self._device_slots:
                return await loop.run_in_executor(self._device_executor, fn, *args)
        own_place = admission is None  # a hash outside a login (the CLI's): counted while it runs
        if own_place:
            self._queued += 1
        try:
            async with self._slots:
                return await loop.run_in_executor(self._executor, fn, *args)
        finally:
            if own_place:
                self._queued -= 1

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._device_executor.shutdown(wait=False, cancel_futures=True)


async def hash_once(password: str, cost: int) -> str:
    """One hash outside the app (CLI, set-up): a hasher of its own, closed afterwards."""
    hasher = PasswordHasher(cost, concurrency=1)
    try:
        return await hasher.hash(password)
    finally:
        hasher.close()


def _hash(password: str, cost: int) -> str:
    salt = os.urandom(_SALT_BYTES)
    digest = _kdf(salt, cost, _R, _P).derive(password.encode())
    return f"$scrypt$ln={cost},r={_R},p={_P}${_b64(salt)}${_b64(digest)}"


def _verify(password: str, encoded: str) -> tuple[bool, int | None]:
    """(matches, the cost derived at, None when nothing was derived: a malformed hash)."""
    try:
        _, scheme, params, salt_b64, hash_b64 = encoded.split("$")
        fields = dict(item.split("=") for item in params.split(","))
        cost, r, p = int(fields["ln"]), int(fields["r"]), int(fields["p"])
        salt, expected = _unb64(salt_b64), _unb64(hash_b64)
    except (ValueError, KeyError):
        return False, None
    if scheme != "scrypt":
        return False, None
    actual = _kdf(salt, cost, r, p, length=len(expected)).derive(password.encode())
    return hmac.compare_digest(actual, expected), cost


def _kdf(salt: bytes, cost: int, r: int, p: int, length: int = _HASH_BYTES) -> Scrypt:
    return Scrypt(salt=salt, length=length, n=2**cost, r=r, p=p)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
