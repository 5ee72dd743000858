"""Connections that die silently: a NAT or load balancer forgets the app's pooled connections
(no FIN, no RST: node-postgres#2112) while the database stays up. Before, page loads waited on
the dead connections until DATABASE_TIMEOUT and answered 503 (5 of 12 in a row, 10 of 10 in a
burst), and every request queued behind them timed out too.

The database is a PostgreSQL of the test's own in a network namespace of its own
(support/netns.py), reached over a veth pair; an nftables rule there drops every packet of the
connections open at that moment, both ways, while new connections pass. Both kernels see the
drop, so this shows what keepalive probes and retransmissions really find (a user-space proxy
that stopped forwarding would answer the probes itself).

- Connections that died since their last use: a read on one fails at TCP_USER_TIMEOUT (a third
  of DATABASE_TIMEOUT by default) and runs again on a new connection, the pool's other
  connections expired: no page load and no request of a burst answers 503.
- Connections that died while idle: TCP keepalive (lowered here to 1 s + 1 s) has the kernel
  close them before any request uses one, and the pool opens new ones: page loads, a burst,
  a login and a logout all succeed, and no request had to read again.

That a write is never sent twice is tests/library/test_library_dead_connections.py's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from support import netns
from support.demo import AppLog, add_user, login, make_settings, session_cookie
from support.netns import NetnsPostgres
from support.postgres import eventually

from app import schema
from app.appkeys import POOL, STORAGE

MakeClient = Callable[..., Awaitable[TestClient]]
PASSWORD = "correct horse"
POOL_SIZE = 5
RETRIED = "reading again on a new connection"


@pytest.fixture(scope="module")
def netns_postgres() -> Iterator[NetnsPostgres]:
    with netns.started() as server:
        asyncio.run(server.create_database())
        schema.upgrade(server.url())
        yield server


@pytest.fixture
async def url(netns_postgres: NetnsPostgres) -> str:
    """The app's database, a user in it, every packet passing."""
    netns_postgres.heal()
    conn = await netns_postgres.admin("app")
    try:
        await conn.execute("TRUNCATE users, sessions RESTART IDENTITY CASCADE")
        await add_user(conn, "alice", PASSWORD)
    finally:
        await conn.close()
    return netns_postgres.url()


@pytest.fixture
def network(netns_postgres: NetnsPostgres) -> Iterator[NetnsPostgres]:
    """The path to the database, healed at the end: listed after make_client, so before the
    app's shutdown, which closes the pool (a black-holed connection would hold that up)."""
    yield netns_postgres
    netns_postgres.heal()


async def signed_in(make_client: MakeClient, url: str, **settings: object) -> TestClient:
    client = await make_client(make_settings(url, database_pool_max=POOL_SIZE, **settings))
    await login(client, "alice", PASSWORD)
    assert session_cookie(client) is not None
    return client


async def fill_pool(client: TestClient) -> asyncpg.Pool:
    """Every connection of the pool opened and used (pages served from the cache use none)."""
    storage = client.app[STORAGE]

    async def use() -> None:
        async with storage.connection() as conn:
            await conn.execute("SELECT pg_sleep(0.05)")

    await asyncio.gather(*(use() for _ in range(POOL_SIZE)))
    pool = client.app[POOL]
    assert pool.get_size() == POOL_SIZE
    return pool


async def loads_in_a_row_and_at_once(
    client: TestClient, network: NetnsPostgres, found: Callable[[asyncpg.Pool], Awaitable[None]]
) -> tuple[list[int], list[int]]:
    """The statuses of 12 page loads in a row, then of 10 at once, each series begun with every
    connection of the pool black-holed and what `found` waits for."""
    pool = await fill_pool(client)
    network.black_hole()
    await found(pool)
    in_a_row = []
    for _ in range(12):
        page = await asyncio.wait_for(client.get("/", allow_redirects=False), timeout=30)
        assert "Traceback" not in await page.text()
        in_a_row.append(page.status)
    pool = await fill_pool(client)
    network.black_hole()
    await found(pool)
    at_once = await asyncio.wait_for(
        asyncio.gather(*(client.get("/", allow_redirects=False) for _ in range(10))), timeout=30
    )
    return in_a_row, [r.status for r in at_once]


@pytest.mark.parametrize("cache", [False, True], ids=["cache-off", "cache-on"])
async def test_a_read_on_a_connection_that_died_since_its_last_use_is_read_again(
    url: str, make_client: MakeClient, network: NetnsPostgres, app_log: AppLog, cache: bool
) -> None:
    # Keepalive far off: only a statement can find the connections dead here.
    client = await signed_in(make_client, url, cache=cache, database_keepalive_idle=600)
    storage = client.app[STORAGE]

    async def nothing_yet(pool: asyncpg.Pool) -> None:
        if cache:  # the listener's connection is black-holed too: its health check turns the cache off
            await eventually(lambda: _disabled(storage), 10, "the cache's listener never noticed")

    in_a_row, at_once = await loads_in_a_row_and_at_once(client, network, nothing_yet)
    assert (in_a_row, at_once) == ([200] * 12, [200] * 10)
    assert any(RETRIED in line for line in app_log.lines("aiohttp_session_postgres"))

    # The pool's dead connections were replaced: writes work too.
    out = await client.post("/logout", allow_redirects=False)
    assert out.status == 303
    assert (await client.get("/", allow_redirects=False)).status == 303  # signed out


async def test_connections_that_died_while_idle_are_replaced_before_a_request_waits(
    url: str, make_client: MakeClient, network: NetnsPostgres, app_log: AppLog
) -> None:
    client = await signed_in(make_client, url, cache=False, database_keepalive_idle=1, database_keepalive_interval=1)

    async def found_by_the_kernel(pool: asyncpg.Pool) -> None:
        # The kernel probes each idle connection after 1 s, finds no answer 1 s later and closes
        # it; asyncpg drops it from the pool (which opens one again: its floor is one connection).
        await eventually(lambda: _at_most(pool, 1), 10, "the dead connections were never found")

    in_a_row, at_once = await loads_in_a_row_and_at_once(client, network, found_by_the_kernel)
    assert (in_a_row, at_once) == ([200] * 12, [200] * 10)
    assert (await client.post("/logout", allow_redirects=False)).status == 303
    await login(client, "alice", PASSWORD)
    assert (await client.get("/", allow_redirects=False)).status == 200
    # Found before any request waited on them: nothing was read again.
    assert not any(RETRIED in line for line in app_log.lines("aiohttp_session_postgres"))


async def _disabled(storage: object) -> bool:
    return not storage.cache.enabled  # type: ignore[attr-defined]


async def _at_most(pool: asyncpg.Pool, size: int) -> bool:
    return pool.get_size() <= size
