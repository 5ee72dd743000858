"""The library on connections that die silently (a NAT or load balancer drops them, no FIN or RST),
against a PostgreSQL of the test's own in a network namespace whose nftables rule black-holes the
connections open at a given moment (support/netns.py), with `tcp_keepalive` on the pool:

- a read whose connection died is run once more on a new connection, and only once;
- a write whose connection died after it was sent (the server committed it, its answer was lost)
  is never sent again: 503, and the row changed exactly once;
- `tcp_keepalive` sets the options on a TCP connection's socket, and leaves a Unix socket alone.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial

import aiohttp_session
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import PostgresStorage, create_schema, get_session, new_session, tcp_keepalive
from support import netns
from support.keys import AUTH_KEY, ENC_KEY
from support.logs import LOGGER, LibraryLog
from support.netns import NetnsPostgres

USER_TIMEOUT = 0.3  # seconds: well under the storage's deadline, so a read can be run again
DATABASE_TIMEOUT = 1.5
RETRIED = "reading again on a new connection"
LOST = "database connection lost"

Pools = Callable[[int], Awaitable[asyncpg.Pool]]


@pytest.fixture(scope="module")
def netns_postgres() -> Iterator[NetnsPostgres]:
    with netns.started() as server:
        yield server


@pytest.fixture
async def admin(netns_postgres: NetnsPostgres) -> AsyncIterator[asyncpg.Connection]:
    """The table, empty; a connection over the Unix socket, which no black hole reaches."""
    netns_postgres.heal()
    conn = await netns_postgres.admin()
    await conn.execute("DROP TABLE IF EXISTS sessions CASCADE")
    await create_schema(conn)
    yield conn
    await conn.close()


@pytest.fixture
async def pools(netns_postgres: NetnsPostgres, admin: asyncpg.Connection) -> AsyncIterator[Pools]:
    """`await pools(size)`: a pool of `size` connections on the table's database, closed at the
    end (after healing the path: closing a black-holed connection would wait on it)."""
    made: list[asyncpg.Pool] = []

    async def make(size: int) -> asyncpg.Pool:
        # Keepalive far off: only a statement can find a connection dead here.
        init = partial(tcp_keepalive, idle=600, interval=5, user_timeout=USER_TIMEOUT)
        made.append(await asyncpg.create_pool(netns_postgres.url("postgres"), min_size=size, max_size=size, init=init))
        return made[-1]

    yield make
    netns_postgres.heal()
    for pool in made:
        await pool.close()


async def app(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool
) -> tuple[TestClient, asyncio.Event, asyncio.Event]:
    """A library app on `pool` whose /count-later loads the session, says so (`loaded`), waits
    for `go`, then adds one to its count (the save)."""
    storage = PostgresStorage(
        pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], database_timeout=DATABASE_TIMEOUT
    )
    loaded, go = asyncio.Event(), asyncio.Event()
    application = web.Application()
    aiohttp_session.setup(application, storage)

    async def start(request: web.Request) -> web.Response:
        (await new_session(request))["count"] = 0
        return web.Response(text="started")

    async def read(request: web.Request) -> web.Response:
        return web.json_response(dict(await get_session(request)))

    async def count_later(request: web.Request) -> web.Response:
        session = await get_session(request)
        loaded.set()
        await go.wait()
        session["count"] += 1
        return web.Response(text="counted")

    application.router.add_post("/start", start)
    application.router.add_get("/read", read)
    application.router.add_post("/count-later", count_later)
    return await aiohttp_client(application), loaded, go


async def test_a_read_is_run_once_more_on_a_new_connection_and_only_once(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    pools: Pools,
    netns_postgres: NetnsPostgres,
    lib_log: LibraryLog,
) -> None:
    client, _, _ = await app(aiohttp_client, await pools(2))
    assert (await client.post("/start")).status == 200
    await asyncio.gather(*(client.get("/read") for _ in range(2)))  # both connections open

    netns_postgres.black_hole()  # both pooled connections die; new ones pass
    for _ in range(3):
        response = await client.get("/read")
        assert response.status == 200, await response.text()
        assert await response.json() == {"count": 0}
    assert retries(lib_log) == 1  # the first; it replaced the pool's other dead connection too

    netns_postgres.black_hole(new_connections=False)  # now every connection, new ones too
    response = await client.get("/read")
    assert response.status == 503  # once more, on a new connection that never came: no loop
    assert retries(lib_log) == 2


async def test_a_write_whose_answer_was_lost_is_not_sent_again(
    aiohttp_client: Callable[..., Awaitable[TestClient]],
    pools: Pools,
    netns_postgres: NetnsPostgres,
    admin: asyncpg.Connection,
    lib_log: LibraryLog,
) -> None:
    # One connection, on which the save's statement is prepared by a first count: the second's is
    # then executed at once (not prepared first, which would lose its answer before anything ran).
    client, loaded, go = await app(aiohttp_client, await pools(1))
    assert (await client.post("/start")).status == 200
    go.set()
    assert (await client.post("/count-later")).status == 200
    loaded.clear()
    go.clear()
    before = await admin.fetchval("SELECT version FROM sessions")

    counting = asyncio.create_task(client.post("/count-later"))
    await loaded.wait()  # the session is read; the save comes next, on a pooled connection
    netns_postgres.black_hole(answers_only=True)  # the server gets it and commits; its answer is lost
    go.set()
    response = await asyncio.wait_for(counting, timeout=30)

    # The storage cannot know whether the write committed: 503, never a second try (which, the
    # row's version having moved, would merge this count in again).
    assert response.status == 503
    assert LOST in "\n".join(lib_log.lines(LOGGER))
    assert retries(lib_log) == 0
    assert await admin.fetchval("SELECT version FROM sessions") == before + 1
    netns_postgres.heal()
    read = await client.get("/read")
    assert read.status == 200
    assert await read.json() == {"count": 2}


def retries(log: LibraryLog) -> int:
    return sum(RETRIED in message for message in log.lines(LOGGER))


async def test_tcp_keepalive_sets_the_socket_options(netns_postgres: NetnsPostgres, admin: asyncpg.Connection) -> None:
    conn = await asyncpg.connect(netns_postgres.url("postgres"))
    try:
        assert await tcp_keepalive(conn, idle=7, interval=3, count=4, user_timeout=0.25) is True
        sock = conn._transport.get_extra_info("socket")  # type: ignore[attr-defined]
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 3
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 4
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 250
        with pytest.raises(ValueError, match="at least 1"):
            await tcp_keepalive(conn, idle=0)
        with pytest.raises(ValueError, match="user_timeout"):
            await tcp_keepalive(conn, user_timeout=0)
    finally:
        await conn.close()
    assert await tcp_keepalive(admin) is False  # a Unix socket: no network path to lose
