"""Fixtures of the demo app's tests: the suite's database migrated by the app's migrations (every
table emptied for each test), the app's settings, test clients on the real app, a user, and the
app's own log lines, real server processes and a cookieless HTTP client. The server and the
empty databases come from tests/conftest.py.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from support.demo import AppLog, AppTestServer, add_user, make_settings
from support.servers import Servers, new_http

from app import schema
from app.config import Settings
from app.server import create_app


@pytest.fixture(scope="session")
def create_database(create_empty_database: Callable[[], str]) -> Callable[..., str]:
    """Make a database of our own on the server (migrated unless told not to); dropped at the end."""

    def create(*, migrate: bool = True) -> str:
        url = create_empty_database()
        if migrate:
            schema.upgrade(url)
        return url

    return create


@pytest.fixture(scope="session")
def migrated_url(create_database: Callable[..., str]) -> str:
    return create_database()


@pytest.fixture
async def db_url(migrated_url: str) -> str:
    """The suite's migrated database, with every table emptied."""
    conn = await asyncpg.connect(migrated_url)
    try:
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) AS t FROM pg_tables"
            " WHERE schemaname = 'public' AND tablename <> 'alembic_version'"
        )
        await conn.execute(f"TRUNCATE {', '.join(r['t'] for r in tables)} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()
    return migrated_url


@pytest.fixture
async def pg(db_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A direct connection to the test database, for arranging and asserting."""
    conn = await asyncpg.connect(db_url)
    yield conn
    await conn.close()


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


@pytest.fixture
def make_client(aiohttp_client: Callable[..., Awaitable[TestClient]]) -> Callable[..., Awaitable[TestClient]]:
    """`await make_client(settings)`: a test client on the real app built from those settings,
    served by the app's own runner."""

    async def make(settings: Settings) -> TestClient:
        return await aiohttp_client(AppTestServer(await create_app(settings)))

    return make


@pytest.fixture
async def client(make_client: Callable[..., Awaitable[TestClient]], settings: Settings) -> TestClient:
    return await make_client(settings)


@pytest.fixture
def app_log() -> Iterator[AppLog]:
    """The app's log lines at DEBUG, formatted by the app's own handler, while the test runs."""
    log = AppLog()
    root = logging.getLogger()
    level = root.level
    root.addHandler(log.handler)
    root.setLevel(logging.DEBUG)
    try:
        yield log
    finally:
        root.removeHandler(log.handler)
        root.setLevel(level)


@pytest.fixture
async def user(pg: asyncpg.Connection) -> tuple[str, str]:
    """A user `alice` with a random password: (username, password)."""
    password = secrets.token_urlsafe(12)
    await add_user(pg, "alice", password)
    return "alice", password


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """Real `python -m app serve` processes, started by the test, stopped after it."""
    started = Servers(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps no cookies of its own (support.servers.new_http)."""
    async with new_http() as client:
        yield client
