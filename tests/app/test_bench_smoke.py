"""Every variant of the benchmark starts, as the harness starts it (bench/harness.py: its
processes, commands and environment, the shipped `python -m app serve` included), signs a user in
as the harness does, and greets that user on the path the benchmark measures.

No timing here: bench/ is the judge of speed. This only keeps the harness from rotting silently
while the app changes under it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import aiohttp
import pytest

from bench import pgdb
from bench.harness import ROUTER_HEADERS, SHIPPED, Server, waits_for_cache
from bench.server import DB_VARIANTS, VARIANTS, WHOLE_APP

REDIS = ("127.0.0.1", 6379)
PREFIX = f"bench_smoke_{os.getpid()}"


def redis_problem() -> str | None:
    try:
        import redis  # noqa: F401
    except ImportError:
        return "the redis package is not installed (python3 dev.py bench installs bench/requirements.txt)"
    try:
        socket.create_connection(REDIS, timeout=1).close()
    except OSError as exc:
        return f"no Redis reachable at {REDIS[0]}:{REDIS[1]} ({exc})"
    return None


async def _delete_redis_keys() -> None:
    from redis import asyncio as aioredis

    client = aioredis.from_url(f"redis://{REDIS[0]}:{REDIS[1]}")
    try:
        keys = [k async for k in client.scan_iter(match=f"{PREFIX}_*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.parametrize("variant", [*VARIANTS, *SHIPPED])
async def test_variant_starts_and_greets(variant: str, db_url: str, tmp_path: Path) -> None:
    if "redis" in variant and (problem := redis_problem()):
        if os.environ.get("CI") == "true":
            pytest.fail(f"RedisStorage variant cannot run in CI: {problem}")
        pytest.skip(problem)
    needs_db = variant in DB_VARIANTS or variant in SHIPPED
    if needs_db:
        await pgdb.add_users(db_url, 1)
    whole = variant in WHOLE_APP or variant in SHIPPED
    path = "/" if whole else "/bench/hello"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), headers=ROUTER_HEADERS) as http:
        server = Server(variant, f"smoke-{variant}", tmp_path, database_url=db_url if needs_db else None)
        server.redis_prefix = PREFIX if "redis" in variant else None
        await server.start(http, wait_cache=waits_for_cache(variant))  # as the benchmark starts it
        try:
            cookies = [] if variant in ("none", "db", "app-db") else await server.login(http, [1])
            headers = {"Cookie": cookies[0]} if cookies else {}
            async with http.get(server.url(path), headers=headers, allow_redirects=False) as response:
                text = await response.text()
            assert response.status == 200, text
            greeting = "Hello bench" if variant in ("none", "db") else "Hello user-1"
            assert greeting in text, text
        finally:
            await server.stop()
            if "redis" in variant:
                await _delete_redis_keys()
