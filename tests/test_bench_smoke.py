"""The benchmark's variant servers (bench/server.py) start and greet a signed-in user.

No timing here: bench/ is the judge of speed. This only keeps the harness from rotting silently
while the app changes under it.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

import asyncpg
import pytest

from bench.server import DB_VARIANTS, VARIANTS, build_app, cache_available
from tests.conftest import add_user

REPO_ROOT = Path(__file__).resolve().parent.parent
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


@pytest.mark.parametrize("variant", list(VARIANTS))
async def test_variant_starts_and_greets(variant, aiohttp_client, db_url, pg: asyncpg.Connection) -> None:
    if variant == "redis" and (problem := redis_problem()):
        if os.environ.get("CI") == "true":
            pytest.fail(f"RedisStorage variant cannot run in CI: {problem}")
        pytest.skip(problem)
    if variant == "pgcache" and not cache_available():
        pytest.skip("this checkout has no session cache (Settings.cache)")
    uid = await add_user(pg, "user-1", "not-checked-by-the-bench")
    app = await build_app(variant, database_url=db_url if variant in DB_VARIANTS else None, redis_prefix=PREFIX)
    client = await aiohttp_client(app)
    try:
        if variant in ("none", "db"):
            response = await client.get("/bench/hello")
            assert response.status == 200
            assert await response.text() == "Hello bench"
            return
        login = await client.get(f"/bench/login?uid={uid}")
        assert login.status == 200, await login.text()
        response = await client.get("/" if variant == "app" else "/bench/hello")  # the client keeps the cookie
        assert response.status == 200, await response.text()
        assert "Hello user-1" in await response.text()
    finally:
        if variant == "redis":
            await _delete_redis_keys()


async def test_server_entry_point_serves() -> None:
    """`python -m bench.server` (what the harness launches) starts and answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.server", "none", "--port", str(port),
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
        assert b'"ready": "none"' in line, line
        for _ in range(50):
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except OSError:
                await asyncio.sleep(0.1)
        writer.write(b"GET /bench/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 200"), answer
        assert answer.endswith(b"Hello bench"), answer
    finally:
        proc.terminate()
        await proc.wait()
