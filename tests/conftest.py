"""Fixtures of every test, with nothing of the demo app: a real PostgreSQL, empty databases of
the suite's own, the library's table alone, the library's log lines, and the library built and
installed as others install it. The demo app's fixtures (its migrated database, settings,
clients, users) are in tests/app/conftest.py; the helpers of both, in tests/support.

The server is the one TEST_DATABASE_URL or DATABASE_URL points at, else an embedded one started
for this run. The suite creates its own databases on it (never touching the one in the URL) and
drops them at the end.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from aiohttp_session_postgres import create_schema
from support import citus
from support.logs import LOGGER, LibraryLog
from support.paths import REPO_ROOT
from support.postgres import admin, database_url, drop_stale, new_database_name, start_embedded


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
def create_empty_database(server_url: str) -> Iterator[Callable[[], str]]:
    """Make an empty database of our own on the server (no tables at all); dropped at the end."""
    asyncio.run(drop_stale(server_url))
    made: list[str] = []

    def create() -> str:
        name = new_database_name()
        asyncio.run(admin(server_url, f'CREATE DATABASE "{name}"'))
        made.append(name)
        return database_url(server_url, name)

    yield create
    for name in made:
        asyncio.run(admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def empty_url(create_empty_database: Callable[[], str]) -> str:
    """A new, empty database of the test's own (no tables at all)."""
    return create_empty_database()


# -- the library alone (tests/support/library_app.py) ---------------------------------------------


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


@pytest.fixture
def lib_log() -> Iterator[LibraryLog]:
    """The library's log lines at DEBUG (logger aiohttp_session_postgres), while the test runs."""
    log = LibraryLog()
    logger = logging.getLogger(LOGGER)
    level = logger.level
    logger.addHandler(log.handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield log
    finally:
        logger.removeHandler(log.handler)
        logger.setLevel(level)


# -- a Citus cluster (support/citus.py) -------------------------------------------------------------


@pytest.fixture(scope="session")
def citus_cluster() -> Iterator[citus.CitusCluster]:
    """A coordinator and two workers, built from ../shared/citus the first time (cached outside
    the checkout), for the whole run. Without the source or a compiler the tests that need it
    skip, saying why in one line; under CI (CI=true) they fail instead."""
    reason = citus.unavailable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    with citus.CitusCluster.start() as cluster:
        yield cluster


@pytest.fixture
def citus_url(citus_cluster: citus.CitusCluster) -> Iterator[str]:
    """A new database on the cluster, the citus extension in it on every node: its coordinator's URL."""
    url = citus_cluster.create_database()
    yield url
    citus_cluster.drop_database(url.rsplit("/", 1)[1])


# -- the library as installed by others (support/library_envs.py) ----------------------------------

_INSTALLING_FIXTURES = {"library_wheel", "wheel_python", "extras_python", "lowest_python", "checkout_python"}


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
def extras_python(tmp_path_factory: pytest.TempPathFactory, library_wheel: Path) -> Path:
    """The wheel with its `[security]` and `[metrics]` extras (aiohttp-security and
    prometheus-client from the package index), in a fresh virtual environment."""
    from support.library_envs import fresh_venv

    return fresh_venv(tmp_path_factory.mktemp("venv-extras") / "venv", f"{library_wheel}[security,metrics]")


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
