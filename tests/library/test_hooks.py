"""Session lifecycle hooks (`storage.on_event`): each event reaches them through HTTP with its
fingerprint, user id and reason, in a task of its own (a raising or slow hook never touches the
response); they freeze with the app; and a revocation made by another program reaches this
process's hooks over the events channel, with or without the session cache."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp_session_postgres
import asyncpg
import orjson
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient, make_mocked_request
from aiohttp_session_postgres import PostgresStorage, SessionCache, SessionEvent, create_schema
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.hooks import (
    MAX_PENDING_REMOTE,
    REPLAY_WINDOW,
    SessionHooks,
    parse_payload,
    seal_payload,
)
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


# -- the events channel's payloads: sealed, checked ------------------------------------------------

OTHER_KEY = b"fedcba9876543210fedcba9876543210"  # a key the listening storage does not hold
CHANNEL = "public.sessions:events"


def body(**changes: object) -> dict[str, object]:
    """A well-formed payload's fields (another process's revocation), with `changes`."""
    fields: dict[str, object] = {
        "v": 2,
        "o": "elsewhere",
        "t": int(time.time()),
        "e": "revoked",
        "f": "0011aabb",
        "u": 7,
        "r": "operator",
    }
    fields.update(changes)
    return {key: value for key, value in fields.items() if value is not ...}


def sealed(fields: dict[str, object], key: bytes = ENC_KEY, channel: str = CHANNEL) -> str:
    return seal_payload(fields, cipher=DataCipher((key,)), channel=channel)


# What no hook may receive: none of it is a revocation sealed under the storage's keys with sound
# fields. Checked by parse_payload alone, and through a real listener.
REFUSED = {
    "empty": "",
    "not base64": "not json!",
    "not ascii": "é" * 40,
    "unsealed, format 2": '{"v":2,"o":"x","t":1,"e":"revoked","f":"0011aabb","u":7,"r":"operator"}',
    "unsealed, format 1": '{"v":1,"o":"x","e":"revoked","f":"0011aabb","u":7,"r":"operator"}',
    "base64 of plain JSON": base64.b64encode(orjson.dumps(body())).decode(),
    "another key": sealed(body(), key=OTHER_KEY),
    "another channel": sealed(body(), channel="public.other:events"),
    "not a dict": seal_payload([1, 2], cipher=DataCipher((ENC_KEY,)), channel=CHANNEL),  # type: ignore[arg-type]
    "name a list": sealed(body(e=["revoked"])),
    "name not remote": sealed(body(e="created")),
    "version true": sealed(body(v=True)),
    "version 2.0": sealed(body(v=2.0)),
    "version 1": sealed(body(v=1)),
    "no version": sealed(body(v=...)),
    "no origin": sealed(body(o=...)),
    "origin a number": sealed(body(o=5)),
    "no time": sealed(body(t=...)),
    "time a str": sealed(body(t=str(int(time.time())))),
    "user id empty": sealed(body(u="")),
    "user id NUL": sealed(body(u="\x00")),
    "user id past 64 bits": sealed(body(u=2**64 - 1)),
    "user id true": sealed(body(u=True)),
    "user id too long": sealed(body(u="x" * 256)),
    "user id a list": sealed(body(u=[7])),
    "fingerprint spaced": sealed(body(f=" +1_234 ")),
    "fingerprint 0x": sealed(body(f="0x1_2345")),
    "fingerprint upper case": sealed(body(f="0011AABB")),
    "fingerprint long": sealed(body(f="0011aabbcc")),
    "fingerprint missing": sealed(body(f=...)),
    "reason with a newline": sealed(body(r="operator\nforged line")),
    "reason too long": sealed(body(r="x" * 101)),
    "reason a number": sealed(body(r=5)),
}


def test_only_a_sealed_payload_with_sound_fields_is_understood() -> None:
    cipher = DataCipher((ENC_KEY,))
    for what, payload in REFUSED.items():
        assert parse_payload(payload, cipher=cipher, channel=CHANNEL) is None, what
    notice = parse_payload(sealed(body(u="u-7")), cipher=cipher, channel=CHANNEL)
    assert notice is not None
    assert notice.event == SessionEvent("revoked", "0011aabb", "u-7", "operator", local=False)
    assert notice.origin == "elsewhere"
    # What the library sends is what it accepts: fingerprint_of's form, and None for no user.
    fingerprint = fingerprint_of(id_hash_of("a token"))
    notice = parse_payload(sealed(body(f=fingerprint, u=None, r=None)), cipher=cipher, channel=CHANNEL)
    assert notice is not None
    assert (notice.event.fingerprint, notice.event.user_id) == (fingerprint, None)


async def test_session_data_and_event_payloads_never_open_as_each_other(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> None:
    client = await library_app(aiohttp_client, pool)
    storage = client.app[STORAGE]
    cookie = await started(client)
    id_hash = id_hash_of(cookie.split(".")[0])
    row = await pool.fetchval("SELECT data FROM sessions WHERE id_hash = $1", id_hash)
    cipher = DataCipher((ENC_KEY,))
    assert cipher.open(row, id_hash) is not None  # the row's data, sealed under the same key
    channel = storage._hooks.channel
    assert parse_payload(base64.b64encode(row).decode(), cipher=cipher, channel=channel) is None
    payload = storage._hooks.payload(SessionEvent("revoked", fingerprint_of(id_hash), USER, "operator"))
    assert parse_payload(payload, cipher=cipher, channel=channel) is not None  # from another origin
    assert cipher.open(base64.b64decode(payload), id_hash) is None


class Listening:
    """An app whose storage listens for other processes' events (`event_listener`, or the
    cache's), with a hook recording what it receives; `other` is another process's storage on
    the same table (its own origin)."""

    def __init__(self, client: TestClient, storage: PostgresStorage, hook: Received, other: PostgresStorage) -> None:
        self.client, self.storage, self.hook, self.other = client, storage, hook, other

    async def notify(self, payloads: list[str]) -> None:
        """Send `payloads` on the events channel, in one transaction (as any role could)."""
        await self.storage._rows.pool.execute(
            "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p", self.storage._hooks.channel, payloads
        )

    def remote(self) -> list[SessionEvent]:
        return [e for e in self.hook.events if not e.local]


async def listening(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    pool: asyncpg.Pool,
    url: str,
    *,
    cached: bool = False,
    hook: Received | None = None,
    other_keys: tuple[list[bytes], list[bytes]] = ([ENC_KEY], []),
    **options: Any,
) -> Listening:
    storage = PostgresStorage(
        pool,
        authentication_keys=[AUTH_KEY],
        encryption_keys=[ENC_KEY],
        cache=SessionCache() if cached else None,
        **options,
    )
    hook = hook or Received()
    storage.on_event.append(hook)
    app = web.Application()
    aiohttp_session_postgres.setup(app, storage)
    connect = lambda: asyncpg.connect(url)  # noqa: E731
    app.cleanup_ctx.append(storage.cache_listener(connect) if cached else storage.event_listener(connect))

    async def login(request: web.Request) -> web.Response:
        (await aiohttp_session_postgres.new_session(request))["user_id"] = int(request.query["user"])
        return web.Response()

    app.router.add_post("/login", login)
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    await _listening(storage)
    keys, next_keys = other_keys
    other = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=keys, next_encryption_keys=next_keys)
    return Listening(client, storage, hook, other)


async def login(app: Listening, user: int) -> str:
    return fp((await app.client.post(f"/login?user={user}")).cookies["session"].value)


@pytest.mark.parametrize("cached", [False, True], ids=["event_listener", "cache_listener"])
async def test_forged_and_malformed_notifications_reach_no_hook_and_break_no_listener(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    pool: asyncpg.Pool,
    lib_url: str,
    lib_log: LibraryLog,
    caplog: pytest.LogCaptureFixture,
    cached: bool,
) -> None:
    app = await listening(aiohttp_client, pool, lib_url, cached=cached)
    assert app.storage._hooks.channel == CHANNEL
    id_hash = id_hash_of((await app.client.post("/login?user=3")).cookies["session"].value.split(".")[0])
    row = await pool.fetchval("SELECT data FROM sessions WHERE id_hash = $1", id_hash)
    stale = sealed(body(t=int(time.time()) - 2 * int(REPLAY_WINDOW)))
    await app.notify([*REFUSED.values(), base64.b64encode(row).decode(), stale])

    # Another process's genuine revocation, after them all (one connection: in order), arrives.
    theirs = await login(app, 7)
    assert await app.other.end_all_sessions(7, reason="stolen\ndevice") == 1
    remote = await app.hook.first(lambda e: not e.local)
    assert app.remote() == [SessionEvent("revoked", theirs, 7, "other", local=False)]
    assert remote.reason == "other"  # a reason beyond REASON_PATTERN travels as "other"
    ignored = [line for line in lib_log.lines() if "notifications on the events channel ignored" in line]
    assert len(ignored) == 1, ignored  # once a minute at most, without their content
    assert "operator" not in ignored[0]
    assert "0011aabb" not in ignored[0]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.records
    # The stale one is told apart: a host whose clock is an hour off would drop every revocation.
    skewed = [line for line in lib_log.lines() if "are the hosts' clocks" in line]
    assert len(skewed) == 1, skewed
    assert re.search(r"sealed 720[01] s from this host's clock was dropped", skewed[0]), skewed


async def test_a_captured_notification_sent_again_is_not_delivered_again(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str
) -> None:
    app = await listening(aiohttp_client, pool, lib_url)
    captured: asyncio.Queue[str] = asyncio.Queue()
    spy = await asyncpg.connect(lib_url)  # any role may LISTEN
    try:
        await spy.add_listener(CHANNEL, lambda _c, _p, _ch, payload: captured.put_nowait(payload))
        first = await login(app, 7)
        assert await app.other.end_all_sessions(7, reason="operator") == 1
        payload = await asyncio.wait_for(captured.get(), WAIT)
        assert "operator" not in payload
        assert "revoked" not in base64.b64decode(payload).decode("latin-1")
        await app.notify([payload, payload])
        second = await login(app, 7)
        assert await app.other.end_all_sessions(7, reason="operator") == 1
        await app.hook.first(lambda e: not e.local and e.fingerprint == second)
        assert [e.fingerprint for e in app.remote()] == [first, second]
    finally:
        await spy.close()


async def test_a_payload_sealed_under_a_next_key_opens(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str
) -> None:
    """Mid-rotation: a process already sealing under the new key is heard by one that holds it
    as a next key."""
    app = await listening(aiohttp_client, pool, lib_url, next_encryption_keys=[OTHER_KEY], hook=None)
    rotated = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[OTHER_KEY, ENC_KEY])
    theirs = await login(app, 7)
    assert await rotated.end_all_sessions(7, reason="operator") == 1
    assert await app.hook.first(lambda e: not e.local) == SessionEvent("revoked", theirs, 7, "operator", local=False)


async def test_a_flood_of_notifications_drops_none_of_this_processs_own_events(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str, lib_log: LibraryLog
) -> None:
    gate, full = asyncio.Event(), asyncio.Event()
    held = 0

    class Blocking(Received):
        async def __call__(self, event: SessionEvent) -> None:
            nonlocal held
            if not event.local:  # other processes' events wait, filling their queue
                held += 1
                if held == MAX_PENDING_REMOTE:
                    full.set()
                await gate.wait()
            await super().__call__(event)

    app = await listening(aiohttp_client, pool, lib_url, hook=Blocking())
    forged = [sealed(body(), key=OTHER_KEY)] * 1100 + ['{"v":2,"e":"revoked","f":"0011aabb","u":7}'] * 1100
    # Sealed and sound, from "elsewhere": more than the remote queue holds.
    genuine = [sealed(body(f=f"{n:08x}")) for n in range(MAX_PENDING_REMOTE + 100)]
    await app.notify(forged + genuine)
    await asyncio.wait_for(full.wait(), WAIT)

    mine = await login(app, 8)
    assert await app.storage.end_all_sessions(8, reason="operator") == 1
    assert await app.hook.first(lambda e: e.local and e.name == "revoked") == SessionEvent(
        "revoked", mine, 8, "operator"
    )
    gate.set()
    await app.hook.until(MAX_PENDING_REMOTE + 2)
    assert len(app.remote()) == MAX_PENDING_REMOTE  # the rest of the flood was dropped, counted
    assert any("events dropped" in line for line in lib_log.lines()), lib_log.lines()


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


def test_a_process_forked_after_the_storage_was_made_has_an_origin_of_its_own() -> None:
    # gunicorn --preload makes the storage before forking its workers: were the origin shared,
    # each worker would take the others' revocations for its own and drop them.
    hooks = SessionHooks(object(), 1.0, DataCipher((ENC_KEY,)), CHANNEL)
    parent = hooks.origin
    assert hooks.origin == parent  # stable within a process
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its origin, to the parent, then out without running anything else
        os.write(write_end, hooks.origin.encode())
        os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 100).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    assert len(child) == len(parent) == 16
    assert child != parent
