"""The Alembic migrations, run the way an operator runs them: the `alembic` CLI in a subprocess,
with Heroku's `postgres://` DATABASE_URL; and the constraints the schema promises."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp_session_postgres.cipher import DataCipher
from aiohttp_session_postgres.tokens import TokenSigner
from support.demo import add_user, app_env, make_settings
from support.keys import AUTH_KEY, ENC_KEY
from support.paths import REPO_ROOT

from app import schema

# The columns the app's queries rely on; later revisions may add more.
USERS_COLUMNS = {"id": "bigint", "username": "text", "password_hash": "text", "created_at": "timestamp with time zone"}
SESSIONS_COLUMNS = {
    "id_hash": "bytea",
    "user_id": "bigint",
    "data": "bytea",
    "created_at": "timestamp with time zone",
    "last_seen_at": "timestamp with time zone",
    "idle_expires_at": "timestamp with time zone",
    "absolute_expires_at": "timestamp with time zone",
}


def heroku_style(url: str) -> str:
    """`postgres://` as Heroku writes it, for a TCP server; a unix-socket URL is kept as it is."""
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    return urlunsplit(parts._replace(scheme="postgres"))


def alembic(*args: str, database_url: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=REPO_ROOT,
        env=app_env(DATABASE_URL=database_url),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(run())


def tables(url: str) -> set[str]:
    return {r["tablename"] for r in query(url, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}


def columns(url: str, table: str) -> dict[str, tuple[str, bool]]:
    rows = query(
        url,
        "SELECT column_name, data_type, is_nullable FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = $1",
        table,
    )
    return {r["column_name"]: (r["data_type"], r["is_nullable"] == "YES") for r in rows}


def indexes(url: str) -> dict[str, str]:
    rows = query(url, "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'")
    return {r["indexname"]: r["indexdef"] for r in rows}


@pytest.fixture
def fresh_url(create_database: Callable[..., str]) -> str:
    return create_database(migrate=False)


def assert_migrated(url: str) -> None:
    assert {"users", "sessions", "alembic_version"} <= tables(url)

    users = columns(url, "users")
    assert {name: users[name][0] for name in USERS_COLUMNS} == USERS_COLUMNS
    assert not any(nullable for nullable in (users[name][1] for name in USERS_COLUMNS))

    sessions = columns(url, "sessions")
    assert {name: sessions[name][0] for name in SESSIONS_COLUMNS} == SESSIONS_COLUMNS
    # Only user_id may be NULL (an anonymous session).
    assert {name for name in SESSIONS_COLUMNS if sessions[name][1]} == {"user_id"}

    found = indexes(url)
    # Unique by the key and the skeleton the app computes (0007), no longer by lower().
    assert "users_username_lower_key" not in found
    assert "UNIQUE" in found["users_key_unique"]
    assert "(username_key)" in found["users_key_unique"]
    assert "UNIQUE" in found["users_skeleton_unique"]
    assert "(username_skeleton)" in found["users_skeleton_unique"]
    assert "(idle_expires_at)" in found["sessions_idle_expires_at_idx"]
    assert "(user_id)" in found["sessions_user_id_idx"]
    assert "(principal)" in found["sessions_principal_idx"]  # the library's schema version 2 (0008)
    assert "sessions_pkey" in found

    versions = [r["version_num"] for r in query(url, "SELECT version_num FROM alembic_version")]
    assert versions == [schema.HEAD_REVISION]


def test_alembic_cli_upgrade_downgrade_upgrade(fresh_url: str) -> None:
    assert tables(fresh_url) == set()
    url = heroku_style(fresh_url)

    up = alembic("upgrade", "head", database_url=url)
    assert up.returncode == 0, up.stderr
    assert_migrated(fresh_url)

    down = alembic("downgrade", "base", database_url=url)
    assert down.returncode == 0, down.stderr
    # Every table of ours is gone; only Alembic's (now empty) bookkeeping remains.
    assert tables(fresh_url) == {"alembic_version"}
    assert query(fresh_url, "SELECT version_num FROM alembic_version") == []

    again = alembic("upgrade", "head", database_url=url)
    assert again.returncode == 0, again.stderr
    assert_migrated(fresh_url)

    current = alembic("current", database_url=url)
    assert current.returncode == 0, current.stderr
    assert schema.HEAD_REVISION in current.stdout


def test_upgrade_head_is_idempotent(fresh_url: str) -> None:
    assert alembic("upgrade", "head", database_url=fresh_url).returncode == 0
    second = alembic("upgrade", "head", database_url=fresh_url)
    assert second.returncode == 0, second.stderr
    assert_migrated(fresh_url)


def test_app_schema_check_agrees_with_cli_migration(fresh_url: str) -> None:
    async def check() -> None:
        conn = await asyncpg.connect(fresh_url)
        try:
            await schema.check(conn)
        finally:
            await conn.close()

    with pytest.raises(schema.SchemaOutOfDate, match="alembic upgrade head"):
        asyncio.run(check())
    assert alembic("upgrade", "head", database_url=fresh_url).returncode == 0
    asyncio.run(check())


def test_offline_sql_needs_no_database() -> None:
    result = alembic("upgrade", "head", "--sql", database_url=None)
    assert result.returncode == 0, result.stderr
    sql = result.stdout
    assert "CREATE TABLE users" in sql
    assert "CREATE TABLE sessions" in sql
    assert "CREATE UNIQUE INDEX users_username_lower_key" in sql
    # The last statement before COMMIT records the head revision (INSERT, or UPDATE after 0001).
    last = sql.rstrip().removesuffix("COMMIT;").rstrip().rsplit(";", 2)[-2]
    assert "alembic_version" in last
    assert f"'{schema.HEAD_REVISION}'" in last
    assert sql.rstrip().endswith("COMMIT;")


def test_online_migration_without_database_url_says_so() -> None:
    result = alembic("upgrade", "head", database_url=None)
    assert result.returncode != 0
    assert "DATABASE_URL is not set" in result.stderr


async def test_username_key_and_skeleton_are_unique(pg: asyncpg.Connection) -> None:
    insert = "INSERT INTO users (username, username_key, username_skeleton, password_hash) VALUES ($1, $2, $3, 'x')"
    await pg.execute(insert, "Bob", "bob", "bob")
    with pytest.raises(asyncpg.UniqueViolationError, match="users_key_unique"):
        await pg.execute(insert, "BOB", "bob", "bob")
    with pytest.raises(asyncpg.UniqueViolationError, match="users_skeleton_unique"):
        await pg.execute(insert, "b\u043eb", "b\u043eb", "bob")  # a Cyrillic o
    # Accounts from before 0007 that collide keep their rows: without a key or a skeleton.
    await pg.execute(insert, "bob", None, None)
    await pg.execute(insert, "bobby", "bobby", "bobby")
    assert await pg.fetchval("SELECT count(*) FROM users") == 3


@pytest.mark.parametrize("username", ["", "x" * 65])
async def test_username_length_is_checked_by_the_table(pg: asyncpg.Connection, username: str) -> None:
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute("INSERT INTO users (username, password_hash) VALUES ($1, 'x')", username)


async def insert_session(pg: asyncpg.Connection, user_id: int | None) -> bytes:
    id_hash = os.urandom(32)
    await pg.execute(
        "INSERT INTO sessions (id_hash, user_id, data, idle_expires_at, absolute_expires_at)"
        " VALUES ($1, $2, '\\x00', now() + interval '1 hour', now() + interval '2 hours')",
        id_hash,
        user_id,
    )
    return id_hash


async def test_deleting_a_user_deletes_their_sessions(pg: asyncpg.Connection) -> None:
    bob = await pg.fetchval("INSERT INTO users (username, password_hash) VALUES ('bob', 'x') RETURNING id")
    carol = await pg.fetchval("INSERT INTO users (username, password_hash) VALUES ('carol', 'x') RETURNING id")
    for _ in range(3):
        await insert_session(pg, bob)
    kept = {await insert_session(pg, carol), await insert_session(pg, None)}

    await pg.execute("DELETE FROM users WHERE id = $1", bob)

    assert {r["id_hash"] for r in await pg.fetch("SELECT id_hash FROM sessions")} == kept


async def test_session_rows_are_constrained(pg: asyncpg.Connection) -> None:
    # A session cannot name a user who does not exist.
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await insert_session(pg, 424242)
    # The stored ID is a SHA-256: 32 bytes.
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute(
            "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
            " VALUES ('\\x0102', '\\x00', now(), now())"
        )
    # The idle deadline never passes the absolute one (the sweeper relies on it).
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute(
            "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
            " VALUES ($1, '\\x00', now() + interval '2 hours', now() + interval '1 hour')",
            os.urandom(32),
        )


async def test_the_move_to_the_library_keeps_a_deployed_databases_sessions(
    fresh_url: str, make_client: Callable[..., Any]
) -> None:
    """A database at 0003 (before the library existed) with a live session: after `alembic upgrade
    head` the session still signs its user in, deleting the user still ends it (the demo's foreign
    key), and the triggers notify the library's channel; `downgrade 0003` gives 0003's back."""
    assert alembic("upgrade", "0003", database_url=fresh_url).returncode == 0
    conn = await asyncpg.connect(fresh_url)
    try:
        user_id = await add_user(conn, "dora", "pw-dora-1", legacy=True)
        cookie, id_hash = TokenSigner((AUTH_KEY,)).new()
        sealed = DataCipher((ENC_KEY,)).seal(b'{"user_id": %d, "username": "dora"}' % user_id, id_hash)
        await conn.execute(
            "INSERT INTO sessions (id_hash, user_id, data, idle_expires_at, absolute_expires_at)"
            " VALUES ($1, $2, $3, now() + interval '1 hour', now() + interval '2 hours')",
            id_hash,
            user_id,
            sealed,
        )
        assert alembic("upgrade", "head", database_url=fresh_url).returncode == 0
        await asyncio.to_thread(assert_migrated, fresh_url)

        client = await make_client(make_settings(fresh_url))
        client.session.cookie_jar.update_cookies({"session": cookie})
        response = await client.get("/", allow_redirects=False)
        assert response.status == 200
        assert "Hello dora" in await response.text()

        received: list[str] = []
        await conn.add_listener("public.sessions", lambda *args: received.append(args[3]))
        await conn.execute("DELETE FROM users WHERE id = $1", user_id)  # the demo's foreign key cascades
        await asyncio.sleep(0.2)
        assert received == [id_hash.hex()]
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 0

        down = alembic("downgrade", "0003", database_url=fresh_url)
        assert down.returncode == 0, down.stderr
        assert "session_events" in await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'sessions_notify'")
        assert alembic("upgrade", "head", database_url=fresh_url).returncode == 0
    finally:
        await conn.close()


async def test_0008_keeps_the_sessions_and_the_foreign_key_of_a_deployed_database(
    fresh_url: str, make_client: Callable[..., Any]
) -> None:
    """A database at 0007 (the library's schema version 1) with a live session: after `alembic
    upgrade head` (0008: the principal column, added without a rewrite) the session still signs its
    user in, the table was not rewritten, and deleting the user still ends the session (the demo's
    foreign key, ON DELETE CASCADE, kept); `downgrade 0007` drops version 2's columns again."""
    assert alembic("upgrade", "0007", database_url=fresh_url).returncode == 0
    conn = await asyncpg.connect(fresh_url)
    try:
        user_id = await add_user(conn, "erin", "pw-erin-1")
        cookie, id_hash = TokenSigner((AUTH_KEY,)).new()
        sealed = DataCipher((ENC_KEY,)).seal(b'{"user_id": %d, "username": "erin"}' % user_id, id_hash)
        await conn.execute(
            "INSERT INTO sessions (id_hash, user_id, data, idle_expires_at, absolute_expires_at)"
            " VALUES ($1, $2, $3, now() + interval '1 hour', now() + interval '2 hours')",
            id_hash,
            user_id,
            sealed,
        )
        relfilenode = await conn.fetchval("SELECT relfilenode FROM pg_class WHERE oid = 'sessions'::regclass")
        up = alembic("upgrade", "head", database_url=fresh_url)
        assert up.returncode == 0, up.stderr
        await asyncio.to_thread(assert_migrated, fresh_url)
        assert await conn.fetchval("SELECT relfilenode FROM pg_class WHERE oid = 'sessions'::regclass") == relfilenode
        foreign_key = (
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE conrelid = 'sessions'::regclass AND contype = 'f'"
        )
        assert await conn.fetchval(foreign_key) == "FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE"

        client = await make_client(make_settings(fresh_url))
        client.session.cookie_jar.update_cookies({"session": cookie})
        response = await client.get("/", allow_redirects=False)
        assert response.status == 200
        assert "Hello erin" in await response.text()
        assert await conn.fetchval("SELECT principal FROM sessions WHERE id_hash = $1", id_hash) is None

        await conn.execute("DELETE FROM users WHERE id = $1", user_id)
        assert await conn.fetchval("SELECT count(*) FROM sessions") == 0

        down = alembic("downgrade", "0007", database_url=fresh_url)
        assert down.returncode == 0, down.stderr
        left = await asyncio.to_thread(columns, fresh_url, "sessions")
        assert {"principal", "idle_timeout", "browser_session"}.isdisjoint(left), left
        assert alembic("upgrade", "head", database_url=fresh_url).returncode == 0
    finally:
        await conn.close()


def test_the_head_revision_the_app_expects_is_alembics() -> None:
    """The app checks the database against schema.HEAD_REVISION, without importing Alembic."""
    assert schema.alembic_head() == schema.HEAD_REVISION
