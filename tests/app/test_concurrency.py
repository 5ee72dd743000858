"""Requests of one session that overlap: optimistic saves merge each request's own changes, a
session ended meanwhile stays ended, and renew_session swaps the ID without losing anything.

Each test holds requests between loading and saving (see storage_harness) so that the overlap
is certain, not left to timing, and reads the row itself from PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres.tokens import fingerprint_of
from support.keys import ENC_KEY
from support.storage_harness import (
    Control,
    cookies,
    expires_cookie,
    id_hash,
    make_user,
    new_cookie,
    open_client,
    session_count,
    set_cookies,
    stored,
)

AiohttpClient = Callable[..., Awaitable[TestClient]]


@pytest.fixture(params=[False, True], ids=["no-cache", "cache"])
def cache(request: pytest.FixtureRequest) -> bool:
    """Every test runs without and with the in-process session cache (SESSION_CACHE=on)."""
    return request.param


@pytest.fixture
async def harness(aiohttp_client: AiohttpClient, db_url: str, cache: bool) -> tuple[TestClient, Control]:
    return await open_client(aiohttp_client, db_url, pool_max=20, cache=cache)


async def start(client: TestClient, **data: object) -> str:
    response = await client.post("/start", json=data)
    assert response.status == 200, await response.text()
    return new_cookie(response)


async def read(client: TestClient, cookie: str) -> dict[str, object]:
    """The session's data as a request with this cookie sees it ({} when anonymous)."""
    response = await client.get("/data", headers=cookies(cookie))
    assert response.status == 200
    data = (await response.json())["data"]
    # A live session is read without a Set-Cookie; a cookie that names none is left alone too
    # (never expired: the browser may already hold a newer one).
    assert not set_cookies(response), set_cookies(response)
    return data


# -- many writers --------------------------------------------------------------------------


@pytest.mark.parametrize("touch_interval", [60, 0], ids=["touch-60s", "touch-every-read"])
async def test_fifty_concurrent_writers_of_different_keys_all_survive(
    aiohttp_client: AiohttpClient, db_url: str, pg: asyncpg.Connection, touch_interval: int, cache: bool
) -> None:
    client, control = await open_client(aiohttp_client, db_url, pool_max=20, cache=cache, touch_interval=touch_interval)
    user_id = await make_user(pg)
    cookie = await start(client, user_id=user_id, name="alice")
    before = await stored(pg, cookie)
    assert before is not None
    _, version_before = before

    writers = 50
    control.barrier = asyncio.Barrier(writers)  # every writer loads before any saves
    responses = await asyncio.gather(
        *(client.post(f"/set/k{i}?barrier=1", json={"n": i}, headers=cookies(cookie)) for i in range(writers))
    )
    assert [r.status for r in responses] == [200] * writers
    assert not any(set_cookies(r) for r in responses), "no writer may expire or replace the cookie"

    after = await stored(pg, cookie)
    assert after is not None
    data, version_after = after
    assert data == {"user_id": user_id, "name": "alice", **{f"k{i}": {"n": i} for i in range(writers)}}
    # One UPDATE per successful save, none lost and none doubled.
    assert version_after - version_before == sum(200 <= r.status < 300 for r in responses) == writers
    assert await read(client, cookie) == data
    assert await pg.fetchval("SELECT user_id FROM sessions") == user_id
    assert await session_count(pg) == 1


@contextlib.asynccontextmanager
async def update_statements(pg: asyncpg.Connection) -> AsyncIterator[Callable[[], Awaitable[list[int]]]]:
    """While it lasts, a statement-level trigger records every UPDATE statement on the sessions
    table (one that changes no row too); yields a function listing the rows each one changed."""
    await pg.execute("CREATE TABLE update_statements (seq serial PRIMARY KEY, rows bigint NOT NULL)")
    try:
        await pg.execute(
            "CREATE FUNCTION count_update() RETURNS trigger LANGUAGE plpgsql AS"
            " $$ BEGIN INSERT INTO update_statements (rows) SELECT count(*) FROM new; RETURN NULL; END $$"
        )
        await pg.execute(
            "CREATE TRIGGER count_update AFTER UPDATE ON sessions REFERENCING NEW TABLE AS new"
            " FOR EACH STATEMENT EXECUTE FUNCTION count_update()"
        )

        async def updated() -> list[int]:
            return [row["rows"] for row in await pg.fetch("SELECT rows FROM update_statements ORDER BY seq")]

        yield updated
    finally:
        await pg.execute("DROP TRIGGER IF EXISTS count_update ON sessions")
        await pg.execute("DROP FUNCTION IF EXISTS count_update()")
        await pg.execute("DROP TABLE IF EXISTS update_statements")


async def test_a_save_nobody_raced_is_one_update_and_no_merge(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    """The optimistic save: the version loaded is the row's, so a save that nobody raced is one
    UPDATE statement; only a conflict costs the merge (a second UPDATE under a row lock). A
    statement-level trigger counts the UPDATE statements on the table (a touch inside the load
    would count too: there is none within the touch interval of the session's creation)."""
    client, _ = harness
    cookie = await start(client, a=1)
    async with update_statements(pg) as updated:
        response = await client.post("/set/b", json=2, headers=cookies(cookie))
        assert response.status == 200
        assert await updated() == [1]
        assert await read(client, cookie) == {"a": 1, "b": 2}
        # Nor does it lock the row first: with a FOR KEY SHARE lock held on it (which the UPDATE,
        # changing no key, does not conflict with, and the merge's FOR UPDATE does), it saves.
        async with pg.transaction():
            await pg.execute("SELECT 1 FROM sessions WHERE id_hash = $1 FOR KEY SHARE", id_hash(cookie))
            response = await asyncio.wait_for(client.post("/set/c", json=3, headers=cookies(cookie)), 30)
            assert response.status == 200


async def test_a_read_within_the_touch_interval_of_its_last_touch_writes_nothing(
    aiohttp_client: AiohttpClient, db_url: str, pg: asyncpg.Connection
) -> None:
    """A process that has just read (and so touched) a session reads it again with a plain
    SELECT: not even an UPDATE that matches nothing. A statement-level trigger counts UPDATE
    statements (it fires for one that changes no row, too)."""
    maker, _ = await open_client(aiohttp_client, db_url)
    cookie = await start(maker, a=1)
    reader, _ = await open_client(aiohttp_client, db_url)  # another process: it knows nothing yet
    async with update_statements(pg) as updated:
        for _ in range(3):
            assert await read(reader, cookie) == {"a": 1}
        # The first read's statement carries the (conditional) touch; the others none.
        assert len(await updated()) == 1


async def test_a_loaded_session_was_created_when_its_row_was(
    aiohttp_client: AiohttpClient, db_url: str, pg: asyncpg.Connection
) -> None:
    """`session.created` (aiohttp-session's API: epoch seconds) is the row's creation time, not
    the time of the request that loaded it; `new` and `identity` say what aiohttp-session
    documents."""
    client, _ = await open_client(aiohttp_client, db_url, cache=False)
    cookie = await start(client, a=1)
    created = await pg.fetchval(
        "UPDATE sessions SET created_at = created_at - interval '1 hour' WHERE id_hash = $1"
        " RETURNING extract(epoch FROM created_at)::bigint",
        id_hash(cookie),
    )
    response = await client.get("/data", headers=cookies(cookie))
    assert response.status == 200
    loaded = await response.json()
    assert loaded["created"] == created
    # And aiohttp-session's other fields: not new, identified by its ID hash (hex).
    assert (loaded["new"], loaded["identity"]) == (False, id_hash(cookie).hex())
    fresh = await (await client.get("/data")).json()
    assert (fresh["new"], fresh["identity"], fresh["data"]) == (True, None, {})

    # The same from another process's cache: its first read fills it, the second is a hit.
    cached, _ = await open_client(aiohttp_client, db_url, cache=True)
    for _ in range(2):
        response = await cached.get("/data", headers=cookies(cookie))
        assert (await response.json())["created"] == created
    # And after that process's own writes (a key set, a key deleted), whose results it caches.
    for write in ("/set/b", "/del/b"):
        assert (await cached.post(write, json=2, headers=cookies(cookie))).status == 200
        response = await cached.get("/data", headers=cookies(cookie))
        assert (await response.json())["created"] == created


async def test_concurrent_delete_and_set_of_different_keys_both_apply(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    client, control = harness
    cookie = await start(client, keep=1, drop=2)
    deleter = asyncio.create_task(client.post("/del/drop?hold=d", headers=cookies(cookie)))
    setter = asyncio.create_task(client.post("/set/added?hold=s", json=3, headers=cookies(cookie)))
    await control.wait_loaded("d", "s")
    control.release("s")
    assert (await setter).status == 200
    control.release("d")  # loaded before the setter saved: it must merge, not overwrite
    assert (await deleter).status == 200
    assert await stored(pg, cookie) == ({"keep": 1, "added": 3}, 3)


async def test_two_concurrent_deletes_of_one_key_both_succeed(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    client, control = harness
    cookie = await start(client, keep=1, drop=2)
    first = asyncio.create_task(client.post("/del/drop?hold=a", headers=cookies(cookie)))
    second = asyncio.create_task(client.post("/del/drop?hold=b", headers=cookies(cookie)))
    await control.wait_loaded("a", "b")
    control.release("a")
    assert (await first).status == 200
    control.release("b")  # merges a deletion of a key the newer data no longer has
    assert (await second).status == 200
    assert await stored(pg, cookie) == ({"keep": 1}, 3)  # both saves wrote


async def test_a_merge_into_data_under_an_unknown_key_drops_its_change_and_says_so(
    aiohttp_client: AiohttpClient, db_url: str, pg: asyncpg.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    """A key rotation rolling out: a process with the new encryption key rewrites a session under
    it while an old process (old key only) holds a request of the same session. The old one's
    late save must merge into data it cannot read: it leaves that data alone (its own change is
    dropped, with a warning naming the session's fingerprint), rather than overwrite it."""
    caplog.set_level(logging.WARNING, logger="aiohttp_session_postgres")
    old_client, old_control = await open_client(aiohttp_client, db_url)
    new_client, _ = await open_client(aiohttp_client, db_url, encryption_keys=[os.urandom(32), ENC_KEY])
    cookie = await start(old_client, keep=1)
    held = asyncio.create_task(old_client.post("/set/late?hold=h", json=2, headers=cookies(cookie)))
    await old_control.wait_loaded("h")
    assert await read(new_client, cookie) == {"keep": 1}  # read under the old key: rewritten under the new
    version_sql = "SELECT version FROM sessions WHERE id_hash = $1"
    assert await pg.fetchval(version_sql, id_hash(cookie)) == 2
    old_control.release("h")
    assert (await held).status == 200
    assert await read(new_client, cookie) == {"keep": 1}
    assert await pg.fetchval(version_sql, id_hash(cookie)) == 2  # not written again
    assert caplog.messages == [
        f"session {fingerprint_of(id_hash(cookie))}: newer data under an unknown key; this change is dropped"
    ]


# -- the same key --------------------------------------------------------------------------


async def test_later_save_of_the_same_key_wins_and_keeps_the_other_writers_keys(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    client, control = harness
    cookie = await start(client, color="red")
    a = asyncio.create_task(client.post("/set/color?hold=a", json="green", headers=cookies(cookie)))
    a_other = asyncio.create_task(client.post("/set/size?hold=a2", json="L", headers=cookies(cookie)))
    b = asyncio.create_task(client.post("/set/color?hold=b", json="blue", headers=cookies(cookie)))
    await control.wait_loaded("a", "a2", "b")
    control.release("a")
    control.release("a2")
    assert [(await a).status, (await a_other).status] == [200, 200]
    assert await stored(pg, cookie) == ({"color": "green", "size": "L"}, 3)

    control.release("b")  # loaded version 1, saves after version 3: a conflict, merged
    assert (await b).status == 200
    assert await stored(pg, cookie) == ({"color": "blue", "size": "L"}, 4)


async def test_writing_back_the_loaded_value_still_overrides_a_concurrent_change(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    """B assigns the value it loaded ("red") after A changed it: B's save is the later one, so
    "red" is the final value, although B's mapping equals its own snapshot."""
    client, control = harness
    cookie = await start(client, color="red")
    a = asyncio.create_task(client.post("/set/color?hold=a", json="green", headers=cookies(cookie)))
    b = asyncio.create_task(client.post("/set/color?hold=b", json="red", headers=cookies(cookie)))
    await control.wait_loaded("a", "b")
    control.release("a")
    assert (await a).status == 200
    control.release("b")
    assert (await b).status == 200
    assert await stored(pg, cookie) == ({"color": "red"}, 3)


# -- nested changes ------------------------------------------------------------------------


async def test_in_place_change_of_a_nested_value_is_saved(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    client, _ = harness
    cookie = await start(client, cart={"items": []})
    for item in ("apple", "pear"):
        response = await client.post("/cart/add", json=item, headers=cookies(cookie))
        assert response.status == 200
    assert await stored(pg, cookie) == ({"cart": {"items": ["apple", "pear"]}}, 3)
    assert await read(client, cookie) == {"cart": {"items": ["apple", "pear"]}}


async def test_in_place_nested_change_survives_a_concurrent_save(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    client, control = harness
    cookie = await start(client, cart={"items": ["apple"]})
    adder = asyncio.create_task(client.post("/cart/add?hold=c", json="pear", headers=cookies(cookie)))
    other = asyncio.create_task(client.post("/set/seen?hold=o", json=True, headers=cookies(cookie)))
    await control.wait_loaded("c", "o")
    control.release("o")
    assert (await other).status == 200
    control.release("c")
    assert (await adder).status == 200
    assert await stored(pg, cookie) == ({"cart": {"items": ["apple", "pear"]}, "seen": True}, 3)


# -- a session ended meanwhile -------------------------------------------------------------


async def test_writer_saving_after_logout_does_not_resurrect_or_touch_the_cookie(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    client, control = harness
    cookie = await start(client, user_id=await make_user(pg))
    writer = asyncio.create_task(client.post("/set/note?hold=w", json="x", headers=cookies(cookie)))
    await control.wait_loaded("w")

    out = await client.post("/logout", headers=cookies(cookie))
    assert out.status == 200
    assert expires_cookie(out)
    assert await session_count(pg) == 0

    control.release("w")
    response = await writer
    assert response.status == 200
    # Only the logout, which ended the session, expires its cookie: a stale response must not
    # delete a cookie the browser may have replaced since (a login in another tab).
    assert not set_cookies(response), set_cookies(response)
    assert await session_count(pg) == 0
    assert await read(client, cookie) == {}
    assert await session_count(pg) == 0


async def test_many_writers_and_a_logout_in_the_middle_leave_no_session(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    client, control = harness
    cookie = await start(client, user_id=await make_user(pg))
    writers = 40
    tasks = [
        asyncio.create_task(client.post(f"/set/k{i}?hold=w{i}", json=i, headers=cookies(cookie)))
        for i in range(writers)
    ]
    await control.wait_loaded(*(f"w{i}" for i in range(writers)))
    order = list(range(writers))
    random.Random(writers).shuffle(order)
    early, late = order[:15], order[15:]

    for i in early:
        control.release(f"w{i}")
    early_responses = await asyncio.gather(*(tasks[i] for i in early))
    assert [r.status for r in early_responses] == [200] * len(early)
    assert not any(set_cookies(r) for r in early_responses)
    saved = await stored(pg, cookie)
    assert saved is not None
    assert {f"k{i}" for i in early} <= saved[0].keys()

    # The logout races the late writers: each either saved before the DELETE or finds the row gone.
    async def release_late() -> None:
        for i in late:
            control.release(f"w{i}")
            await asyncio.sleep(0)

    out, _, *late_responses = await asyncio.gather(
        client.post("/logout", headers=cookies(cookie)), release_late(), *(tasks[i] for i in late)
    )
    assert out.status == 200
    assert expires_cookie(out)
    for response in late_responses:
        assert response.status == 200
        assert not set_cookies(response), set_cookies(response)

    assert await session_count(pg) == 0
    assert await read(client, cookie) == {}
    assert await session_count(pg) == 0


# -- renew_session -------------------------------------------------------------------------


async def test_renew_keeps_data_and_deadlines_under_a_new_id(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    client, _ = harness
    user_id = await make_user(pg)
    cookie = await start(client, user_id=user_id, cart={"items": [1, 2]})
    old = await pg.fetchrow("SELECT id_hash, created_at, absolute_expires_at FROM sessions")
    await asyncio.sleep(0.01)  # now() moves on, so a fresh row would get other timestamps

    response = await client.post("/renew", headers=cookies(cookie))
    assert response.status == 200
    renewed = new_cookie(response)
    assert renewed != cookie
    assert id_hash(renewed) != id_hash(cookie)

    assert await session_count(pg) == 1
    new = await pg.fetchrow(
        "SELECT id_hash, user_id, created_at, absolute_expires_at FROM sessions WHERE replaced_at IS NULL"
    )
    assert new["id_hash"] == id_hash(renewed)
    assert new["user_id"] == user_id
    assert (new["created_at"], new["absolute_expires_at"]) == (old["created_at"], old["absolute_expires_at"])
    assert await read(client, renewed) == {"user_id": user_id, "cart": {"items": [1, 2]}}
    assert await read(client, cookie) == {}, "the old cookie must no longer work"
    assert await session_count(pg) == 1


async def test_renewing_a_session_ended_meanwhile_creates_nothing(
    harness: tuple[TestClient, Control], pg: asyncpg.Connection
) -> None:
    client, control = harness
    cookie = await start(client, user_id=await make_user(pg))
    renewal = asyncio.create_task(client.post("/renew?hold=r", headers=cookies(cookie)))
    await control.wait_loaded("r")
    out = await client.post("/logout", headers=cookies(cookie))
    assert out.status == 200
    assert await session_count(pg) == 0

    control.release("r")
    response = await renewal
    assert response.status == 200
    assert not set_cookies(response), set_cookies(response)  # only the logout expired it
    assert await session_count(pg) == 0
