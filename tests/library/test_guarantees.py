"""Guarantees that a mutation of the code once left standing: each test here fails when the line
it names is changed (tests/MUTANTS.md), through a real app and a real PostgreSQL.

- the expiry check in the versioned UPDATE (sql.SAVE_SQL): a save held past the session's
  idle deadline does not bring it back;
- every documented session event is logged (events.py's list);
- the cache's maximum age (SessionCache max_age): an entry older than it is read again.

Those of the demo app (the work of a login, the scrypt parameters) are in
tests/app/test_app_guarantees.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import SessionCache
from aiohttp_session_postgres.tokens import TokenSigner, fingerprint_of, handle_of, id_hash_of
from support.keys import AUTH_KEY
from support.library_app import USER, library_app, read, started, with_cookie
from support.logs import LibraryLog
from support.postgres import database_name, wait_for_lock_waiters


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


# -- the versioned UPDATE checks expiry -------------------------------------------------------------


async def test_a_save_held_past_the_idle_deadline_does_not_bring_the_session_back(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    client = await library_app(aiohttp_client, pool, idle_timeout=2, absolute_timeout=60, touch_interval=1)
    cookie = await started(client)
    # Loaded now (live), saved 3 s later: the idle deadline (2 s) passed while the handler ran.
    late = await client.post("/write-after?seconds=3", headers=with_cookie(cookie))
    assert late.status == 200
    assert "session" not in late.cookies  # the cookie is left alone, never renewed
    assert await read(client, cookie) == {}  # still ended: the late save wrote nothing


async def test_a_renewal_held_past_the_idle_deadline_does_not_carry_the_session_into_a_new_id(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_pg: asyncpg.Connection
) -> None:
    """The renewal uses up only a live session (sql.RENEW_SQL, `idle_expires_at > now()`): one
    loaded before its idle deadline and renewed after it creates nothing, however far off its
    absolute deadline is."""
    client = await library_app(aiohttp_client, pool, idle_timeout=2, absolute_timeout=60, touch_interval=1)
    cookie = await started(client)
    late = await client.post("/renew-after?seconds=3", headers=with_cookie(cookie))
    assert late.status == 200
    assert "session" not in late.cookies  # no new ID was handed out
    assert await lib_pg.fetchval("SELECT count(*) FROM sessions WHERE idle_expires_at > now()") == 0
    assert await read(client, cookie) == {}


# -- every documented event -------------------------------------------------------------------------


async def test_every_documented_session_event_is_logged(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_log: LibraryLog
) -> None:
    from aiohttp_session_postgres import events

    documented = set(events.__doc__.split("Events:", 1)[1].split(".\n", 1)[0].replace("\n", " ").split(", "))
    documented = {name.strip() for name in documented}
    client = await library_app(
        aiohttp_client, pool, max_sessions_per_user=1, idle_timeout=2, touch_interval=1, max_data_bytes=200
    )
    first = await started(client)  # session.created
    too_large = await client.post("/mark", params={"key": "k" * 200}, headers=with_cookie(first))
    assert too_large.status == 413  # session.too_large
    renewed = await client.post("/renew", headers=with_cookie(first))  # session.renewed
    second = renewed.cookies["session"].value
    await client.post("/start", headers=with_cookie(first))  # first is used up: session.not_created
    third = await started(client)  # the cap of 1 ends `second`: session.ended
    assert await read(client, second) == {}  # session.expired_or_unknown
    await client.post("/write-after?seconds=2.5", headers=with_cookie(third))  # session.ended_during_request
    fourth = await started(client)
    await client.post("/end-all")  # session.revoked
    bad = first.split(".")[0] + "." + "A" * 43
    await client.get("/read", headers=with_cookie(bad))  # session.bad_signature
    # A row whose data no key opens (written under a key since dropped): session.undecryptable.
    fifth = await started(client)
    await pool.execute(
        "UPDATE sessions SET data = $2 WHERE id_hash = $1", id_hash_of(fifth.split(".")[0]), b"\x00" * 60
    )
    assert await read(client, fifth) == {}
    await client.post("/logout", headers=with_cookie(fourth))  # already revoked: nothing ended
    await client.post("/logout", headers=with_cookie(fifth))
    logged = {line.split()[0].removeprefix("event=") for line in lib_log.events()}
    assert documented <= logged, f"never logged: {sorted(documented - logged)}"
    # A dead session is looked up, and logged, once per process, with its fingerprint.
    assert await read(client, second) == {}
    assert await read(client, fifth) == {}
    lines = [line.split(" request_id=")[0] for line in lib_log.events()]
    for event, cookie in (("session.expired_or_unknown", second), ("session.undecryptable", fifth)):
        fp = fingerprint_of(id_hash_of(cookie.split(".")[0]))
        assert lines.count(f"event={event} fp={fp}") == 1, (event, lines)
    assert TokenSigner((AUTH_KEY,)).verify(bad) is None


async def test_each_ending_event_names_the_session_it_ended(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_log: LibraryLog
) -> None:
    """A line per session ended, with that session's fingerprint (and no other's): a logout, a
    logout by a fresh session invalidated unsaved (it ends the request's session), a
    revocation of one session, of all others."""
    client = await library_app(aiohttp_client, pool)

    def fp(cookie: str) -> str:
        return fingerprint_of(id_hash_of(cookie.split(".")[0]))

    def lines(event: str) -> list[str]:
        return [line.split(" request_id=")[0] for line in lib_log.events() if line.startswith(f"event={event} ")]

    logged_out = await started(client)
    response = await client.post("/logout", headers=with_cookie(logged_out))
    assert response.cookies["session"]["max-age"] == "0"
    replaced = await started(client)
    response = await client.post("/replace-and-invalidate", headers=with_cookie(replaced))
    assert response.cookies["session"]["max-age"] == "0"
    assert await read(client, replaced) == {}
    assert lines("session.ended") == [f"event=session.ended fp={fp(cookie)}" for cookie in (logged_out, replaced)]

    kept, other, third = await started(client), await started(client), await started(client)
    assert (await client.post("/end-others", headers=with_cookie(kept))).status == 200
    assert sorted(lines("session.revoked")) == sorted(
        f"event=session.revoked fp={fp(cookie)} user_id=1 reason=end_other_sessions" for cookie in (other, third)
    )
    assert (await client.post(f"/end-one?handle={handle_of(id_hash_of(kept.split('.')[0]))}")).status == 200
    assert lines("session.revoked")[-1] == f"event=session.revoked fp={fp(kept)} user_id=1 reason=end_session"

    # Logged out while a request of it was running: that request's save says so.
    late = await started(client)
    seen_sql = "SELECT last_seen_at FROM sessions WHERE id_hash = $1"
    before = await pool.fetchval(seen_sql, id_hash_of(late.split(".")[0]))
    writing = asyncio.ensure_future(client.post("/write-after?seconds=1", headers=with_cookie(late)))
    for _ in range(100):  # its load touches the row (touch_interval 0): it has loaded
        if await pool.fetchval(seen_sql, id_hash_of(late.split(".")[0])) != before:
            break
        await asyncio.sleep(0.02)
    assert (await client.post("/logout", headers=with_cookie(late))).status == 200
    assert (await writing).status == 200
    assert lines("session.ended_during_request") == [f"event=session.ended_during_request fp={fp(late)}"]


async def test_the_creation_events_name_their_sessions_and_reasons(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_log: LibraryLog
) -> None:
    """The lines a login, a renewal, a refused or superseded login and the per-user cap write,
    whole (events.py's format): what an operator follows a session by."""
    client = await library_app(aiohttp_client, pool, max_sessions_per_user=2)

    def fp(cookie: str) -> str:
        return fingerprint_of(id_hash_of(cookie.split(".")[0]))

    def lines() -> list[str]:
        return [line.split(" request_id=")[0] for line in lib_log.events()]

    first = await started(client)
    assert lines()[-1] == f"event=session.created fp={fp(first)} user_id={USER}"
    renewed = (await client.post("/renew", headers=with_cookie(first))).cookies["session"].value
    assert lines()[-1] == f"event=session.renewed fp={fp(renewed)} previous={fp(first)}"
    assert (await client.post("/start", headers=with_cookie(first))).status == 200  # used up already
    assert lines()[-1] == f"event=session.not_created fp={fp(first)} reason=replaced_or_ended"
    assert (await client.post("/start-refused", headers=with_cookie(renewed))).status == 403
    assert lines()[-1] == f"event=session.not_created fp={fp(renewed)} reason=precondition"
    second, third = await started(client), await started(client)  # the cap of 2 ends the oldest
    assert f"event=session.ended fp={fp(renewed)} reason=max_sessions_per_user" in lines()
    assert lines()[-1] == f"event=session.created fp={fp(third)} user_id={USER}"
    assert await read(client, second) == {"user_id": USER}
    anonymous = (await client.post("/mark?key=seen")).cookies["session"].value  # a session of no user
    assert lines()[-1] == f"event=session.created fp={fp(anonymous)} user_id=-"


async def test_cookies_that_fail_their_signature_are_passed_over_and_counted(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_log: LibraryLog
) -> None:
    """Other cookies of the session's name (another app's, tampered ones) before the real one:
    each is passed over, the real one is loaded, and one line counts them; a request with none
    writes no such line."""
    client = await library_app(aiohttp_client, pool)
    good = await started(client)
    bad = [good.split(".")[0] + "." + "A" * 43, "not-even-a-token"]
    response = await client.get("/read", headers={"Cookie": f"session={bad[0]}; session={bad[1]}; session={good}"})
    assert await response.json() == {"user_id": USER}
    assert await read(client, good) == {"user_id": USER}
    counted = [line.split(" request_id=")[0] for line in lib_log.events() if "session.bad_signature" in line]
    assert counted == ["event=session.bad_signature cookies=2"]

    # At most 4 validly signed cookies are looked at (each may cost a lookup): a live fifth is not.
    dead = [await started(client) for _ in range(4)]
    for cookie in dead:
        assert (await client.post("/logout", headers=with_cookie(cookie))).status == 200
    header = "; ".join(f"session={cookie}" for cookie in [*dead, good])
    response = await client.get("/read", headers={"Cookie": header})
    assert (response.status, await response.json()) == (200, {})


async def test_a_session_this_process_just_wrote_is_served_from_its_cache(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str
) -> None:
    """A process's own write puts what it wrote in its cache: the next read asks no database
    (here the table is locked: a read that asked would wait out database_timeout, a 503)."""
    client = await library_app(aiohttp_client, pool, listen_dsn=lib_url, cache=SessionCache(), touch_interval=60)
    cookie = await started(client)
    assert (await client.post("/write", headers=with_cookie(cookie))).status == 200
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        assert await read(client, cookie) == {"user_id": USER, "count": 1}


@pytest.mark.parametrize("made_by", ["/start", "/renew"])
async def test_a_session_this_process_just_created_or_renewed_is_served_from_its_cache(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str, made_by: str
) -> None:
    """As a write: a login or a renewal caches the session it made, under its new ID."""
    client = await library_app(aiohttp_client, pool, listen_dsn=lib_url, cache=SessionCache(), touch_interval=60)
    cookie = await started(client)
    if made_by == "/renew":
        cookie = (await client.post("/renew", headers=with_cookie(cookie))).cookies["session"].value
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        assert await read(client, cookie) == {"user_id": USER}


# -- the cache's maximum age ------------------------------------------------------------------------


async def test_a_cached_session_older_than_the_maximum_age_is_read_again(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str
) -> None:
    cache = SessionCache(max_age=1)
    client = await library_app(
        aiohttp_client, pool, cache=cache, touch_interval=60, database_timeout=0.5, listen_dsn=lib_url
    )
    cookie = await started(client)
    async with pool.acquire() as locker, locker.transaction():
        await locker.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
        assert (await client.get("/read", headers=with_cookie(cookie))).status == 200  # from the cache
        await asyncio.sleep(1.2)
        # Older than max_age: asked of the database, which is locked: the deadline answers.
        assert (await client.get("/read", headers=with_cookie(cookie))).status == 503


# -- found by review: waits that outlive a deadline or a revocation --------------------------------


async def test_a_merge_that_waited_past_the_idle_deadline_does_not_bring_the_session_back(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str
) -> None:
    # The late save conflicts (another write came first), so it merges: it waits for the row's
    # lock, held elsewhere past the session's idle deadline. Its transaction began before the
    # deadline (now() is its start): the expiry is checked against the clock, so it writes nothing.
    client = await library_app(aiohttp_client, pool, idle_timeout=3, absolute_timeout=60, touch_interval=1,
                               database_timeout=6)  # fmt: skip
    cookie = await started(client)
    row = id_hash_of(cookie.split(".")[0])
    late = asyncio.ensure_future(client.post("/write-after?seconds=1.0", headers=with_cookie(cookie)))
    await asyncio.sleep(0.3)
    assert (await client.post("/write", headers=with_cookie(cookie))).status == 200  # deadline now +3 s
    holder = await asyncpg.connect(lib_url)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM sessions WHERE id_hash = $1 FOR UPDATE", row)
            await asyncio.sleep(3.5)  # the late save's merge waits here; the idle deadline passes
            assert await holder.fetchval(
                "SELECT idle_expires_at < clock_timestamp() FROM sessions WHERE id_hash = $1", row
            )
        response = await late
    finally:
        await holder.close()
    assert response.status == 200
    assert "session" not in response.cookies
    assert await read(client, cookie) == {}


@pytest.mark.parametrize("ending", ["/end-all", "/end-others"])
async def test_ending_a_users_sessions_catches_a_renewal_in_flight(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str, ending: str
) -> None:
    # An attacker's stolen session is being renewed (the renewal waits on the row) when the user
    # ends all their sessions (or all but the one they are using): the renewal's new row must be
    # ended too, not left live.
    client = await library_app(aiohttp_client, pool, touch_interval=60, database_timeout=5)
    stolen = await started(client)
    kept = await started(client)  # the user's own, for /end-others
    row = id_hash_of(stolen.split(".")[0])
    holder, watcher = await asyncpg.connect(lib_url), await asyncpg.connect(lib_url)
    try:
        tr = holder.transaction()
        await tr.start()
        await holder.execute("SELECT 1 FROM sessions WHERE id_hash = $1 FOR UPDATE", row)
        renewing = asyncio.ensure_future(client.post("/renew", headers=with_cookie(stolen)))
        await wait_for_lock_waiters(watcher, database_name(lib_url), 1)
        ended_by = asyncio.ensure_future(client.post(ending, headers=with_cookie(kept)))
        await wait_for_lock_waiters(watcher, database_name(lib_url), 2)  # behind the renewal's user lock
        await tr.rollback()
        renewed, ended = await renewing, await ended_by
    finally:
        await holder.close()
        await watcher.close()
    assert renewed.status == 200
    assert ended.status == 200
    live = await pool.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1 AND idle_expires_at > now()", USER)
    assert live == (0 if ending == "/end-all" else 1)
    # The renewal went first (it waited on the row, holding the user's lock): its new session was
    # ended with the rest.
    assert await ended.text() == ("2" if ending == "/end-all" else "1")
    assert await read(client, renewed.cookies["session"].value) == {}
