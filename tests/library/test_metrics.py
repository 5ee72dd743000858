"""The storage's Prometheus metrics (`PrometheusMetrics`, the [metrics] extra): each counter moves
by what the requests did, the gauges by the sampler, and nothing is counted without it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import PostgresStorage, PrometheusMetrics, SessionCache
from aiohttp_session_postgres.tokens import id_hash_of
from prometheus_client import CollectorRegistry
from support.keys import AUTH_KEY, ENC_KEY
from support.library_app import STORAGE, library_app, read, started, with_cookie

NAME = "aiohttp_session"


@pytest.fixture
async def pool(lib_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=2) as pool:
        yield pool


class Values:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def __call__(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(f"{NAME}_{name}", labels) or 0.0


def metered() -> tuple[PrometheusMetrics, Values]:
    registry = CollectorRegistry()
    return PrometheusMetrics(registry=registry), Values(registry)


async def test_the_counters_count_what_the_requests_did(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str
) -> None:
    metrics, value = metered()
    client = await library_app(
        aiohttp_client, pool, metrics=metrics, cache=SessionCache(), listen_dsn=lib_url, touch_interval=60
    )
    cookie = await started(client)
    assert value("events_total", event="created", reason="") == 1
    for _ in range(3):
        assert await read(client, cookie) == {"user_id": 1}
    assert value("loads_total", outcome="cache_hit") == 3  # the login's write cached it
    assert value("loads_total", outcome="database") == 0
    client.app[STORAGE].cache._entries.clear()  # type: ignore[union-attr]  # forget: the next read asks
    assert await read(client, cookie) == {"user_id": 1}
    assert value("loads_total", outcome="database") == 1
    bad = cookie.split(".")[0] + "." + "A" * 43
    assert await read(client, bad) == {}
    assert value("loads_total", outcome="bad_signature") == 1
    assert (await client.post("/logout", headers=with_cookie(cookie))).status == 200
    assert value("events_total", event="ended", reason="logout") == 1
    assert await read(client, cookie) == {}
    assert await read(client, cookie) == {}  # known dead: a load all the same, no second event
    assert value("loads_total", outcome="unknown") == 2
    assert value("events_total", event="expired", reason="found_at_load") == 1
    renewed = await started(client)
    await client.post("/renew", headers=with_cookie(renewed))
    assert value("events_total", event="renewed", reason="") == 1
    await started(client)
    assert (await client.post("/end-all")).status == 200
    assert value("events_total", event="revoked", reason="end_all_sessions") == 2


async def test_a_reason_of_the_apps_own_is_one_label(pool: asyncpg.Pool) -> None:
    metrics, value = metered()
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], metrics=metrics)
    await pool.execute(
        "INSERT INTO sessions (id_hash, user_id, data, idle_expires_at, absolute_expires_at)"
        " VALUES ($1, 5, '\\x00', now() + interval '1 hour', now() + interval '1 hour')",
        id_hash_of("x"),
    )
    assert await storage.end_all_sessions(5, reason="suspicious login from 10.0.0.1") == 1
    assert value("events_total", event="revoked", reason="other") == 1


async def test_503s_are_counted_by_cause_and_pool_waits_with_their_time(
    aiohttp_client: Callable[..., Awaitable[TestClient]], lib_url: str
) -> None:
    metrics, value = metered()
    async with asyncpg.create_pool(lib_url, min_size=1, max_size=1) as one:
        client = await library_app(aiohttp_client, one, metrics=metrics, database_timeout=0.5)
        storage = client.app[STORAGE]
        cookie = await started(client)
        # Every connection busy: the request waits its turn (counted), then is served.
        async with storage.connection():
            reading = asyncio.ensure_future(read(client, cookie))
            for _ in range(100):
                if storage._rows._fair._turns._waiters:  # the request is queued for the connection
                    break
                await asyncio.sleep(0.01)
        assert await reading == {"user_id": 1}
        assert value("pool_waits_total") == 1
        assert value("pool_wait_seconds_total") > 0
        # The table locked: the read times out, a 503 counted as a timeout.
        conn = await asyncpg.connect(lib_url)
        try:
            async with conn.transaction():
                await conn.execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
                response = await client.get("/read", headers=with_cookie(cookie))
                assert response.status == 503
        finally:
            await conn.close()
        assert value("unavailable_total", cause="timeout") == 1
        # The table gone (a schema the code does not expect): counted as such.
        await one.execute("ALTER TABLE sessions RENAME TO sessions_away")
        try:
            response = await client.get("/read", headers=with_cookie(cookie))
            assert response.status == 503
        finally:
            await one.execute("ALTER TABLE sessions_away RENAME TO sessions")
        assert value("unavailable_total", cause="schema") == 1


async def test_sweeps_and_the_sampled_gauges(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str
) -> None:
    metrics, value = metered()
    client = await library_app(aiohttp_client, pool, metrics=metrics, cache=SessionCache(), listen_dsn=lib_url)
    storage = client.app[STORAGE]
    for _ in range(3):
        await started(client)
    await pool.execute(
        "UPDATE sessions SET idle_expires_at = now() - interval '1 hour',"
        " absolute_expires_at = now() - interval '1 hour' WHERE id_hash = (SELECT id_hash FROM sessions LIMIT 1)"
    )
    assert await storage.sweep() == 1
    assert value("swept_rows_total") == 1
    assert value("sweep_seconds_count") == 1
    # The sampler's first sample, as the app starts.
    app = web.Application()
    app.cleanup_ctx.append(storage.metrics_sampler(interval=3600))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        for _ in range(200):
            if value("live") == 2:
                break
            await asyncio.sleep(0.01)
        assert value("live") == 2
        assert value("cache_enabled") == 1
        assert value("cache_entries") == 3  # the logins' sessions: the swept one's entry, dead, until asked
        assert value("cache_bytes") > 0
    finally:
        await runner.cleanup()


async def test_a_lost_listener_is_counted(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, lib_url: str
) -> None:
    metrics, value = metered()
    storage = PostgresStorage(
        pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], metrics=metrics, cache=SessionCache()
    )
    tries = 0

    async def refused() -> asyncpg.Connection:
        nonlocal tries
        tries += 1
        raise ConnectionRefusedError("no listener today")

    app = web.Application()
    app.cleanup_ctx.append(storage.cache_listener(refused))
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        for _ in range(200):
            if value("listener_lost_total", listener="cache") >= 1:
                break
            await asyncio.sleep(0.01)
        assert value("listener_lost_total", listener="cache") == tries >= 1
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await runner.cleanup()


async def test_a_second_set_in_one_registry_is_refused() -> None:
    registry = CollectorRegistry()
    PrometheusMetrics(registry=registry)
    with pytest.raises(ValueError, match=r"^the session metrics \(aiohttp_session_\*\) are already in this registry"):
        PrometheusMetrics(registry=registry)
    PrometheusMetrics(registry=registry, namespace="second_storage")  # as the message says


async def test_the_sampler_needs_metrics(pool: asyncpg.Pool) -> None:
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])
    with pytest.raises(ValueError, match="without metrics"):
        storage.metrics_sampler()


async def test_metrics_and_hook_timeout_of_the_wrong_kind_are_refused(pool: asyncpg.Pool) -> None:
    from aiohttp_session_postgres import ArgumentError

    keys = {"authentication_keys": [AUTH_KEY], "encryption_keys": [ENC_KEY]}
    with pytest.raises(TypeError, match="metrics must be a StorageMetrics") as raised:
        PostgresStorage(pool, **keys, metrics=CollectorRegistry())  # type: ignore[arg-type]
    assert raised.value.argument == "metrics"  # type: ignore[attr-defined]
    with pytest.raises(ArgumentError, match="hook_timeout must be positive"):
        PostgresStorage(pool, **keys, hook_timeout=0)
    with pytest.raises(TypeError, match="hook_timeout"):
        PostgresStorage(pool, **keys, hook_timeout="10")  # type: ignore[arg-type]
