"""The session cache: sessions this process validated, kept in memory and coherent across
processes by LISTEN/NOTIFY (`SessionCache`), and `CachedRows`, the rows layer with the cache in
front of its loads (as Django's cached_db backend wraps its db one).

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
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import asyncpg

from . import listener
from .cipher import DataCipher
from .identity import UserId
from .memo import WeighedMap
from .rows import Client, Created, Gone, Lifetime, NotCreated, NotSaved, Row, SessionRows

if TYPE_CHECKING:
    from ._types import Connection

log = logging.getLogger("aiohttp_session_postgres")


@dataclass(slots=True)
class Entry(Row):
    """A cached row: its plaintext is decoded afresh for each request that hits it."""

    cached_at: float = field(kw_only=True)  # monotonic


# What an entry holds beyond its data, in bytes: the Entry, its numbers, the bytes objects'
# headers, its 32-byte key and its slot in the dict. Measured with tracemalloc (CPython 3.13,
# 100 to 20,000 entries): 388 to 412 bytes; tracemalloc counts what was asked for, not the
# allocator's rounding up (to 16 bytes per object), so rounded up to 512.
ENTRY_OVERHEAD = 512


def entry_bytes(entry: Entry) -> int:
    """The bytes an entry is accounted at: its data (the plaintext JSON) and ENTRY_OVERHEAD."""
    return len(entry.plaintext) + ENTRY_OVERHEAD


class SessionCache:
    """Sessions this process validated, kept in memory: pass one to ``PostgresStorage(cache=...)``
    and run its listener (``storage.cache_listener(connect)`` in ``app.cleanup_ctx``). Until the
    listener is connected, and whenever it is lost, the cache is empty and every read asks the
    database.

    :param max_entries: sessions kept (the oldest insertion is dropped first).
    :param max_bytes: bytes the entries may hold in all, each accounted at its data's length
        (the session's JSON, as decrypted) plus `ENTRY_OVERHEAD` (512, measured); the oldest
        insertions are dropped first to make room, and a session larger than this alone is not
        cached. The default, 32 MiB, holds 10,000 sessions of up to 2.8 kB, or 500 at the
        storage's default `max_data_bytes` (64 KiB). The process's memory also holds what a
        request decodes, and Python's allocator keeps some of what it frees: the bound is the
        cache's, not the process's.
    :param max_age: seconds an entry is trusted at most before the database is asked again,
        whatever the notifications say (bounds what a notification lost without the connection
        noticing could cost).
    :raises ValueError: when `max_entries` is below 1, `max_bytes` below `ENTRY_OVERHEAD` or
        `max_age` is not positive.
    """

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 32 * 2**20, max_age: float = 10.0) -> None:
        if max_entries < 1 or max_age <= 0:
            raise ValueError("max_entries must be at least 1 and max_age positive")
        if max_bytes < ENTRY_OVERHEAD:
            raise ValueError(f"max_bytes must be at least {ENTRY_OVERHEAD} (one entry's overhead)")
        self._entries: WeighedMap[bytes, Entry] = WeighedMap(max_entries, max_bytes, entry_bytes)
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

    @property
    def held_bytes(self) -> int:
        """The bytes the entries are accounted at now (`entry_bytes` of each), at most
        `max_bytes`."""
        return self._entries.weight

    @property
    def max_bytes(self) -> int:
        return self._entries.max_weight

    def get(self, id_hash: bytes) -> Entry | None:
        """The entry of `id_hash` if it is still live by the database's clock (as its row
        estimates it: this host's clock is never read) and younger than `max_age`."""
        if not self._enabled:
            return None
        entry = self._entries.get(id_hash)
        if entry is None:
            return None
        local = time.monotonic()
        now = local + entry.clock
        if now >= entry.idle_deadline or now >= entry.absolute_deadline or local - entry.cached_at > self._max_age:
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
        if entry_bytes(entry) > self._entries.max_weight:
            self._entries.pop(id_hash, None)  # too large to cache: read from the database
            return
        self._entries[id_hash] = entry

    def discard(self, id_hash: bytes) -> None:
        """Drop the entry of a session found gone."""
        self._entries.pop(id_hash, None)

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

    async def listen(
        self,
        connect: Callable[[], Awaitable[asyncpg.Connection]],
        channel: str,
        *,
        check_every: float = 2.0,
        also: Mapping[str, Callable[[str], None]] | None = None,
        lost: Callable[[], None] | None = None,
    ) -> None:
        """Keep a LISTEN connection on `channel` for as long as the app runs, reconnecting with
        backoff (0.5 s, doubling to 5 s). A connection the server closes is noticed, and
        replaced, at once; one that died silently (no FIN or RST) within `check_every` seconds:
        it is asked something every half of that, and given the other half to answer. Cancel to
        stop. `also`: more channels on the same connection, each with what takes its payloads
        (the storage's lifecycle events); `lost()`: called on each loss or failed connection."""
        failing = False  # since the last time the listener was up: say so once, not every retry

        def up() -> None:
            nonlocal failing
            self._entries.clear()
            self.generation += 1
            self._floor = self.generation
            self._notified_at.clear()
            self._enabled = True
            log.info("session cache enabled: listening for session changes")
            failing = False

        def down(exc: Exception) -> None:
            nonlocal failing
            # Whatever ended the loop, the cache must not outlive its listener.
            why = f"listener lost: {type(exc).__name__}"
            if not self._enabled and not failing:  # never up, or down already: _disable is silent
                log.warning("session cache not enabled (%s): reading every session from the database", why)
            self._disable(why)
            failing = True
            if lost is not None:
                lost()

        try:
            await listener.listen(
                connect,
                {channel: self.notified, **(also or {})},
                up=up,
                down=down,
                # From the termination listener: off before the loop wakes to replace the connection.
                closed=partial(self._disable, "listener connection closed"),
                check_every=check_every,
            )
        except asyncio.CancelledError:
            self._disable("shutting down", level=logging.INFO)  # expected: no warning
            raise


class CachedRows(SessionRows):
    """SessionRows with `cache` in front of its loads: a hit asks no database until this
    process's touch interval for the row runs out. What this process writes it caches; what it
    ends it evicts, here at once and elsewhere by the table's notifications. A load or write that
    raced with a notification for its session is not cached (`SessionCache.generation`).

    :param cache: the cache; the other parameters are SessionRows'.
    """

    def __init__(self, pool: asyncpg.Pool, cipher: DataCipher, *, cache: SessionCache, **options: Any) -> None:
        super().__init__(pool, cipher, **options)
        self.cache = cache

    async def load(self, id_hash: bytes, client: Callable[[], Client], *, cacheable: bool = True) -> Row | Gone:
        """As SessionRows.load, from the cache when it can. `cacheable`: False for a load that
        will be rewritten at once (read under an old key), which neither reads nor fills the
        cache."""
        cache = self.cache
        if cacheable:
            entry = cache.get(id_hash)
            if entry is not None and entry.now() - entry.touched_at < self.touch_interval:
                return entry
        generation = cache.generation
        found = await super().load(id_hash, client)
        if isinstance(found, Gone):
            cache.discard(id_hash)
        elif cacheable and found.current_key:
            cache.put(id_hash, Entry(*_fields(found), cached_at=time.monotonic()), generation=generation)
        return found

    async def create(
        self,
        id_hash: bytes,
        plaintext: bytes,
        *,
        user_id: UserId | None,
        replaces: bytes | None,
        client: Client,
        check: Callable[[Connection], Awaitable[bool]] | None = None,
        lifetime: Lifetime | None = None,
    ) -> Created | NotCreated:
        generation = self.cache.generation
        created = await super().create(
            id_hash, plaintext, user_id=user_id, replaces=replaces, client=client, check=check, lifetime=lifetime
        )
        if created is not NotCreated.PRECONDITION:
            self._after_creation(id_hash, replaces, created, generation)
        return created

    async def renew(
        self,
        id_hash: bytes,
        plaintext: bytes,
        *,
        user_id: UserId | None,
        replaces: bytes,
        client: Client,
        lifetime: Lifetime | None = None,
    ) -> Created | NotCreated:
        generation = self.cache.generation
        created = await super().renew(
            id_hash, plaintext, user_id=user_id, replaces=replaces, client=client, lifetime=lifetime
        )
        self._after_creation(id_hash, replaces, created, generation)
        return created

    def _after_creation(
        self, id_hash: bytes, replaces: bytes | None, created: Created | NotCreated, generation: int
    ) -> None:
        if replaces is not None:
            self.cache.evict(replaces)
        if isinstance(created, Created):
            self._evict(created.ended)
            self._put_written(id_hash, created.row, generation)

    async def save(
        self,
        id_hash: bytes,
        plaintext: bytes,
        *,
        user_id: UserId | None,
        version: int,
        durable: bool,
        rebase: Callable[[bytes], tuple[bytes, UserId | None]],
        lifetime: Lifetime | None = None,
    ) -> Row | NotSaved:
        generation = self.cache.generation
        saved = await super().save(
            id_hash, plaintext, user_id=user_id, version=version, durable=durable, rebase=rebase, lifetime=lifetime
        )
        if isinstance(saved, Row):
            self._put_written(id_hash, saved, generation)
        elif saved is NotSaved.ENDED:
            self.cache.evict(id_hash)
        return saved

    async def end(self, id_hash: bytes) -> bool:
        ended = await super().end(id_hash)
        self.cache.evict(id_hash)
        return ended

    async def end_by_handle(self, user_id: UserId, handle: str, *, conn: Connection | None = None) -> tuple[bytes, ...]:
        return self._evict(await super().end_by_handle(user_id, handle, conn=conn))

    async def end_user(
        self, user_id: UserId, *, keep: bytes | None = None, conn: Connection | None = None
    ) -> tuple[bytes, ...]:
        return self._evict(await super().end_user(user_id, keep=keep, conn=conn))

    def _evict(self, id_hashes: tuple[bytes, ...]) -> tuple[bytes, ...]:
        """Evict sessions this process ended (the others learn it from the notifications)."""
        for id_hash in id_hashes:
            self.cache.evict(id_hash)
        return id_hashes

    def _put_written(self, id_hash: bytes, row: Row, generation: int) -> None:
        # A copy of the exact size: orjson's output keeps its 4 KB working buffer (measured:
        # 10,000 small sessions cached straight from it held 41 MB, copied 0.8).
        fields = _fields(row)
        fields[0] = bytes(memoryview(row.plaintext))
        self.cache.put(id_hash, Entry(*fields, cached_at=time.monotonic()), generation=generation)


def _fields(row: Row) -> list[Any]:
    """The row's fields in their order, for an Entry made from it."""
    return [getattr(row, name) for name in _ROW_FIELDS]


_ROW_FIELDS = tuple(field.name for field in dataclasses.fields(Row))
