"""Memory bounded by bytes (issue 20, item 5): the cache's bound in bytes, and a session data
size limit, on a real PostgreSQL, no demo app.

- A save over `max_data_bytes` (bytes of the serialized JSON) is SessionDataTooLarge, an HTTP
  413 naming the size and the limit, and changes nothing stored; a row already over the limit
  loads, renews, rotates its key and shrinks, but does not grow.
- The cache accounts each entry at its data's length plus ENTRY_OVERHEAD and never holds more
  than `max_bytes`: 900 kB sessions by the thousand stay within it (its own counter, and what
  tracemalloc sees), and its counter is not below what its entries take.
"""

from __future__ import annotations

import asyncio
import os
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import DEFAULT_MAX_DATA_BYTES, SessionCache, SessionDataTooLarge
from aiohttp_session_postgres.cache import ENTRY_OVERHEAD, Entry, entry_bytes
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.memo import WeighedMap
from support.keys import ENC_KEY
from support.logs import LibraryLog
from support.storage_harness import (
    CONTROL,
    STORAGE,
    Control,
    build_app,
    cache_ready,
    cookies,
    id_hash,
    new_cookie,
    set_cookies,
    stored,
)

MiB = 2**20
LIMIT = 1000


def padded(size: int, key: str = "pad", char: str = "x") -> dict[str, str]:
    """Session data whose JSON (compact, as the storage writes it) is exactly `size` bytes."""
    data = {key: char * (size - len(key) - 7)}  # {"pad":""} is 7 bytes beyond the key
    assert len(orjson.dumps(data)) == size
    return data


@pytest.fixture
def harness(
    aiohttp_client: Callable[..., Awaitable[TestClient]], lib_url: str
) -> Callable[..., Awaitable[tuple[TestClient, Control]]]:
    """Makes storage_harness apps on the library's table (each its own pool; with `cache`,
    its listener up)."""

    async def make(*, cache: SessionCache | bool = False, **options: Any) -> tuple[TestClient, Control]:
        pool = await asyncpg.create_pool(lib_url, min_size=1, max_size=4)
        cached = cache is not False  # not truth: an empty SessionCache has len() 0
        if isinstance(cache, SessionCache):
            options["cache"] = cache
        app = build_app(pool, cache_url=lib_url if cached else None, **options)
        client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
        if cached:
            await cache_ready(app)
        return client, app[CONTROL]

    return make


Harness = Callable[..., Awaitable[tuple[TestClient, Control]]]


async def _row(pg: asyncpg.Connection, cookie: str) -> asyncpg.Record | None:
    return await pg.fetchrow("SELECT data, version, user_id FROM sessions WHERE id_hash = $1", id_hash(cookie))


async def _data(client: TestClient, cookie: str) -> dict[str, Any]:
    response = await client.get("/data", headers=cookies(cookie))
    assert response.status == 200
    body: dict[str, Any] = await response.json()
    return body["data"]


# -- the limit on a session's data ---------------------------------------------------------------


def test_the_exception_is_a_413_naming_the_size_and_the_limit() -> None:
    exc = SessionDataTooLarge(70_000, 65_536)
    assert isinstance(exc, web.HTTPRequestEntityTooLarge)
    assert exc.status == 413
    assert (exc.size, exc.limit) == (70_000, 65_536)
    message = "session data of 70000 bytes is over the limit of 65536 bytes (max_data_bytes): not saved"
    assert str(exc) == message
    assert exc.text == message + "\n"
    assert DEFAULT_MAX_DATA_BYTES == 65_536


@pytest.mark.parametrize("cache", [False, True], ids=["cache-off", "cache-on"])
async def test_a_new_session_over_the_limit_is_a_413_and_stores_nothing(
    harness: Harness, lib_pg: asyncpg.Connection, lib_log: LibraryLog, cache: bool
) -> None:
    client, _ = await harness(cache=cache, max_data_bytes=LIMIT)
    # Exactly the limit is allowed, and measured as the JSON the storage writes.
    cookie = new_cookie(await client.post("/start", json=padded(LIMIT)))
    row = await _row(lib_pg, cookie)
    assert row is not None
    assert len(DataCipher((ENC_KEY,)).open(row["data"], id_hash(cookie))[0]) == LIMIT  # type: ignore[index]

    response = await client.post("/start", json=padded(LIMIT + 1, char="s"))
    assert response.status == 413
    body = await response.text()
    assert body == f"session data of {LIMIT + 1} bytes is over the limit of {LIMIT} bytes (max_data_bytes): not saved\n"
    assert set_cookies(response) == []
    assert await lib_pg.fetchval("SELECT count(*) FROM sessions") == 1
    assert f"event=session.too_large bytes={LIMIT + 1} limit={LIMIT}" in lib_log.events()
    assert not any("sss" in line for line in lib_log.lines())  # sizes, never the data


@pytest.mark.parametrize("cache", [False, True], ids=["cache-off", "cache-on"])
async def test_a_write_over_the_limit_is_a_413_and_the_session_stays_as_it_was(
    harness: Harness, lib_pg: asyncpg.Connection, cache: bool
) -> None:
    client, _ = await harness(cache=cache, max_data_bytes=LIMIT)
    cookie = new_cookie(await client.post("/start", json={"a": 1}))
    assert await _data(client, cookie) == {"a": 1}  # with the cache on: cached now
    before = await _row(lib_pg, cookie)

    response = await client.post("/set/big", json="x" * LIMIT, headers=cookies(cookie))
    assert response.status == 413
    assert f"over the limit of {LIMIT} bytes" in await response.text()
    assert set_cookies(response) == []
    assert await _row(lib_pg, cookie) == before  # same data, same version
    assert await _data(client, cookie) == {"a": 1}  # from the cache too
    # Under the limit, the same session saves as usual.
    assert (await client.post("/set/small", json="x" * 100, headers=cookies(cookie))).status == 200
    assert await _data(client, cookie) == {"a": 1, "small": "x" * 100}


async def test_a_merge_that_would_grow_over_the_limit_is_a_413_and_keeps_the_other_write(
    harness: Harness, lib_pg: asyncpg.Connection
) -> None:
    # Request A loads, request B saves, then A saves: A's change alone is under the limit, but
    # re-applied over B's (the merge, under the row's lock) it is over: nothing of A is written.
    client, control = await harness(max_data_bytes=LIMIT)
    cookie = new_cookie(await client.post("/start", json={"a": "x" * 10}))
    held = asyncio.ensure_future(client.post("/set/b?hold=A", json="y" * 500, headers=cookies(cookie)))
    await control.wait_loaded("A")
    assert (await client.post("/set/c", json="z" * 480, headers=cookies(cookie))).status == 200
    after_b = await _row(lib_pg, cookie)
    control.release("A")
    response = await held
    assert response.status == 413
    merged = len(orjson.dumps({"a": "x" * 10, "c": "z" * 480, "b": "y" * 500}))
    assert merged > LIMIT
    assert f"session data of {merged} bytes is over the limit of {LIMIT} bytes" in await response.text()
    assert await _row(lib_pg, cookie) == after_b
    assert await stored(lib_pg, cookie) == ({"a": "x" * 10, "c": "z" * 480}, after_b["version"])  # type: ignore[index]


async def test_a_row_over_the_limit_still_loads_and_saves_unless_it_grows(
    harness: Harness, lib_pg: asyncpg.Connection
) -> None:
    # Written before the limit existed (a storage without one), read by one with a limit of 1000.
    before, _ = await harness(max_data_bytes=None)
    cookie = new_cookie(await before.post("/start", json=padded(5000)))
    client, _ = await harness(max_data_bytes=LIMIT)

    assert await _data(client, cookie) == padded(5000)
    # Growing it is refused, and changes nothing.
    row = await _row(lib_pg, cookie)
    assert (await client.post("/set/more", json="y", headers=cookies(cookie))).status == 413
    assert await _row(lib_pg, cookie) == row
    # A change that does not grow it saves: one value replaced by one as large, then shrunk.
    assert (await client.post("/set/pad", json="w" * (5000 - 10), headers=cookies(cookie))).status == 200
    assert (await client.post("/set/pad", json="v" * 3000, headers=cookies(cookie))).status == 200
    assert await _data(client, cookie) == {"pad": "v" * 3000}
    # A renewal keeps it (a new ID, the same data); the renewed session may not grow either.
    renewed = await client.post("/renew", headers=cookies(cookie))
    assert renewed.status == 200
    fresh = new_cookie(renewed)
    assert await _data(client, fresh) == {"pad": "v" * 3000}
    assert (await client.post("/set/more", json="y", headers=cookies(fresh))).status == 413
    # A key rotation rewrites it under the new key on its next read: the same size, no 413.
    new_key = os.urandom(32)
    rotated, _ = await harness(max_data_bytes=LIMIT, encryption_keys=[new_key, ENC_KEY])
    assert await _data(rotated, fresh) == {"pad": "v" * 3000}
    row = await _row(lib_pg, fresh)
    assert row is not None
    assert DataCipher((new_key,)).open(row["data"], id_hash(fresh)) is not None
    # And it can always end.
    assert (await client.post("/logout", headers=cookies(fresh))).status == 200
    assert await _row(lib_pg, fresh) is None


# -- the cache's bound in bytes --------------------------------------------------------------------


def test_a_weighed_map_keeps_its_weight_exact_and_under_its_bound() -> None:
    m: WeighedMap[str, bytes] = WeighedMap(10, 100, len)
    m["a"] = b"x" * 40
    m["b"] = b"x" * 40
    assert (m.weight, list(m)) == (80, ["a", "b"])
    m["c"] = b"x" * 30  # over 100: the oldest goes first
    assert (m.weight, list(m)) == (70, ["b", "c"])
    m["b"] = b"x" * 10  # a replaced value gives its weight back
    assert (m.weight, list(m)) == (40, ["c", "b"])
    del m["c"]
    assert m.pop("b") == b"x" * 10
    assert m.pop("b", None) is None
    assert m.weight == 0
    m["d"] = b"x" * 100  # exactly the bound fits
    with pytest.raises(ValueError, match=r"^a value of weight 101 cannot fit in 100$"):
        m["e"] = b"x" * 101
    assert (m.weight, list(m)) == (100, ["d"])
    m.clear()
    assert m.weight == 0
    for refused in (lambda: m.update(a=b""), lambda: m.setdefault("a", b""), m.popitem):
        with pytest.raises(TypeError, match="changes only by"):
            refused()
    counted: WeighedMap[int, bytes] = WeighedMap(3, 10**6, len)  # the entry bound still holds
    for i in range(5):
        counted[i] = b"x"
    assert (list(counted), counted.weight) == ([2, 3, 4], 3)


async def test_900_kb_sessions_by_the_thousand_hold_no_more_than_the_bound(lib_url: str) -> None:
    # The case: 120 anonymous sessions of 900 kB grew a process by 123-131 MB with the
    # cache on; at 10,000 entries the bound was about 10 GB. A thousand here, each a fresh 900 kB
    # object as a load makes it, into a cache of 8 MiB with its listener connected.
    cache = SessionCache(max_bytes=8 * MiB)
    task = asyncio.ensure_future(cache.listen(lambda: asyncpg.connect(lib_url), "sessions_size_test"))
    try:
        for _ in range(200):
            if cache.enabled:
                break
            await asyncio.sleep(0.05)
        assert cache.enabled
        size = 900_000
        tracemalloc.start()
        try:
            for i in range(1000):
                now = time.time()
                entry = Entry(
                    bytes(size),
                    i,
                    int(now),
                    now + 1800,
                    now + 43200,
                    now,
                    now - time.monotonic(),
                    cached_at=time.monotonic(),
                )
                cache.put(os.urandom(32), entry, generation=cache.generation)
                del entry
                assert cache.held_bytes <= cache.max_bytes == 8 * MiB
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(cache) == 8 * MiB // (size + ENTRY_OVERHEAD) == 9
        assert cache.held_bytes == sum(entry_bytes(e) for e in cache._entries.values()) == 9 * (size + ENTRY_OVERHEAD)
        # What Python allocated, at its peak: the bound plus the one entry being made (and the
        # one being dropped), not a thousand.
        assert peak < 8 * MiB + 2 * size + MiB, f"peak {peak / MiB:.1f} MiB"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_a_session_larger_than_the_whole_bound_is_not_cached(lib_url: str) -> None:
    cache = SessionCache(max_bytes=MiB)
    task = asyncio.ensure_future(cache.listen(lambda: asyncpg.connect(lib_url), "sessions_size_test"))
    try:
        for _ in range(200):
            if cache.enabled:
                break
            await asyncio.sleep(0.05)
        assert cache.enabled
        now = time.time()
        small = Entry(b"{}", 1, int(now), now + 60, now + 60, now, now - time.monotonic(), cached_at=time.monotonic())
        cache.put(b"s" * 32, small, generation=cache.generation)
        big = Entry(
            bytes(MiB), 1, int(now), now + 60, now + 60, now, now - time.monotonic(), cached_at=time.monotonic()
        )
        cache.put(b"b" * 32, big, generation=cache.generation)
        assert (len(cache), cache.held_bytes) == (1, 2 + ENTRY_OVERHEAD)  # the small one stays
        bigger = Entry(
            bytes(MiB), 2, int(now), now + 60, now + 60, now, now - time.monotonic(), cached_at=time.monotonic()
        )
        cache.put(b"s" * 32, bigger, generation=cache.generation)  # a new version too large: dropped
        assert (len(cache), cache.held_bytes) == (0, 0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def test_the_cache_accounts_at_least_what_its_entries_take() -> None:
    # ENTRY_OVERHEAD is a measurement: what tracemalloc sees the entries take (data, Entry,
    # numbers, key, dict slot) is never more than the cache's own counter, and not far below it.
    for count, size in ((10_000, 40), (2_000, 3_000), (100, 65_536)):
        cache = SessionCache(max_entries=count, max_bytes=2**40)
        cache._enabled = True  # as its listener does once LISTEN is in place (not run here)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            for i in range(count):
                now = time.time()
                plaintext = bytes(memoryview(orjson.dumps(padded(size, char=chr(65 + i % 26)))))
                entry = Entry(
                    plaintext,
                    i,
                    int(now),
                    now + 1800,
                    now + 43200,
                    now,
                    now - time.monotonic(),
                    cached_at=time.monotonic(),
                )
                cache.put(os.urandom(32), entry, generation=cache.generation)
                del entry, plaintext
            taken = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        assert len(cache) == count
        assert taken <= cache.held_bytes < 1.5 * taken, (count, size, taken, cache.held_bytes)


async def test_900_kb_sessions_through_the_storage_keep_the_cache_within_its_bound(
    harness: Harness, lib_pg: asyncpg.Connection
) -> None:
    # Real sessions of 900 kB (a storage whose limit allows them), created and read through the
    # storage, its cache bounded at 3 MiB: it holds three at most, and every session reads back
    # whole, from the cache or the database.
    cache = SessionCache(max_bytes=3 * MiB)
    client, _ = await harness(cache=cache, max_data_bytes=MiB)
    size = 900_000
    made: list[str] = []
    for i in range(10):
        made.append(new_cookie(await client.post("/start", json=padded(size, char=chr(97 + i)))))
        assert 0 < cache.held_bytes <= 3 * MiB
        assert len(cache) <= 3
    for i, cookie in enumerate(made):
        assert await _data(client, cookie) == padded(size, char=chr(97 + i))
        assert 0 < cache.held_bytes <= 3 * MiB
    assert len(cache) == 3
    assert cache.held_bytes == sum(entry_bytes(e) for e in cache._entries.values())
    assert client.app[STORAGE].cache is cache
    assert await lib_pg.fetchval("SELECT count(*) FROM sessions") == 10
