"""A revocation made by the demo's CLI (`python -m app sessions revoke`, `user delete`), another
process, reaches the hooks of a process serving that user, over the database's events channel:
what an app needs to close that user's websockets."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp_session_postgres
import asyncpg
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import PostgresStorage, SessionEvent, new_session
from aiohttp_session_postgres.tokens import fingerprint_of, id_hash_of
from support.demo import add_user, run_app_command
from support.keys import AUTH_KEY, ENC_KEY

WAIT = 10.0


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with asyncpg.create_pool(db_url, min_size=1, max_size=2) as pool:
        yield pool


async def test_the_clis_revocations_reach_another_processs_hooks(
    aiohttp_client: Callable[..., Awaitable[TestClient]], pool: asyncpg.Pool, db_url: str, pg: asyncpg.Connection
) -> None:
    alice = await add_user(pg, "alice", "correct horse")
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY])
    received: asyncio.Queue[SessionEvent] = asyncio.Queue()

    async def hook(event: SessionEvent) -> None:
        if not event.local:
            await received.put(event)

    storage.on_event.append(hook)
    app = web.Application()
    aiohttp_session_postgres.setup(app, storage)
    app.cleanup_ctx.append(storage.event_listener(lambda: asyncpg.connect(db_url)))

    async def login(request: web.Request) -> web.Response:
        (await new_session(request))["user_id"] = alice
        return web.Response()

    app.router.add_post("/login", login)
    client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
    for _ in range(200):
        if storage._hooks.listening:
            break
        await asyncio.sleep(0.05)

    def fp(response: object) -> str:
        cookie = response.cookies["session"].value  # type: ignore[attr-defined]
        return fingerprint_of(id_hash_of(cookie.split(".")[0]))

    first, second = fp(await client.post("/login")), fp(await client.post("/login"))
    status, _, err = await run_app_command("sessions", "revoke", "alice", "--all", database_url=db_url)
    assert status == 0, err
    got = [await asyncio.wait_for(received.get(), WAIT) for _ in range(2)]
    assert sorted(got, key=lambda e: e.fingerprint) == sorted(
        [SessionEvent("revoked", f, alice, "operator", local=False) for f in (first, second)],
        key=lambda e: e.fingerprint,
    )

    third = fp(await client.post("/login"))
    status, _, err = await run_app_command("user", "delete", "alice", database_url=db_url)
    assert status == 0, err
    event = await asyncio.wait_for(received.get(), WAIT)
    assert event == SessionEvent("revoked", third, alice, "user_deleted", local=False)
