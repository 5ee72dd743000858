"""The library's table, each of the three ways a project can get it, on empty databases of the
test's own: the SQL as printed for psql, create_schema() (concurrently, idempotently, with other
names), and the library's Alembic branch inside another project's Alembic history."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import asyncpg
import pytest
from aiohttp_session_postgres import SCHEMA_VERSION, create_schema, schema_sql, schema_statements, schema_version
from aiohttp_session_postgres.schema import split_schema_sql
from support.keys import AUTH_KEY, ENC_KEY
from support.library_envs import run_in

EXPECTED_COLUMNS = {
    "id_hash": "bytea",
    "user_id": "bigint",
    "principal": "text",
    "data": "bytea",
    "version": "bigint",
    "created_at": "timestamp with time zone",
    "last_seen_at": "timestamp with time zone",
    "idle_expires_at": "timestamp with time zone",
    "absolute_expires_at": "timestamp with time zone",
    "client_ip": "text",
    "user_agent": "text",
    "replaced_at": "timestamp with time zone",
    "idle_timeout": "integer",
    "browser_session": "boolean",
}


async def layout(conn: asyncpg.Connection, table: str = "sessions", schema: str = "public") -> dict[str, object]:
    """What a table looks like, to compare the three ways."""
    columns = {
        r["column_name"]: r["data_type"]
        for r in await conn.fetch(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
            schema,
            table,
        )
    }
    indexes = sorted(
        r["indexdef"].replace(f"{schema}.", "")
        for r in await conn.fetch(
            "SELECT indexdef FROM pg_indexes WHERE schemaname = $1 AND tablename = $2", schema, table
        )
    )
    triggers = sorted(
        r["tgname"]
        for r in await conn.fetch(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = to_regclass($1) AND NOT tgisinternal",
            f'"{schema}"."{table}"',
        )
    )
    foreign_keys = await conn.fetchval(
        "SELECT count(*) FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'f'", f'"{schema}"."{table}"'
    )
    return {"columns": columns, "indexes": indexes, "triggers": triggers, "foreign_keys": foreign_keys}


async def notifications_work(conn: asyncpg.Connection, table: str = "sessions", schema: str = "public") -> None:
    """The triggers notify the table's channel on a change of data, a live deletion, a truncate."""
    received: list[str] = []
    await conn.add_listener(f"{schema}.{table}", lambda *args: received.append(args[3]))
    id_hash = bytes(range(32))
    qualified = f'"{schema}"."{table}"'
    await conn.execute(
        f"INSERT INTO {qualified} (id_hash, data, idle_expires_at, absolute_expires_at)"
        " VALUES ($1, '\\x00', now() + interval '1 hour', now() + interval '2 hours')",
        id_hash,
    )
    await conn.execute(f"UPDATE {qualified} SET version = version + 1 WHERE id_hash = $1", id_hash)
    await conn.execute(f"DELETE FROM {qualified} WHERE id_hash = $1", id_hash)
    await conn.execute(f"TRUNCATE {qualified}")
    for _ in range(100):
        if len(received) == 3:
            break
        await asyncio.sleep(0.02)
    assert received == [f"{id_hash.hex()}:2", id_hash.hex(), "*"]


async def test_the_printed_sql_creates_the_table_and_can_run_again(empty_url: str, tmp_path: Path) -> None:
    sql = schema_sql()
    conn = await asyncpg.connect(empty_url)
    try:
        # As psql runs the printed file: each statement on its own (an index built CONCURRENTLY
        # cannot run in a transaction block, nor in a string of several statements).
        transactional, outside = split_schema_sql(sql)
        await conn.execute(transactional)  # what the CLI prints between BEGIN and COMMIT
        assert outside.count(";") == 1
        assert "CREATE INDEX CONCURRENTLY" in outside
        await conn.execute(outside)
        first = await layout(conn)
        await conn.execute(transactional)  # idempotent
        await conn.execute(outside)
        assert await layout(conn) == first
        assert first["columns"] == EXPECTED_COLUMNS
        assert first["foreign_keys"] == 0  # not welded to any users table
        assert first["triggers"] == ["sessions_notify_delete", "sessions_notify_truncate", "sessions_notify_update"]
        assert len(first["indexes"]) == 4  # primary key, idle deadline, user id, principal
        assert await schema_version(conn) == SCHEMA_VERSION
        await notifications_work(conn)
        # One statement at a time (Alembic's op.execute) makes the same table.
        await conn.execute("DROP TABLE sessions")
        for statement in schema_statements():
            await conn.execute(statement)  # CREATE INDEX CONCURRENTLY too: not in a transaction
        assert await layout(conn) == first
    finally:
        await conn.close()


async def test_create_schema_is_safe_from_many_processes_at_once(empty_url: str) -> None:
    conns = [await asyncpg.connect(empty_url) for _ in range(6)]
    try:
        results = await asyncio.gather(*(create_schema(conn) for conn in conns))
        assert sorted(results) == [False] * 5 + [True]  # one created it; the others found it current
        assert (await layout(conns[0]))["columns"] == EXPECTED_COLUMNS
        # On an up-to-date table it takes no lock on the table: it answers while another
        # transaction holds ACCESS EXCLUSIVE on it.
        async with conns[1].transaction():
            await conns[1].execute("LOCK TABLE sessions IN ACCESS EXCLUSIVE MODE")
            assert await asyncio.wait_for(create_schema(conns[2]), timeout=5) is False
    finally:
        for conn in conns:
            await conn.close()


async def test_create_schema_upgrades_a_table_of_an_older_version(empty_url: str) -> None:
    conn = await asyncpg.connect(empty_url)
    try:
        await create_schema(conn)
        # An older layout: no truncate trigger, no version recorded.
        await conn.execute("DROP TRIGGER sessions_notify_truncate ON sessions; COMMENT ON TABLE sessions IS NULL")
        assert await schema_version(conn) is None
        assert await create_schema(conn) is True
        assert await schema_version(conn) == SCHEMA_VERSION
        await notifications_work(conn)
    finally:
        await conn.close()


async def test_table_and_schema_names_are_options(empty_url: str, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    import aiohttp_session
    from aiohttp import DummyCookieJar, web
    from aiohttp_session_postgres import PostgresStorage

    conn = await asyncpg.connect(empty_url)
    try:
        await conn.execute("CREATE SCHEMA auth")
        assert await create_schema(conn, table="web_sessions", schema="auth") is True
        assert await conn.fetchval("SELECT to_regclass('public.sessions')") is None
        assert (await layout(conn, "web_sessions", "auth"))["columns"] == EXPECTED_COLUMNS
        await notifications_work(conn, "web_sessions", "auth")

        pool = await asyncpg.create_pool(empty_url, min_size=1, max_size=2)
        storage = PostgresStorage(
            pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], table="web_sessions", schema="auth"
        )
        app = web.Application()
        aiohttp_session.setup(app, storage)

        async def start(request: web.Request) -> web.Response:
            session = await aiohttp_session.new_session(request)
            session["user_id"] = 5
            return web.Response(text="ok")

        app.router.add_post("/start", start)
        client = await aiohttp_client(app, cookie_jar=DummyCookieJar())
        try:
            assert (await client.post("/start")).status == 200
            assert await conn.fetchval("SELECT count(*) FROM auth.web_sessions WHERE user_id = 5") == 1
            assert [s.handle for s in await storage.list_sessions(5)] != []
        finally:
            await client.close()
            await pool.close()
        with pytest.raises(ValueError, match="plain identifier"):
            await create_schema(conn, table='x"; DROP TABLE users; --')
        with pytest.raises(ValueError, match="too long"):
            schema_sql(table="t" * 48)
        # The printed SQL carries its names only where they belong: no template braces, and the
        # header does not turn into "auth.web_sessions and the other names ...".
        printed = schema_sql("web_sessions", "auth")
        assert "{" not in printed.replace("$$", "")
        assert printed.splitlines()[0] == schema_sql().splitlines()[0]
    finally:
        await conn.close()


# -- Alembic: the library's branch inside another project's history --------------------------

ALEMBIC_INI = """
[alembic]
script_location = %(here)s/migrations
version_locations = %(here)s/migrations/versions aiohttp_session_postgres:alembic_versions
path_separator = space

[aiohttp_session_postgres]
table = {table}
schema = {schema}

[loggers]
keys = root
[handlers]
keys = console
[formatters]
keys = generic
[logger_root]
level = WARNING
handlers = console
[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic
[formatter_generic]
format = %(levelname)s %(message)s
"""

# Another project's env.py, the shape `alembic init -t async` gives (SQLAlchemy on asyncpg).
ENV_PY = """
import asyncio, os
from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine

def run(connection):
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()

async def main():
    url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(run)
    await engine.dispose()

if context.is_offline_mode():
    context.configure(dialect_name="postgresql", literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(main())
"""

# Its own first revision: a users table keyed by text.
USERS_REVISION = '''
"""accounts

Revision ID: shop_0001
Revises:
"""
from alembic import op

revision = "shop_0001"
down_revision = None
branch_labels = ("shop",)
depends_on = None

def upgrade():
    op.execute("CREATE TABLE accounts (handle text PRIMARY KEY)")

def downgrade():
    op.execute("DROP TABLE accounts")
'''


def another_project(root: Path, table: str, schema: str) -> Path:
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    (root / "alembic.ini").write_text(textwrap.dedent(ALEMBIC_INI.format(table=table, schema=schema)))
    (root / "migrations" / "env.py").write_text(ENV_PY)
    (root / "migrations" / "script.py.mako").write_text("")
    (versions / "shop_0001_accounts.py").write_text(USERS_REVISION)
    return root


async def test_alembic_upgrade_heads_brings_the_library_table_in(
    checkout_python: Path, empty_url: str, tmp_path: Path
) -> None:
    # The sessions in a schema of their own, which nothing has made yet.
    project = another_project(tmp_path / "shop", "shop_sessions", "auth")

    def alembic(*args: str) -> str:
        result = run_in(checkout_python, project, "-m", "alembic", *args, DATABASE_URL=empty_url)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    assert "aiohttp_session_pg_0003" in alembic("heads")
    alembic("upgrade", "heads")
    conn = await asyncpg.connect(empty_url)
    try:
        assert (await layout(conn, "shop_sessions", "auth"))["columns"] == EXPECTED_COLUMNS
        assert await conn.fetchval("SELECT to_regclass('public.accounts')") is not None
        heads = {r["version_num"] for r in await conn.fetch("SELECT version_num FROM alembic_version")}
        assert heads == {"shop_0001", "aiohttp_session_pg_0003"}
        await notifications_work(conn, "shop_sessions", "auth")
        # The branch can be taken back down on its own.
        alembic("downgrade", "aiohttp_session_postgres@base")
        assert await conn.fetchval("SELECT to_regclass('auth.shop_sessions')") is None
        assert await conn.fetchval("SELECT to_regclass('public.accounts')") is not None
        # And offline: the SQL it would run, without a database.
        assert 'CREATE TABLE IF NOT EXISTS "auth"."shop_sessions"' in alembic("upgrade", "heads", "--sql")
    finally:
        await conn.close()


@pytest.mark.citus
async def test_alembic_upgrade_heads_distributes_the_library_table_on_citus(
    checkout_python: Path, citus_url: str, tmp_path: Path
) -> None:
    project = another_project(tmp_path / "shop", "shop_sessions", "auth")
    result = run_in(checkout_python, project, "-m", "alembic", "upgrade", "heads", DATABASE_URL=citus_url)
    assert result.returncode == 0, result.stdout + result.stderr
    conn = await asyncpg.connect(citus_url)
    try:
        method = await conn.fetchval(
            "SELECT partmethod::text FROM pg_dist_partition WHERE logicalrelid = 'auth.shop_sessions'::regclass"
        )
        assert method == "h"
        triggers = "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'auth.shop_sessions'::regclass AND NOT tgisinternal"
        assert await conn.fetchval(triggers) == 0
    finally:
        await conn.close()
