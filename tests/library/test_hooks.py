"""Session lifecycle hooks (`storage.on_event`): each event reaches them through HTTP with its
fingerprint, user id and reason, in a task of its own (a raising or slow hook never touches the
response); they freeze with the app; and a revocation made by another program reaches this
process's hooks over the events channel, with or without the session cache."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp_session_postgres
import asyncpg
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient, make_mocked_request
from aiohttp_session_postgres import PostgresStorage, SessionCache, SessionEvent, create_schema
from aiohttp_session_postgres.hooks import parse_payload
from aiohttp_session_postgres.tokens import fingerprint_of, handle_of, id_hash_of
from support.keys import AUTH_KEY, ENC_KEY
from support.library_app import STORAGE, USER, library_app, read, started, with_cookie
from support.logs import LibraryLog
from support.paths import REPO_ROOT

WAIT = 10.0  # seconds an event may take to arrive before the test fails (normally milliseconds)


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=4) as pool:
        yield pool


class Received:
    """A hook that keeps what it receives."""

    def __init__(self) -> None:
        self.events: list[SessionEvent] = []
        self._arrived = asyncio.Condition()

    async def __call__(self, event: SessionEvent) -> None:
        async with self._arrived:
            self.events.append(event)
            self._arrived.notify_all()

    async def until(self, count: int) -> list[SessionEvent]:
        """The first `count` events, once they have arrived."""
        async with asyncio.timeout(WAIT), self._arrived:
            await self._arrived.wait_for(lambda: len(self.events) >= count)
        return self.events[:count]

    async def first(self, predicate: Callable[[SessionEvent], bool]) -> SessionEvent:
        async with asyncio.timeout(WAIT), self._arrived:
            await self._arrived.wait_for(lambda: any(predicate(e) for e in self.events))
        return next(e for e in self.events if predicate(e))


def fp(cookie: str) -> str:
    return fingerprint_of(id_hash_of(cookie.split(".")[0]))


async def test_each_event_reaches_the_hooks_with_its_fields(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    client = await library_app(aiohttp_client, pool, max_sessions_per_user=1)
    storage = client.app[STORAGE]
    hook = Received()
    storage.on_event.append(hook)

    first = await started(client)  # created
    renewed = await client.post("/renew", headers=with_cookie(first))  # renewed
    second = renewed.cookies["session"].value
    third = await started(client)  # created; the cap of 1 revokes `second`
    assert await read(client, second) == {}  # expired: found at load
    await client.post("/logout", headers=with_cookie(third))  # ended
    fourth = await started(client)
    assert (await client.post("/end-all")).text is not None  # revoked
    expiring = await started(client)
    await pool.execute(
        "UPDATE sessions SET idle_expires_at = now() - interval '1 hour',"
        " absolute_expires_at = now() - interval '1 hour' WHERE id_hash = $1",
        id_hash_of(expiring.split(".")[0]),
    )
    assert await storage.sweep() == 1  # swept

    events = await hook.until(10)
    assert events == [
        SessionEvent("created", fp(first), USER),
        SessionEvent("renewed", fp(second), USER, previous=fp(first)),
        # The cap's revocation is part of the creation, told first (as the log lines are).
        SessionEvent("revoked", fp(second), USER, "max_sessions_per_user"),
        SessionEvent("created", fp(third), USER),
        SessionEvent("expired", fp(second), None, "found_at_load"),
        SessionEvent("ended", fp(third), USER, "logout"),
        SessionEvent("created", fp(fourth), USER),
        SessionEvent("revoked", fp(fourth), USER, "end_all_sessions"),
        SessionEvent("created", fp(expiring), USER),
        SessionEvent("swept", "-", None, "sweep", count=1),
    ]
    assert all(event.local for event in events)
    # A dead session is reported once per process, not on every request that brings it.
    assert await read(client, second) == {}
    await client.post("/end-all")
    assert [e.name for e in hook.events[10:]] == []


async def test_the_end_methods_carry_the_reason_given(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    client = await library_app(aiohttp_client, pool)
    storage = client.app[STORAGE]
    hook = Received()
    storage.on_event.append(hook)
    kept, other, third = await started(client), await started(client), await started(client)
    handle = handle_of(id_hash_of(third.split(".")[0]))
    assert await storage.end_session(USER, handle, reason="stolen device")
    session_of_kept = await _session_of(client, kept)
    assert await storage.end_other_sessions(USER, session_of_kept, reason="sign out elsewhere") == 1
    assert await storage.end_all_sessions(USER, reason="password_changed") == 1
    revoked = [e for e in await hook.until(6) if e.name == "revoked"]
    assert [(e.fingerprint, e.reason) for e in revoked] == [
        (fp(third), "stolen device"),
        (fp(other), "sign out elsewhere"),
        (fp(kept), "password_changed"),
    ]
    with pytest.raises(ValueError, match="reason"):
        await storage.end_all_sessions(USER, reason="x" * 101)


async def _session_of(client: TestClient, cookie: str) -> aiohttp_session_postgres.PostgresSession:
    """The session `cookie` names, as a request loads it (for end_other_sessions' `keep`)."""
    return await client.app[STORAGE].load_session(make_mocked_request("GET", "/", headers=with_cookie(cookie)))


async def test_a_raising_hook_is_logged_without_its_message_and_breaks_nothing(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_log: LibraryLog
) -> None:
    client = await library_app(aiohttp_client, pool)
    storage = client.app[STORAGE]

    async def broken(event: SessionEvent) -> None:
        raise ValueError("the secret data of a session")

    after = Received()
    storage.on_event.append(broken)
    storage.on_event.append(after)
    cookie = await started(client)
    assert await read(client, cookie) == {"user_id": USER}
    assert (await client.post("/logout", headers=with_cookie(cookie))).status == 200
    assert [e.name for e in await after.until(2)] == ["created", "ended"]  # the next hook still ran
    lines = [line for line in lib_log.lines() if "broken" in line]
    assert any("session hook" in line and "raised ValueError on created at " in line for line in lines), lines
    assert "secret data" not in "\n".join(lib_log.lines())


async def test_a_slow_hook_holds_no_response_and_a_hung_one_is_cancelled(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_log: LibraryLog
) -> None:
    client = await library_app(aiohttp_client, pool, hook_timeout=0.5)
    storage = client.app[STORAGE]
    release, cancelled = asyncio.Event(), asyncio.Event()

    async def hung(event: SessionEvent) -> None:
        try:
            await release.wait()  # never set: only the hook timeout ends it
        except asyncio.CancelledError:
            cancelled.set()
            raise

    storage.on_event.append(hung)
    cookie = await started(client)  # answered while the hook waits
    assert await read(client, cookie) == {"user_id": USER}
    await asyncio.wait_for(cancelled.wait(), WAIT)
    for _ in range(100):  # the warning is written just after the cancellation
        if any("took over 0.5 s on created: cancelled" in line for line in lib_log.lines()):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(lib_log.lines())


async def test_the_hooks_freeze_when_the_app_starts(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])
    hook = Received()
    storage.on_event.append(hook)  # before the app starts: allowed
    app = web.Application()
    aiohttp_session_postgres.setup(app, storage)

    async def login(request: web.Request) -> web.Response:
        (await aiohttp_session_postgres.new_session(request))["user_id"] = 11
        return web.Response()

    app.router.add_post("/login", login)
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    with pytest.raises(RuntimeError):
        storage.on_event.append(hook)
    assert (await client.post("/login")).status == 200
    (event,) = await hook.until(1)
    assert (event.name, event.user_id) == ("created", 11)


# -- across processes ----------------------------------------------------------------------------

# Another program revoking through the library (an operator's script, a cron job, the demo's CLI).
REVOKER = textwrap.dedent(
    """
    import asyncio, sys
    import asyncpg
    from aiohttp_session_postgres import PostgresStorage

    async def main():
        async with asyncpg.create_pool(sys.argv[1], min_size=1, max_size=1) as pool:
            storage = PostgresStorage(pool, authentication_keys=[sys.argv[2].encode()],
                                      encryption_keys=[sys.argv[3].encode()])
            print(await storage.end_all_sessions(int(sys.argv[4]), reason="operator"))

    asyncio.run(main())
    """
)


def revoke_elsewhere(url: str, user_id: int) -> int:
    result = subprocess.run(
        [sys.executable, "-c", REVOKER, url, AUTH_KEY.decode(), ENC_KEY.decode(), str(user_id)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(result.stdout)


@pytest.mark.parametrize("cached", [False, True], ids=["event_listener", "cache_listener"])
async def test_a_revocation_by_another_program_reaches_this_processs_hooks(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str, cached: bool
) -> None:
    storage = PostgresStorage(
        pool,
        authentication_keys=[AUTH_KEY],
        encryption_keys=[ENC_KEY],
        cache=SessionCache() if cached else None,
    )
    hook = Received()
    storage.on_event.append(hook)
    app = web.Application()
    aiohttp_session_postgres.setup(app, storage)
    connect = lambda: asyncpg.connect(lib_url)  # noqa: E731
    app.cleanup_ctx.append(storage.cache_listener(connect) if cached else storage.event_listener(connect))

    async def login(request: web.Request) -> web.Response:
        (await aiohttp_session_postgres.new_session(request))["user_id"] = int(request.query["user"])
        return web.Response()

    async def end_all(request: web.Request) -> web.Response:
        return web.Response(text=str(await storage.end_all_sessions(int(request.query["user"]))))

    app.router.add_post("/login", login)
    app.router.add_post("/end-all", end_all)
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    await _listening(storage)

    mine = (await client.post("/login?user=8")).cookies["session"].value
    assert (await client.post("/end-all?user=8")).status == 200  # this process's own revocation
    theirs = (await client.post("/login?user=7")).cookies["session"].value
    assert revoke_elsewhere(lib_url, 7) == 1

    remote = await hook.first(lambda e: not e.local)
    assert remote == SessionEvent("revoked", fp(theirs), 7, "operator", local=False)
    # Its own revocation, whose notification came first (commit order), was delivered once, locally.
    assert [(e.name, e.fingerprint, e.local) for e in hook.events if e.fingerprint == fp(mine)] == [
        ("created", fp(mine), True),
        ("revoked", fp(mine), True),
    ]


async def _listening(storage: PostgresStorage) -> None:
    """Until the storage's listener listens (it connects in the background as the app starts)."""
    for _ in range(200):
        if storage._hooks.listening or (storage.cache is not None and storage.cache.enabled):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the listener never listened")


def test_a_notification_of_another_shape_is_ignored() -> None:
    for payload in (
        "",
        "not json",
        "[]",
        '{"v": 2, "o": "x", "e": "revoked", "f": "0011aabb"}',
        '{"v": 1, "o": "x", "e": "created", "f": "0011aabb"}',  # only revocations travel
        '{"v": 1, "o": "x", "e": "revoked", "f": "0011aabbcc"}',
        '{"v": 1, "o": "x", "e": "revoked", "f": "zz11aabb"}',
        '{"v": 1, "o": "x", "e": "revoked", "f": "0011aabb", "u": true}',
        '{"v": 1, "o": "x", "e": "revoked", "f": "0011aabb", "u": [1]}',
        '{"v": 1, "o": "x", "e": "revoked", "f": "0011aabb", "r": 5}',
        '{"v": 1, "o": "me", "e": "revoked", "f": "0011aabb"}',  # this process's own
    ):
        assert parse_payload(payload, origin="me") is None, payload
    event = parse_payload(
        '{"v": 1, "o": "x", "e": "revoked", "f": "0011aabb", "u": "u-7", "r": "operator"}', origin="me"
    )
    assert event == SessionEvent("revoked", "0011aabb", "u-7", "operator", local=False)


@pytest.mark.citus
async def test_revocations_reach_other_processes_hooks_on_citus(
    aiohttp_client: Callable[..., Awaitable[TestClient]], citus_url: str
) -> None:
    """On a distributed table, where the table has no triggers: a revocation across workers (a
    two-phase commit) inside the caller's transaction, and the cap's, reach another storage's
    hooks (another process: its own origin) through the coordinator."""
    conn = await asyncpg.connect(citus_url)
    try:
        await create_schema(conn, citus=True)
    finally:
        await conn.close()
    async with asyncpg.create_pool(citus_url, min_size=1, max_size=4) as citus_pool:
        listening = PostgresStorage(
            citus_pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], cache=SessionCache(), citus=True
        )
        hook = Received()
        listening.on_event.append(hook)
        app = web.Application()
        app.cleanup_ctx.append(listening.cache_listener(lambda: asyncpg.connect(citus_url)))
        client = await aiohttp_client(app)
        await _listening(listening)
        elsewhere = await library_app(aiohttp_client, citus_pool, citus=True, max_sessions_per_user=3)
        cookies = [await started(elsewhere) for _ in range(4)]  # the fourth login revokes the first
        capped = await hook.first(lambda e: e.reason == "max_sessions_per_user")
        assert capped == SessionEvent("revoked", fp(cookies[0]), USER, "max_sessions_per_user", local=False)
        async with citus_pool.acquire() as conn, conn.transaction():
            assert await elsewhere.app[STORAGE].end_all_sessions(USER, conn=conn, reason="operator") == 3
        await hook.until(4)
        assert sorted(e.fingerprint for e in hook.events if e.reason == "operator") == sorted(
            fp(cookie) for cookie in cookies[1:]
        )
        assert all(not e.local for e in hook.events)
        await client.close()
