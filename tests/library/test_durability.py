"""durable_writes: which writes wait for PostgreSQL's write-ahead-log flush.

Observed, not assumed: on a PostgreSQL of this module's own, every commit that waits for the
flush is made to wait for a synchronous standby that never comes (synchronous_standby_names =
'ghost'), so it hangs until database_timeout (503), while a commit that does not wait
(synchronous_commit = off for its transaction) is answered at once. With durable_writes=True
everything waits; with False only what ends nothing (a fresh session, a data change keeping the
user_id, a touch) is answered first. The crash itself is in test_faults.py."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import create_schema
from aiohttp_session_postgres.tokens import id_hash_of
from support.library_app import library_app, started
from support.postgres import start_embedded

TIMEOUT = 1.0  # library_app's database_timeout


@pytest.fixture(scope="module")
def ghost_url() -> Iterator[str]:
    server: Any = start_embedded("pgdurable-")
    try:
        url = server.get_uri()

        async def prepare() -> None:
            conn = await asyncpg.connect(url)
            try:
                await create_schema(conn)
            finally:
                await conn.close()

        asyncio.run(prepare())
        yield url
    finally:
        server.cleanup()


@contextlib.asynccontextmanager
async def flushes_never_confirmed(url: str) -> AsyncIterator[None]:
    """Every commit that waits for the flush (synchronous_commit on) hangs from here on."""
    admin = await asyncpg.connect(url)
    try:
        await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'ghost'")
        await admin.execute("SELECT pg_reload_conf()")
        for _ in range(100):  # in effect for new statements once each backend has reloaded
            probe = await asyncpg.connect(url)
            try:
                if await probe.fetchval("SHOW synchronous_standby_names") == "ghost":
                    break
            finally:
                await probe.close()
            await asyncio.sleep(0.05)
        yield
    finally:
        await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
        await admin.execute("SELECT pg_reload_conf()")
        await admin.close()


# (operation, what it does to the store, whether durable_writes=False lets it skip the flush)
OPERATIONS = [
    ("/start", "a new session replacing none", True),
    ("/start-guarded", "a new session guarded by require() (its check's writes commit with it)", False),
    ("/read", "a read that touches", True),
    ("/write", "a data change keeping the user_id", True),
    ("/switch", "a data change of the user_id", False),
    ("/sign-out-by-data", "a data change removing the user_id", False),
    ("/logout", "a logout", False),
    ("/renew", "a renewal (ends the old ID)", False),
    ("/start-again", "a login from a live session (uses it up)", False),
    ("/start-beyond-cap", "a login past max_sessions_per_user (ends the oldest)", False),
    ("/end-all", "a revocation of all the user's sessions", False),
]


@pytest.mark.parametrize("durable_writes", [True, False, None], ids=["durable", "not-durable", "default"])
async def test_only_writes_that_end_nothing_skip_the_flush(
    aiohttp_client: Callable[..., Awaitable[TestClient]], ghost_url: str, durable_writes: bool | None
) -> None:
    # None: the storage's default, which is durable.
    options = {} if durable_writes is None else {"durable_writes": durable_writes}
    async with asyncpg.create_pool(ghost_url, min_size=1, max_size=4) as pool:
        client = await library_app(aiohttp_client, pool, **options)
        capped = await library_app(aiohttp_client, pool, max_sessions_per_user=1, **options)
        # A session of its own for each operation, made while flushes are still confirmed.
        cookies = {path: await started(client) for path, _, _ in OPERATIONS}
        seen: dict[str, bool] = {}
        async with flushes_never_confirmed(ghost_url):
            for path, _, _ in OPERATIONS:
                header = {"Cookie": f"session={cookies[path]}"}
                if path in ("/start", "/start-guarded"):
                    response = await client.post(path)  # no cookie: replaces nothing
                elif path == "/read":
                    response = await client.get(path, headers=header)
                elif path == "/start-beyond-cap":
                    response = await capped.post("/start")  # a fresh session; the cap ends others
                elif path == "/start-again":
                    response = await client.post("/start", headers=header)
                else:
                    response = await client.post(path, headers=header)
                assert response.status in (200, 503), (path, response.status)
                seen[path] = response.status == 200
        expected = {path: skips and durable_writes is False for path, _, skips in OPERATIONS}
        answered_first = {what for path, what, _ in OPERATIONS if seen[path]}
        assert seen == expected, f"answered before the flush: {sorted(answered_first)}"


@pytest.mark.parametrize(
    ("late", "skips"), [("/write-after", True), ("/switch-after", False)], ids=["keeps-user_id", "changes-user_id"]
)
async def test_a_merged_save_skips_the_flush_only_if_it_keeps_the_user_id(
    aiohttp_client: Callable[..., Awaitable[TestClient]], ghost_url: str, late: str, skips: bool
) -> None:
    """A save that lost the race (another request saved the session after it loaded) is merged
    into the newer data: the same rule decides whether it waits for the flush, judged against
    the data it merges into. With durable_writes=False, keeping the user_id skips the flush; a
    change of the user_id (ends the session's tie to its user) waits, and so is a 503 here."""
    async with asyncpg.create_pool(ghost_url, min_size=2, max_size=4) as pool:
        client = await library_app(aiohttp_client, pool, durable_writes=False)
        cookie = await started(client)
        header = {"Cookie": f"session={cookie}"}
        seen_sql = "SELECT last_seen_at FROM sessions WHERE id_hash = $1"
        row = id_hash_of(cookie.split(".")[0])
        async with flushes_never_confirmed(ghost_url):
            before = await pool.fetchval(seen_sql, row)
            slow = asyncio.ensure_future(client.post(f"{late}?seconds=1", headers=header))
            for _ in range(100):  # its load touches the row (touch_interval 0): it has loaded
                if await pool.fetchval(seen_sql, row) != before:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the slow request never loaded its session")
            assert (await client.post("/write", headers=header)).status == 200  # saves first
            assert (await slow).status == (200 if skips else 503)
        data = await (await client.get("/read", headers=header)).json()
        assert data["count"] == 1  # the other request's change is kept either way


async def test_skipping_the_flush_is_this_transaction_only(
    aiohttp_client: Callable[..., Awaitable[TestClient]], ghost_url: str
) -> None:
    # set_config(..., true) ends with the statement's transaction: the pooled connection's next
    # transaction commits as the server says, whoever runs it.
    async with asyncpg.create_pool(ghost_url, min_size=1, max_size=1) as pool:
        client = await library_app(aiohttp_client, pool, durable_writes=False)
        await started(client)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
            async with flushes_never_confirmed(ghost_url):
                with pytest.raises(TimeoutError):
                    await conn.execute("CREATE TABLE other_work (n int)", timeout=TIMEOUT)
