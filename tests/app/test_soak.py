"""A bounded soak: mixed traffic from several clients against two server processes on one
database, with the sweeper running every second and short idle timeouts, then an audit.

Clients log in, read, open the sessions page, end their other sessions, log out, and walk away
from sessions (which expire and are swept). At the end: every session the clients believe live is
greeted by both processes, every ended or expired one is refused and its row is gone, and the
processes' memory and database connections are where they were after the warm-up.

SOAK_SECONDS (default 60) sets the length.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import asyncpg
import pytest
from support.demo import add_user
from support.postgres import connections, database_name
from support.servers import Server, Servers, home, row_exists
from support.traffic import Mix, Traffic

PASSWORD = "correct horse"
USERS = {f"soak{n}": PASSWORD for n in range(6)}
SECONDS = float(os.environ.get("SOAK_SECONDS", "60"))
WARM_UP = 10.0
POOL_MAX = 3
IDLE = 8  # seconds: abandoned sessions expire and are swept several times over
# "Flat", as the benchmark's long run measures it: under 5 MB of growth after the warm-up.
RSS_GROWTH_LIMIT_KB = 5 * 1024


@pytest.fixture
def url(create_database: Callable[..., str]) -> str:
    return create_database()


@pytest.mark.slow
@pytest.mark.parametrize("cache", ["on", "off"], ids=["cache-on", "cache-off"])
async def test_a_soak_of_mixed_traffic_loses_nothing_and_stays_flat(url: str, servers: Servers, cache: str) -> None:
    name = database_name(url)
    conn = await asyncpg.connect(url)
    try:
        for username, password in USERS.items():
            await add_user(conn, username, password)
        env = {
            "SWEEP_INTERVAL": "1",
            "SESSION_IDLE_TIMEOUT": str(IDLE),
            "SESSION_TOUCH_INTERVAL": "1",
            "SESSION_ABSOLUTE_TIMEOUT": "3600",
            "DATABASE_POOL_MAX": str(POOL_MAX),
            "LOG_LEVEL": "INFO",
            "SESSION_CACHE": cache,
        }
        fleet = await asyncio.gather(servers.start(url, **env), servers.start(url, **env))
        mix = Mix(read=30, page=4, login=4, logout=3, revoke=2, abandon=2, pause=0.02, max_live=3)
        async with Traffic(fleet, USERS, mix) as traffic:
            traffic.start()
            await asyncio.sleep(WARM_UP)
            rss_start = [server.rss_kb() for server in fleet]
            connections_start = await connections(conn, name)
            most_connections = connections_start
            ends_at = time.monotonic() + max(SECONDS - WARM_UP, 5)
            while time.monotonic() < ends_at:
                await asyncio.sleep(1)
                most_connections = max(most_connections, await connections(conn, name))
            await traffic.stop()
            rss_end = [server.rss_kb() for server in fleet]
            connections_end = await connections(conn, name)

            ledger = traffic.ledger
            audit = await traffic.audit()
            for cookie in ledger.live:
                assert await row_exists(conn, cookie)
            for cookie in ledger.ended:
                assert not await row_exists(conn, cookie), "an ended session's row is still there"
            # Sessions walked away from expired, and the sweepers removed them; none is served.
            await asyncio.sleep(IDLE + 2.5)
            expired = [c for c in ledger.abandoned if await row_exists(conn, c)]
            assert not expired, f"{len(expired)} expired sessions were not swept"
            for cookie in list(ledger.abandoned)[:50]:
                assert (await home(traffic.http, fleet[0].url, cookie))[0] == 303

        outcomes = ledger.outcomes()
        requests = len(ledger.samples)
        assert all(server.alive for server in fleet)
        assert not ledger.violations, ledger.violations[:10]
        assert set(outcomes) <= {200, 303, 503}, outcomes
        assert outcomes[503] == 0, f"503s without any fault: {outcomes}"
        assert audit.lost == 0
        assert audit.ended > 0
        assert ledger.abandoned
        growth = [end - start for start, end in zip(rss_start, rss_end, strict=True)]
        assert max(growth) < RSS_GROWTH_LIMIT_KB, f"memory grew by {growth} kB"
        # Each process: its pool, and its session cache's listener.
        per_process = POOL_MAX + (cache == "on")
        assert most_connections <= 2 * per_process, most_connections
        assert connections_end <= 2 * per_process
        assert sum("sweep removed" in line and "removed 0 " not in line for line in _lines(fleet)) > 0
        print(
            f"\nsoak, cache {cache}: {SECONDS:.0f} s, 2 processes, {len(USERS)} clients: {requests} requests, "
            f"by status {dict(sorted(outcomes.items(), key=str))}; {audit}; "
            f"{len(ledger.abandoned)} expired and swept; RSS kB start {rss_start} end {rss_end}; "
            f"connections start {connections_start} end {connections_end} most {most_connections} "
            f"(pool max {POOL_MAX} + listener, x 2); {ledger.stale_summary()}"
        )
    finally:
        await conn.close()


def _lines(fleet: list[Server]) -> list[str]:
    return [line for server in fleet for line in server.log().splitlines()]
