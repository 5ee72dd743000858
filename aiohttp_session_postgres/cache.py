"""An in-process cache of validated sessions, kept coherent across processes by LISTEN/NOTIFY.

With it, a read that hits the cache asks no database; the price is that a logout or revocation
made by *another* process takes effect here when its notification arrives (milliseconds,
normally), not at once. What keeps it honest:
- every data change and every deletion of a live session notifies (the table's triggers,
  schema.sql), and every process evicts that entry; a change made by this process updates its
  own entry; a TRUNCATE empties every cache;
- a lost listener connection empties and disables the cache until the listener is back;
- a load that raced with a notification is not cached;
- each entry honours its idle and absolute deadlines and a short maximum age;
- reads still reach the database once per touch interval, which slides the idle deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import asyncpg

log = logging.getLogger("aiohttp_session_postgres")


@dataclass(slots=True)
class Entry:
    plaintext: bytes  # the decrypted JSON, decoded afresh for each request
    version: int
    created: int
    idle_deadline: float  # epoch seconds, as the database last reported them
    absolute_deadline: float
    touched_at: float  # epoch seconds of this process's last database read of the row
    cached_at: float  # monotonic


class SessionCache:
    """Sessions this process validated, kept in memory: pass one to PostgresStorage(cache=...)
    and run its listener (`storage.cache_listener(connect)` in `app.cleanup_ctx`). Until the
    listener is connected, and whenever it is lost, the cache is empty and every read asks the
    database.

    max_entries: sessions kept (the oldest insertion is dropped first).
    max_age: seconds an entry is trusted at most before the database is asked again, whatever
        the notifications say (bounds what a notification lost without the connection noticing
        could cost).
    """

    def __init__(self, *, max_entries: int = 10_000, max_age: float = 10.0) -> None:
        if max_entries < 1 or max_age <= 0:
            raise ValueError("max_entries must be at least 1 and max_age positive")
        self._entries: dict[bytes, Entry] = {}
        self._max_entries = max_entries
        self._max_age = max_age
        self._enabled = False
        # Bumped by every notification. A load reads it first; its result is not cached if a
        # notification for the same session arrived meanwhile (per key, so a busy system's
        # notifications about other sessions do not keep this one out of the cache).
        self.generation = 0
        self._notified_at: dict[bytes, tuple[int, int | None]] = {}  # id_hash: (generation, version)
        # Loads older than this are never cached (set when the per-key record is reset).
        self._floor = 0

    @property
    def enabled(self) -> bool:
        return self._enabled

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, id_hash: bytes, now: float) -> Entry | None:
        if not self._enabled:
            return None
        entry = self._entries.get(id_hash)
        if entry is None:
            return None
        if (
            now >= entry.idle_deadline
            or now >= entry.absolute_deadline
            or time.monotonic() - entry.cached_at > self._max_age
        ):
            del self._entries[id_hash]
            return None
        return entry

    def put(self, id_hash: bytes, entry: Entry, *, generation: int) -> None:
        """Cache `entry` unless a notification for it arrived since `generation` was read."""
        if not self._enabled or generation < self._floor:
            return
        notified = self._notified_at.get(id_hash)
        # A notification since the load: stale, unless it announced this very version (our own
        # write's echo) or an older one. A deletion announces no version.
        if notified is not None and notified[0] > generation and (notified[1] is None or notified[1] > entry.version):
            return
        current = self._entries.get(id_hash)
        if current is not None and current.version > entry.version:
            return  # a concurrent save of ours already cached something newer
        if id_hash not in self._entries and len(self._entries) >= self._max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest insertion
        self._entries[id_hash] = entry

    def evict(self, id_hash: bytes) -> None:
        """Drop `id_hash` (this process ended it), as its notification would: a load or save of
        it already in flight is then not cached either."""
        self.notified(id_hash.hex())

    def notified(self, payload: str) -> None:
        """`<hex>` (deleted), `<hex>:<version>` (data changed) or `*` (table truncated)."""
        self.generation += 1
        if payload == "*":
            self._entries.clear()
            self._floor = self.generation  # and no load in flight may refill it
            return
        hex_id, _, version = payload.partition(":")
        try:
            id_hash = bytes.fromhex(hex_id)
        except ValueError:
            id_hash = b""
        if len(id_hash) != 32:  # no ID hash (SHA-256): unreadable, and never a key held in memory
            self._floor = self.generation  # trust no load in flight
            return
        if len(self._notified_at) >= 4 * self._max_entries:
            # Bounded memory: forget who was notified, and refuse every load already in flight.
            self._notified_at.clear()
            self._floor = self.generation
        # Not a bigint in plain ASCII digits (str.isdigit() also takes "²", which int() refuses,
        # and int() refuses 4,300 digits and more): read as a deletion, the safe side.
        new_version = int(version) if version.isascii() and version.isdigit() and len(version) <= 19 else None
        # What was announced only ever grows (a deletion is final): a forged or reordered
        # notification of a lower version must not make a load in flight look current again.
        previous = self._notified_at.get(id_hash)
        if previous is not None and (previous[1] is None or (new_version is not None and previous[1] > new_version)):
            new_version = previous[1]
        self._notified_at[id_hash] = (self.generation, new_version)
        entry = self._entries.get(id_hash)
        # Our own write already cached that version; anything else is news.
        if entry is not None and (new_version is None or entry.version < new_version):
            del self._entries[id_hash]

    def _disable(self, why: str, *, level: int = logging.WARNING) -> None:
        if self._enabled:
            log.log(level, "session cache disabled (%s): reading every session from the database", why)
        self._enabled = False
        self._entries.clear()
        self.generation += 1
        self._floor = self.generation

    def _lost(self, closed: asyncio.Event, _conn: object) -> None:
        self._disable("listener connection closed")
        closed.set()

    async def listen(
        self, connect: Callable[[], Awaitable[asyncpg.Connection]], channel: str, *, check_every: float = 2.0
    ) -> None:
        """Keep a LISTEN connection on `channel` for as long as the app runs, reconnecting with
        backoff (0.5 s, doubling to 5 s). A connection the server closes is noticed, and
        replaced, at once; one that died silently (no FIN or RST) within `check_every` seconds:
        it is asked something every half of that, and given the other half to answer. Cancel to
        stop."""
        backoff = 0.5
        failing = False  # since the last time the listener was up: say so once, not every retry
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await connect()
                closed = asyncio.Event()  # so a closed connection is replaced at once, not at the next check
                conn.add_termination_listener(partial(self._lost, closed))
                await conn.add_listener(channel, lambda _c, _pid, _ch, payload: self.notified(payload))
                self._entries.clear()
                self.generation += 1
                self._floor = self.generation
                self._notified_at.clear()
                self._enabled = True
                log.info("session cache enabled: listening for session changes")
                backoff, failing = 0.5, False
                while True:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), check_every / 2)
                    if closed.is_set():
                        break  # _lost has disabled the cache
                    await conn.execute("SELECT 1", timeout=check_every / 2)
            except asyncio.CancelledError:
                self._disable("shutting down", level=logging.INFO)  # expected: no warning
                raise
            except Exception as exc:
                # Whatever ends the loop (asyncpg can also close a connection on a protocol error
                # without calling its termination listeners, then raise anything), the cache must
                # not outlive its listener: disable, and try again.
                why = f"listener lost: {type(exc).__name__}"
                if not self._enabled and not failing:  # never up, or down already: _disable is silent
                    log.warning("session cache not enabled (%s): reading every session from the database", why)
                self._disable(why)
                failing = True
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
