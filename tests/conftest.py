"""Fixtures: a real PostgreSQL, a freshly migrated database of the suite's own, and the real app.

The server is the one TEST_DATABASE_URL or DATABASE_URL points at, else an embedded one started
for this run. The suite creates its own databases on it (never touching the one in the URL) and
drops them at the end; each test starts on empty tables. The helpers these fixtures use are in
tests/support.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import create_schema
from support.demo import AppLog, AppTestServer, add_user, make_settings
from support.paths import REPO_ROOT
from support.postgres import admin, database_url, drop_stale, new_database_name, start_embedded

from app import schema
from app.config import Settings
from app.server import create_app


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    server = start_embedded()
    try:
        yield server.get_uri()  # type: ignore[attr-defined]
    finally:
        server.cleanup()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def create_database(server_url: str) -> Iterator[Callable[..., str]]:
    """Make a database of our own on the server (migrated unless told not to); dropped at the end."""
    asyncio.run(drop_stale(server_url))
    made: list[str] = []

    def create(*, migrate: bool = True) -> str:
        name = new_database_name()
        asyncio.run(admin(server_url, f'CREATE DATABASE "{name}"'))
        made.append(name)
        url = database_url(server_url, name)
        if migrate:
            schema.upgrade(url)
        return url

    yield create
    for name in made:
        asyncio.run(admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def migrated_url(create_database: Callable[..., str]) -> str:
    return create_database()


@pytest.fixture
def empty_url(create_database: Callable[..., str]) -> str:
    """A new, empty database of the test's own (no tables at all)."""
    return create_database(migrate=False)


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


# -- the library alone (tests/support/library_app.py) ----------------------------------------------


@pytest.fixture
async def lib_url(empty_url: str) -> str:
    """A database with the library's table alone (no users table, no foreign key)."""
    conn = await asyncpg.connect(empty_url)
    try:
        await create_schema(conn)
    finally:
        await conn.close()
    return empty_url


@pytest.fixture
async def lib_pg(lib_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(lib_url)
    yield conn
    await conn.close()


# -- the library as installed by others (support/library_envs.py) ----------------------------------

_INSTALLING_FIXTURES = {"library_wheel", "wheel_python", "lowest_python", "checkout_python"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that build and install the library from the checkout: `-m "not installs"` leaves them
    # out where the checkout is not a whole one (the mutation runs of `dev.py mutants`).
    for item in items:
        if _INSTALLING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.installs)


@pytest.fixture(scope="session")
def library_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from support.library_envs import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def wheel_python(tmp_path_factory: pytest.TempPathFactory, library_wheel: Path) -> Path:
    """The python of a fresh virtual environment with only the library's wheel (and what it
    depends on) installed."""
    from support.library_envs import fresh_venv

    return fresh_venv(tmp_path_factory.mktemp("venv-wheel") / "venv", str(library_wheel))


@pytest.fixture(scope="session")
def lowest_python(tmp_path_factory: pytest.TempPathFactory, library_wheel: Path) -> Path:
    """The wheel with the lowest aiohttp and aiohttp-session it declares it supports."""
    from support.library_envs import fresh_venv

    lowest = ("aiohttp==3.14.0", "aiohttp-session==2.12.0")
    return fresh_venv(tmp_path_factory.mktemp("venv-lowest") / "venv", str(library_wheel), *lowest)


@pytest.fixture(scope="session")
def checkout_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtual environment after `pip install '<checkout>[alembic]'` (and
    SQLAlchemy's asyncio extra, which the other project of test_schema_ways.py uses itself)."""
    from support.library_envs import fresh_venv

    return fresh_venv(tmp_path_factory.mktemp("venv-checkout") / "venv", f"{REPO_ROOT}[alembic]", "sqlalchemy[asyncio]")
