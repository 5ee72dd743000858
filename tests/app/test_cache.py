"""The in-process session cache (SESSION_CACHE=on): hits skip the database, and LISTEN/NOTIFY
keeps processes coherent. Two app instances with their own pools and listeners stand for two
processes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp_session import get_session
from aiohttp_session_postgres.cache import Entry, SessionCache
from aiohttp_session_postgres.schema import TableNames
from aiohttp_session_postgres.tokens import id_hash_of
from support.demo import login, make_settings, session_cookie
from support.ports import free_port
from support.proxy import SilenceableProxy

from app.appkeys import STORAGE
from app.config import Settings
from app.server import create_app

MakeClient = Callable[[Settings], Awaitable[TestClient]]


async def _cache_ready(client: TestClient) -> None:
    cache = client.app[STORAGE].cache
    assert cache is not None
    for _ in range(100):
        if cache.enabled:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the cache listener never came up")


async def _eventually(predicate: Callable[[], Awaitable[bool]], seconds: float = 3.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return False


async def _two_processes(make_client: MakeClient, db_url: str, **overrides: object) -> tuple[TestClient, TestClient]:
    settings = make_settings(db_url, cache=True, **overrides)
    a, b = await make_client(settings), await make_client(settings)
    await _cache_ready(a)
    await _cache_ready(b)
    return a, b


def _use_cookie(client: TestClient, cookie: str) -> None:
    client.session.cookie_jar.update_cookies({"session": cookie})


@pytest.mark.parametrize("cache", [True, False])
async def test_a_cache_hit_asks_no_database(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection, cache: bool
) -> None:
    client = await make_client(make_settings(db_url, cache=cache, database_timeout=0.5))
    if cache:
        await _cache_ready(client)
    await login(client, *user)
    assert (await client.get("/", allow_redirects=False)).status == 200  # fills the cache
    async with pg.transaction():
        await pg.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        response = await client.get("/", allow_redirects=False)
    # Cached: served without touching the locked table. Uncached: it had to wait, then 503.
    assert response.status == (200 if cache else 503)


async def test_a_session_this_process_just_made_is_cached_at_once(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    client = await make_client(make_settings(db_url, cache=True, database_timeout=0.5))
    await _cache_ready(client)
    await login(client, *user)  # into an empty cache: the login's own write is its first entry
    async with pg.transaction():
        await pg.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        response = await client.get("/", allow_redirects=False)
    assert response.status == 200


async def test_logout_in_one_process_is_refused_by_the_other(
    make_client: MakeClient, db_url: str, user: tuple[str, str]
) -> None:
    a, b = await _two_processes(make_client, db_url)
    await login(a, *user)
    cookie = session_cookie(a)
    assert cookie is not None
    _use_cookie(b, cookie)
    assert (await b.get("/", allow_redirects=False)).status == 200  # now cached in b

    assert (await a.post("/logout", allow_redirects=False)).status == 303

    async def refused() -> bool:
        return (await b.get("/", allow_redirects=False)).status == 303

    assert await _eventually(refused), "b kept serving a logged-out session"


async def test_revocation_through_one_process_is_refused_by_the_other(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    a, b = await _two_processes(make_client, db_url)
    await login(a, *user)  # device 1
    await login(b, *user)  # device 2, cached in b after one read
    assert (await b.get("/", allow_redirects=False)).status == 200
    assert (await a.post("/sessions/revoke-others", allow_redirects=False)).status == 303

    async def refused() -> bool:
        return (await b.get("/", allow_redirects=False)).status == 303

    assert await _eventually(refused)
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 1


async def test_logout_in_the_same_process_evicts_at_once(
    make_client: MakeClient, db_url: str, user: tuple[str, str]
) -> None:
    a = await make_client(make_settings(db_url, cache=True))
    await _cache_ready(a)
    await login(a, *user)
    cookie = session_cookie(a)
    assert cookie is not None
    assert (await a.get("/", allow_redirects=False)).status == 200
    assert (await a.post("/logout", allow_redirects=False)).status == 303
    _use_cookie(a, cookie)
    # No waiting for a notification: the very next request is refused.
    assert (await a.get("/", allow_redirects=False)).status == 303


async def _set_note(request: web.Request) -> web.Response:
    session = await get_session(request)
    session["note"] = request.query["note"]
    return web.Response(text="ok")


async def _get_note(request: web.Request) -> web.Response:
    session = await get_session(request)
    return web.Response(text=str(session.get("note")))


async def test_a_data_write_in_one_process_is_seen_by_the_other(
    aiohttp_client: Callable[..., Awaitable[TestClient]], db_url: str, user: tuple[str, str]
) -> None:
    async def process() -> TestClient:
        # The real app, plus two routes that write and read a session value.
        app = await create_app(make_settings(db_url, cache=True))
        app.router.add_post("/test/note", _set_note)
        app.router.add_get("/test/note", _get_note)
        client = await aiohttp_client(app)
        await _cache_ready(client)
        return client

    a, b = await process(), await process()
    await login(a, *user)
    cookie = session_cookie(a)
    assert cookie is not None
    _use_cookie(b, cookie)
    assert await (await b.get("/test/note")).text() == "None"  # cached in b
    assert (await a.post("/test/note", params={"note": "from a"})).status == 200

    async def seen() -> bool:
        return await (await b.get("/test/note")).text() == "from a"

    assert await _eventually(seen)
    # and a's own cache holds its own write
    assert await (await a.get("/test/note")).text() == "from a"


async def test_a_load_racing_a_real_notification_never_leaves_stale_data_cached(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    # Through PostgreSQL's own NOTIFY: b's read of the session is in flight (its snapshot taken,
    # its touch waiting on the row's lock) while another process changes the data and commits.
    # Whether the notification reaches b before or after its load returns, b must end up without
    # the old version: refused on the way in, or evicted when the notification arrives.
    settings = make_settings(db_url, cache=True, touch_interval=0)
    a, b = await make_client(settings), await make_client(settings)
    await _cache_ready(a)
    await _cache_ready(b)
    cache = b.app[STORAGE].cache
    assert cache is not None
    for attempt in range(5):
        a.session.cookie_jar.clear()
        await login(a, *user)
        cookie = session_cookie(a)
        assert cookie is not None
        _use_cookie(b, cookie)
        row = await pg.fetchrow(
            "SELECT id_hash, version FROM sessions WHERE replaced_at IS NULL ORDER BY created_at DESC"
        )
        async with pg.transaction():
            await pg.execute("SELECT 1 FROM sessions WHERE id_hash = $1 FOR UPDATE", row["id_hash"])
            reading = asyncio.ensure_future(b.get("/", allow_redirects=False))
            await asyncio.sleep(0.2)  # b's load has its snapshot and waits on the row
            await pg.execute("UPDATE sessions SET version = version + 1 WHERE id_hash = $1", row["id_hash"])
        assert (await reading).status == 200  # it began before the change: served as it was
        settled, id_hash = cache.generation, row["id_hash"]

        async def notified(settled: int = settled, id_hash: bytes = id_hash) -> bool:
            return cache.generation > settled or cache.get(id_hash) is None

        assert await _eventually(notified), attempt
        entry = cache.get(id_hash)
        assert entry is None or entry.version > row["version"], (attempt, entry)


async def test_the_cache_holds_at_most_session_cache_size_sessions(
    make_client: MakeClient, db_url: str, user: tuple[str, str]
) -> None:
    settings = make_settings(db_url, cache=True, cache_size=3)
    browsers = [await make_client(settings) for _ in range(6)]
    await _cache_ready(browsers[0])
    for browser in browsers:
        await login(browser, *user)
    # Every browser's requests go to the first process: its cache keeps the three newest.
    cache = browsers[0].app[STORAGE].cache
    assert cache is not None
    cookies = [session_cookie(browser) for browser in browsers]
    for cookie in cookies:
        assert cookie is not None
        browsers[0].session.cookie_jar.clear()  # that one cookie alone
        _use_cookie(browsers[0], cookie)
        assert (await browsers[0].get("/", allow_redirects=False)).status == 200
    assert len(cache) == 3
    # The oldest insertions went first: the three read last are the ones kept.
    assert set(cache._entries) == {id_hash_of(cookie.split(".")[0]) for cookie in cookies[3:] if cookie is not None}


async def test_a_dropped_listener_falls_back_to_the_database(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    a, b = await _two_processes(make_client, db_url)
    await login(a, *user)
    cookie = session_cookie(a)
    assert cookie is not None
    _use_cookie(b, cookie)
    assert (await b.get("/", allow_redirects=False)).status == 200  # cached in b
    cache = b.app[STORAGE].cache
    assert cache is not None
    assert len(cache) == 1

    # Kill every listener connection (a's and b's): notifications sent from now on reach nobody.
    killed = await pg.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
    )
    assert killed == 2

    # b notices as soon as its event loop reads the closed connection, and empties its cache.
    # (Between the loss and that moment a cached read can still be served: the README says so.)
    async def emptied() -> bool:
        return len(cache) == 0

    assert await _eventually(emptied), "the cache kept its entries after losing its listener"

    # End the session behind b's back, with nobody listening: b must read the database.
    await pg.execute("DELETE FROM sessions")
    assert (await b.get("/", allow_redirects=False)).status == 303

    # And the cache comes back by itself.
    async def back() -> bool:
        return cache.enabled

    assert await _eventually(back, seconds=10)


def _live_cache(**options: int) -> SessionCache:
    """A cache enabled as its listener enables it once LISTEN is in place (no listener here)."""
    cache = SessionCache(**options)
    cache._enabled = True
    return cache


@contextlib.asynccontextmanager
async def _listener(
    cache: SessionCache, connect: Callable[[], Awaitable[asyncpg.Connection]], **options: float
) -> AsyncIterator[None]:
    """`cache.listen(connect)` running for the block; cancelled and awaited after it."""
    task = asyncio.ensure_future(cache.listen(connect, _channel(), **options))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# The database's clock in these entries: far from this host's, which the cache never reads.
DB_NOW = 1_000_000_000.0


def _entry(version: int, *, idle: float = 60, absolute: float = 120, payload: bytes = b"{}") -> Entry:
    """An entry read just now from a database whose clock said DB_NOW."""
    local = time.monotonic()
    return Entry(
        payload,
        version,
        int(DB_NOW),
        DB_NOW + idle,
        DB_NOW + absolute,
        touched_at=DB_NOW,
        clock=DB_NOW - local,
        cached_at=local,
    )


def _later(entry: Entry, seconds: float) -> None:
    """As if `seconds` more had passed on the database's clock since `entry` was read."""
    entry.clock += seconds


def test_what_this_process_ended_is_not_put_back_by_a_load_or_write_in_flight() -> None:
    cache = _live_cache()
    mine = b"\x03" * 32
    generation = cache.generation  # a load (or a save) of it begins
    cache.evict(mine)  # meanwhile this process logs it out
    cache.put(mine, _entry(3), generation=generation)  # the load ends: stale
    assert cache.get(mine) is None


def test_a_load_that_raced_a_notification_for_its_session_is_not_cached() -> None:
    cache = _live_cache()
    mine, other = b"\x01" * 32, b"\x02" * 32

    # Notifications about other sessions do not keep this one out of the cache.
    generation = cache.generation
    cache.notified(other.hex() + ":5")
    cache.put(mine, _entry(3), generation=generation)
    assert cache.get(mine) is not None

    # A newer version of a session was announced while its load ran: its result is stale.
    # (Each case with a session of its own: an evicted session is ended for good.)
    changed = b"\x11" * 32
    generation = cache.generation
    cache.notified(changed.hex() + ":4")
    cache.put(changed, _entry(3), generation=generation)
    assert cache.get(changed) is None

    # The announcement of the very version we wrote (our own echo) does not.
    generation = cache.generation
    cache.notified(changed.hex() + ":4")
    cache.put(changed, _entry(4), generation=generation)
    assert cache.get(changed) is not None

    # A deletion announced while the load ran: never cached.
    deleted = b"\x12" * 32
    generation = cache.generation
    cache.notified(deleted.hex())
    cache.put(deleted, _entry(9), generation=generation)
    assert cache.get(deleted) is None


def test_an_entry_is_trusted_until_its_idle_deadline_and_not_at_it() -> None:
    """The idle deadline alone ends an entry (the absolute one is later): at that instant the
    database would refuse the session, so the cache must too."""
    cache = _live_cache()
    mine = b"\x04" * 32
    entry = _entry(1, idle=60, absolute=3600)
    cache.put(mine, entry, generation=cache.generation)
    _later(entry, 59.9)
    assert cache.get(mine) is entry
    _later(entry, 0.1)  # its idle deadline (and a little after, as the clock runs on)
    assert cache.get(mine) is None
    _later(entry, -60)
    assert cache.get(mine) is None  # dropped, not just hidden


def test_a_truncate_or_an_unreadable_notification_empties_and_bars_loads_in_flight() -> None:
    """`*` (the table was truncated) empties the cache; it and a payload that names no session
    also bar every load that began before them (which may have read a row that is gone), but not
    loads that began after."""
    for payload, emptied in (("*", True), ("not-hex", False)):
        cache = _live_cache()
        kept, in_flight, later = b"\x05" * 32, b"\x06" * 32, b"\x07" * 32
        cache.put(kept, _entry(1), generation=cache.generation)
        generation = cache.generation  # a load of `in_flight` begins
        cache.notified(payload)
        cache.put(in_flight, _entry(1), generation=generation)
        assert cache.get(in_flight) is None, payload
        cache.put(later, _entry(1), generation=cache.generation)
        assert cache.get(later) is not None, payload
        assert (cache.get(kept) is None) is emptied, payload


def test_the_record_of_notified_sessions_is_bounded_at_four_times_max_entries() -> None:
    """Past 4 x max_entries notified sessions the record is forgotten, and then (only then) every
    load in flight is barred, whatever session it is for: memory stays bounded under a flood of
    notifications without a stale load slipping through."""
    cache = _live_cache(max_entries=2)
    notified = [bytes([n]) * 32 for n in range(1, 10)]
    load = b"\xaa" * 32
    for id_hash in notified[:7]:
        cache.notified(id_hash.hex())
    generation = cache.generation
    cache.notified(notified[7].hex())  # the 8th: the record is at 7, under 4 x 2
    cache.put(load, _entry(1), generation=generation)
    assert cache.get(load) is not None

    other_load = b"\xbb" * 32
    generation = cache.generation
    cache.notified(notified[8].hex())  # the 9th: the record holds 8 = 4 x 2, and is forgotten
    cache.put(other_load, _entry(1), generation=generation)
    assert cache.get(other_load) is None


def test_the_echo_of_this_process_own_write_keeps_its_entry() -> None:
    """A process's own write caches the version it wrote; its notification, when it comes back,
    announces that same version and must not evict it (a newer one does)."""
    cache = _live_cache()
    mine = b"\x08" * 32
    cache.put(mine, _entry(3), generation=cache.generation)
    cache.notified(mine.hex() + ":3")
    assert cache.get(mine) is not None
    cache.notified(mine.hex() + ":4")
    assert cache.get(mine) is None


def _channel() -> str:
    return TableNames("sessions", "public").channel


async def _listening(cache: SessionCache, seconds: float = 10.0) -> None:
    assert await _eventually(_enabled(cache, True), seconds), "the cache listener never came up"


def _enabled(cache: SessionCache, state: bool) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return cache.enabled is state

    return check


async def test_a_listener_gone_silent_is_noticed_within_the_health_check(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The README: the loss of a listener connection that vanishes silently (no FIN, no RST: a
    network path that drops packets) is noticed within 2 seconds, with the default check (2.5
    allowed: the check's own wake-ups). Until then a healthy connection keeps the cache on: the
    check itself never fails."""
    caplog.set_level(logging.INFO, logger="aiohttp_session_postgres")
    async with SilenceableProxy(db_url) as proxy:
        cache = SessionCache()
        async with _listener(cache, partial(asyncpg.connect, proxy.url())):
            await _listening(cache)
            for _ in range(60):  # 3 s, that is at least one health check answered
                assert cache.enabled, "a healthy listener was dropped"
                await asyncio.sleep(0.05)
            proxy.silence()
            began = time.monotonic()
            while cache.enabled:
                assert time.monotonic() - began < 2.5, "a silent listener went unnoticed for 2.5 s"
                await asyncio.sleep(0.02)
            disabled = [r.getMessage() for r in caplog.records if "disabled" in r.getMessage()]
            assert disabled == [
                "session cache disabled (listener lost: TimeoutError): reading every session from the database"
            ]


async def test_a_closed_listener_is_noticed_at_once_logged_and_replaced(
    db_url: str, pg: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """The server closing the listener's connection disables the cache as the connection closes
    (not at the next health check, a minute away here), with a warning saying why; the listener
    reconnects by itself. A load that began before the reconnection may have missed a
    notification: it is never cached; one that began after is."""
    caplog.set_level(logging.INFO, logger="aiohttp_session_postgres")
    cache = SessionCache()
    async with _listener(cache, partial(asyncpg.connect, db_url), check_every=120):
        await _listening(cache)
        assert "session cache enabled: listening for session changes" in caplog.messages
        for _ in range(3):
            cache.notified((b"\x09" * 32).hex())  # the generation moves on, as on a busy system
        before = cache.generation  # a load begins
        killed = await pg.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
        assert killed == 1
        assert await _eventually(_enabled(cache, False), 10), "the closed listener went unnoticed"
        assert (
            "session cache disabled (listener connection closed): reading every session from the database"
            in caplog.messages
        )
        await _listening(cache)
        stale, fresh = b"\x0a" * 32, b"\x0b" * 32
        cache.put(stale, _entry(1), generation=before)
        assert cache.get(stale) is None
        cache.put(fresh, _entry(1), generation=cache.generation)
        assert cache.get(fresh) is not None
    # Stopping is expected: said at INFO, not as a warning.
    last = caplog.records[-1]
    assert (last.levelno, last.getMessage()) == (
        logging.INFO,
        "session cache disabled (shutting down): reading every session from the database",
    )


async def test_a_listener_that_cannot_connect_at_first_keeps_trying(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The database is unreachable when the app starts (a refused connection): the listener
    says so once (not at every retry), retries with backoff, and the cache comes up once it can
    connect."""
    caplog.set_level(logging.INFO, logger="aiohttp_session_postgres")
    refused = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    attempts = 0

    async def connect() -> asyncpg.Connection:
        nonlocal attempts
        attempts += 1
        return await asyncpg.connect(refused if attempts <= 2 else db_url)

    cache = SessionCache()
    async with _listener(cache, connect):
        await _listening(cache)
        assert attempts == 3
        assert caplog.messages == [
            "session cache not enabled (listener lost: ConnectionRefusedError):"
            " reading every session from the database",
            "session cache enabled: listening for session changes",
        ]


def test_a_newer_version_already_cached_is_kept_and_the_same_version_refreshed() -> None:
    """Two saves (or loads) of one session by this process finish out of order: the newer
    version stays cached. The same version put again (a read that slid the idle deadline)
    replaces the entry, so the later deadline holds."""
    cache = _live_cache()
    mine = b"\x0c" * 32
    newer = _entry(5, idle=60, absolute=3600, payload=b'{"v":5}')
    cache.put(mine, newer, generation=cache.generation)
    cache.put(mine, _entry(3), generation=cache.generation)
    assert cache.get(mine) is newer

    slid = _entry(5, idle=120, absolute=3600, payload=b'{"v":5}')
    cache.put(mine, slid, generation=cache.generation)
    _later(slid, 90)
    assert cache.get(mine) is slid


def test_the_cache_holds_10000_sessions_by_default() -> None:
    cache = SessionCache()
    assert cache.enabled is False  # until its listener is connected
    cache._enabled = True
    for n in range(10_001):
        cache.put(n.to_bytes(32, "big"), _entry(1), generation=cache.generation)
    assert len(cache) == 10_000
    assert cache.get((0).to_bytes(32, "big")) is None  # the oldest went


def test_a_lower_version_announced_after_a_deletion_does_not_let_a_stale_load_in() -> None:
    """Any database role may NOTIFY on the channel. A forged (or reordered) `<hex>:1` right after
    the real deletion of that session must not make a load that read the row before the
    deletion look current: what was announced only grows, and a deletion is final."""
    cache = _live_cache()
    mine = b"\x0d" * 32
    generation = cache.generation  # a load reads the row ...
    cache.notified(mine.hex())  # ... the session is logged out ...
    cache.notified(mine.hex() + ":1")  # ... and a forged notification follows
    cache.put(mine, _entry(1), generation=generation)
    assert cache.get(mine) is None

    generation = cache.generation
    cache.notified(mine.hex() + ":9")
    cache.notified(mine.hex() + ":2")
    cache.put(mine, _entry(5), generation=generation)  # read before version 9 was announced
    assert cache.get(mine) is None

    # Nor does it make a current entry look stale: version 9, written here, stays cached.
    current = b"\x0f" * 32
    cache.put(current, _entry(9), generation=cache.generation)
    cache.notified(current.hex() + ":9")  # the echo of that write
    cache.notified(current.hex() + ":2")
    assert cache.get(current) is not None


def test_a_version_that_is_not_ascii_digits_is_read_as_a_deletion() -> None:
    """`str.isdigit()` accepts "²", which `int()` refuses: such a payload (only a forged one can
    carry it) evicts and bars, and raises nothing inside asyncpg's callback."""
    cache = _live_cache()
    mine = b"\x0e" * 32
    cache.put(mine, _entry(3), generation=cache.generation)
    generation = cache.generation
    cache.notified(mine.hex() + ":\u00b2")
    assert cache.get(mine) is None
    cache.put(mine, _entry(3), generation=generation)
    assert cache.get(mine) is None


async def test_a_listener_that_fails_in_any_way_keeps_trying(db_url: str) -> None:
    """Not only network and database errors: whatever ends the listener's loop (here a DSN asyncpg
    refuses with ValueError) leaves the cache disabled and is tried again."""
    attempts = 0

    async def connect() -> asyncpg.Connection:
        nonlocal attempts
        attempts += 1
        return await asyncpg.connect("postgresql://127.0.0.1:not-a-port/x" if attempts == 1 else db_url)

    cache = SessionCache()
    async with _listener(cache, connect):
        await _listening(cache)
        assert attempts == 2


async def test_forged_notifications_only_make_a_process_forget(
    make_client: MakeClient,
    db_url: str,
    user: tuple[str, str],
    pg: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The README: any role that can connect can NOTIFY on the channel, and a forged notification
    can only make a process forget what it cached. Sent for real to the app's listener: a
    truncation, garbage, an "ID" of 3,950 bytes, versions that are no number, lower, negative,
    huge or 5,000 digits long, a payload near PostgreSQL's 8,000-byte limit. The session is still
    served right, nothing is logged as an error, no long key is held, the cache stays on, and a
    real logout through another process still takes effect."""
    a, b = await _two_processes(make_client, db_url)
    await login(a, *user)
    cookie = session_cookie(a)
    assert cookie is not None
    assert (await a.get("/", allow_redirects=False)).status == 200
    cache = a.app[STORAGE].cache
    assert cache is not None
    row = id_hash_of(cookie.split(".")[0]).hex()
    payloads = [
        *("*", "not-hex", ":", "x" * 7900, "ab" * 3950),
        *(f"{row}:{version}" for version in ("\u00b2", "1", "-1", "9" * 30, "9" * 5000)),
    ]
    before = cache.generation
    for payload in payloads:
        await pg.execute("SELECT pg_notify($1, $2)", _channel(), payload)

    async def all_arrived() -> bool:
        return cache.generation >= before + len(payloads)

    assert await _eventually(all_arrived), "the forged notifications never arrived"
    home = await a.get("/", allow_redirects=False)
    assert (home.status, "Hello" in await home.text()) == (200, True)
    assert cache.enabled
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert all(len(key) == 32 for key in cache._notified_at)  # a long "ID" holds no memory

    _use_cookie(b, cookie)
    assert (await b.post("/logout", allow_redirects=False)).status == 303

    async def refused() -> bool:
        return (await a.get("/", allow_redirects=False)).status == 303

    assert await _eventually(refused), "a logout through another process was not seen after forged notifications"
