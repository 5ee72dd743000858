"""The upgrade to schema version 2 (str users: the principal column) during a rolling deploy, on a
table made and served by the release before it (schema version 1: the library as it was at
OLD_COMMIT, taken from this repository's history and run in a process of its own): the table is
upgraded by create_schema() or by the Alembic branch while the old release writes a session over
and over, and then
- no session is lost, and none of the old release's writes failed meanwhile;
- the table was not rewritten (its relfilenode is the same), the CHECK was added NOT VALID and the
  index built (valid);
- the old release's statements all still work on the upgraded table (read, write, log in, list,
  end all, renew), and the new release reads every row the old one wrote, lists its users'
  sessions, and signs in a str user beside them.
On one PostgreSQL and on Citus, each both ways.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp_session
import asyncpg
import pytest
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient
from aiohttp_session_postgres import (
    SCHEMA_VERSION,
    PostgresStorage,
    create_schema,
    get_session,
    new_session,
    schema_version,
)
from support.keys import AUTH_KEY, ENC_KEY
from support.paths import REPO_ROOT

# main before str users: the library of schema version 1.
OLD_COMMIT = "288cd83338aee183ce01751f3877341d6a2831ca"

Client = Callable[..., Awaitable[TestClient]]

# The old release's side, run with the old library first on its import path.
OLD_APP = """
import asyncio, json, sys
import aiohttp_session, asyncpg
import aiohttp_session_postgres as lib
from aiohttp import DummyCookieJar, web
from aiohttp.test_utils import TestClient, TestServer

assert lib.SCHEMA_VERSION == 1, lib.__file__
AUTH, ENC = bytes.fromhex(sys.argv[3]), bytes.fromhex(sys.argv[4])

async def main(mode, dsn, args):
    if mode == "make":
        conn = await asyncpg.connect(dsn)
        await lib.create_schema(conn, citus=True if args["citus"] else None)
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    storage = lib.PostgresStorage(pool, authentication_keys=[AUTH], encryption_keys=[ENC], database_timeout=10,
                                  touch_interval=0)
    app = web.Application()
    aiohttp_session.setup(app, storage)

    async def login(request):
        (await lib.new_session(request))["user_id"] = int(request.query["user"])
        return web.Response(text="ok")

    async def write(request):
        session = await lib.get_session(request)
        session["count"] = session.get("count", 0) + 1
        return web.Response(text="ok")

    async def read(request):
        return web.json_response(dict(await lib.get_session(request)))

    async def renew(request):
        await lib.renew_session(request)
        return web.Response(text="ok")

    app.router.add_post("/login", login)
    app.router.add_post("/write", write)
    app.router.add_get("/read", read)
    app.router.add_post("/renew", renew)
    client = TestClient(TestServer(app), cookie_jar=DummyCookieJar())
    await client.start_server()
    h = lambda cookie: {"Cookie": f"session={cookie}"}
    out = {}
    try:
        if mode == "make":
            cookies = []
            for user in (1, 1, 2):
                cookies.append((await client.post("/login", params={"user": str(user)})).cookies["session"].value)
            cookies.append((await client.post("/write")).cookies["session"].value)  # anonymous
            out["cookies"] = cookies
        elif mode == "serve":
            # Writes one session over and over until told to stop (a line on stdin): each status.
            statuses = []
            stop = asyncio.ensure_future(asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline))
            while not stop.done():
                statuses.append((await client.post("/write", headers=h(args["cookie"]))).status)
                if len(statuses) == 1:
                    print("serving", flush=True)
            out["statuses"] = statuses
        else:  # use: every kind of statement, on the upgraded table
            cookies = args["cookies"]
            out["read"] = [await (await client.get("/read", headers=h(c))).json() for c in cookies]
            out["write"] = (await client.post("/write", headers=h(cookies[0]))).status
            out["login"] = (await client.post("/login", params={"user": "1"})).status
            out["listed"] = len(await storage.list_sessions(1))
            out["renew"] = (await client.post("/renew", headers=h(cookies[1]))).status
            out["ended"] = await storage.end_all_sessions(2)
    finally:
        await client.close()
        await pool.close()
    print(json.dumps(out), flush=True)

asyncio.run(main(sys.argv[1], sys.argv[2], json.loads(sys.argv[5])))
"""


@pytest.fixture(scope="module")
def old_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The library at OLD_COMMIT, in a folder of its own."""
    where = tmp_path_factory.mktemp("old-library")
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", OLD_COMMIT, "aiohttp_session_postgres"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.fail(f"cannot read the library at {OLD_COMMIT} from git: {archive.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive.stdout, check=True)
    (where / "old_app.py").write_text(textwrap.dedent(OLD_APP))
    return where


def old_command(old_library: Path, mode: str, dsn: str, **args: object) -> list[str]:
    return [sys.executable, str(old_library / "old_app.py"), mode, dsn, AUTH_KEY.hex(), ENC_KEY.hex(), json.dumps(args)]


def old_env(old_library: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(old_library)}


async def run_old(old_library: Path, mode: str, dsn: str, **args: object) -> dict[str, object]:
    process = await asyncio.create_subprocess_exec(
        *old_command(old_library, mode, dsn, **args),
        cwd=old_library,
        env=old_env(old_library),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out.decode().splitlines()[-1])
    return result


def alembic_upgrade(project: Path, dsn: str) -> None:
    """The library's Alembic branch in a project of its own, stamped at 0002 (the table version 1
    made, as its 0001 and 0002 make it) and upgraded to its head."""
    alembic_project(project, dsn, ["stamp", "aiohttp_session_pg_0002"], ["upgrade", "heads"])


def alembic_project(project: Path, dsn: str, *commands: list[str]) -> None:
    """The library's Alembic branch in a project of its own at `project`, running `commands`."""
    (project / "migrations" / "versions").mkdir(parents=True)
    (project / "alembic.ini").write_text(
        "[alembic]\nscript_location = %(here)s/migrations\n"
        "version_locations = aiohttp_session_postgres:alembic_versions\npath_separator = space\n"
    )
    (project / "migrations" / "env.py").write_text(
        textwrap.dedent("""
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

            asyncio.run(main())
        """)
    )
    (project / "migrations" / "script.py.mako").write_text("")
    for args in commands:
        result = subprocess.run(
            [sys.executable, "-m", "alembic", *args],
            cwd=project,
            env={**os.environ, "DATABASE_URL": dsn, "PYTHONPATH": str(REPO_ROOT)},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr


async def new_app(aiohttp_client: Client, pool: asyncpg.Pool) -> tuple[TestClient, PostgresStorage]:
    storage = PostgresStorage(pool, authentication_keys=[AUTH_KEY], encryption_keys=[ENC_KEY], database_timeout=10)
    app = web.Application()
    aiohttp_session.setup(app, storage)

    async def read(request: web.Request) -> web.Response:
        return web.json_response(dict(await get_session(request)))

    async def login(request: web.Request) -> web.Response:
        (await new_session(request))["user_id"] = request.query["user"]
        return web.Response(text="ok")

    app.router.add_get("/read", read)
    app.router.add_post("/login", login)
    return await aiohttp_client(app, cookie_jar=DummyCookieJar()), storage


async def upgrade_while_served(
    old_library: Path, dsn: str, upgrade: Callable[[], Awaitable[None]], *, citus: bool
) -> tuple[list[str], asyncpg.Connection, int]:
    """Sessions made by the old release; the upgrade run while it writes one of them over and
    over. The old release's cookies, a connection, and how many writes it served meanwhile."""
    made = await run_old(old_library, "make", dsn, citus=citus)
    cookies = made["cookies"]
    assert isinstance(cookies, list)
    conn = await asyncpg.connect(dsn)
    assert await conn.fetchval("SELECT count(*) FROM sessions WHERE idle_expires_at > now()") == 4
    relfilenode = await conn.fetchval("SELECT relfilenode FROM pg_class WHERE oid = 'sessions'::regclass")
    serving = await asyncio.create_subprocess_exec(
        *old_command(old_library, "serve", dsn, cookie=cookies[3]),
        cwd=old_library,
        env=old_env(old_library),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert serving.stdout is not None
    assert serving.stdin is not None
    assert (await asyncio.wait_for(serving.stdout.readline(), timeout=60)).strip() == b"serving"
    await upgrade()  # while the old release writes
    serving.stdin.write(b"stop\n")
    out, err = await asyncio.wait_for(serving.communicate(), timeout=60)
    assert serving.returncode == 0, err.decode()
    statuses = json.loads(out.decode().splitlines()[-1])["statuses"]
    assert set(statuses) == {200}, statuses  # none of its writes failed
    # No session lost, every write of the old release counted; no rewrite; the new parts there.
    assert await conn.fetchval("SELECT count(*) FROM sessions WHERE idle_expires_at > now()") == 4
    assert await conn.fetchval("SELECT relfilenode FROM pg_class WHERE oid = 'sessions'::regclass") == relfilenode
    assert await conn.fetchval("SELECT obj_description('sessions'::regclass, 'pg_class')") == (
        f"aiohttp-session-postgres schema {SCHEMA_VERSION}"
    )
    assert await conn.fetchval(
        "SELECT convalidated FROM pg_constraint WHERE conname = 'sessions_principal_check'"
    ) is False  # fmt: skip
    assert await conn.fetchval("SELECT indisvalid FROM pg_index WHERE indexrelid = 'sessions_principal_idx'::regclass")
    return cookies, conn, len(statuses)


async def after_the_upgrade(
    aiohttp_client: Client, old_library: Path, dsn: str, cookies: list[str], conn: asyncpg.Connection, writes: int
) -> None:
    # The old release's statements on the upgraded table: all of them still work.
    used = await run_old(old_library, "use", dsn, cookies=cookies)
    assert used["read"] == [{"user_id": 1}, {"user_id": 1}, {"user_id": 2}, {"count": writes + 1}]
    assert (used["write"], used["login"], used["renew"]) == (200, 200, 200)
    assert used["listed"] == 3  # user 1: two from before, one logged in after the upgrade
    assert used["ended"] == 1  # user 2's
    # The new release reads what the old one wrote, lists its users, and signs in a str user.
    async with asyncpg.create_pool(dsn, min_size=1, max_size=4) as pool:
        client, storage = await new_app(aiohttp_client, pool)
        read = await client.get("/read", headers={"Cookie": f"session={cookies[0]}"})
        assert await read.json() == {"user_id": 1, "count": 1}
        assert len(await storage.list_sessions(1)) == 3
        assert await storage.list_sessions("1") == []
        login = await client.post("/login", params={"user": "6f1c2a4e-8b0d-4c1e-9a57-3d2f1e0b9c8a"})
        assert login.status == 200
        assert len(await storage.list_sessions("6f1c2a4e-8b0d-4c1e-9a57-3d2f1e0b9c8a")) == 1
        assert await storage.end_all_sessions(1) == 3
        await client.close()
    await conn.close()


@pytest.mark.parametrize("way", ["create_schema", "alembic"])
async def test_the_upgrade_from_version_1_loses_nothing_and_the_old_release_keeps_serving(
    aiohttp_client: Client, old_library: Path, empty_url: str, tmp_path: Path, way: str
) -> None:
    async def upgrade() -> None:
        if way == "alembic":
            await asyncio.to_thread(alembic_upgrade, tmp_path / "project", empty_url)
            return
        conn = await asyncpg.connect(empty_url)
        try:
            assert await create_schema(conn) is True
            assert await create_schema(conn) is False  # up to date: nothing more
        finally:
            await conn.close()

    cookies, conn, writes = await upgrade_while_served(old_library, empty_url, upgrade, citus=False)
    await after_the_upgrade(aiohttp_client, old_library, empty_url, cookies, conn, writes)


@pytest.mark.citus
@pytest.mark.parametrize("way", ["create_schema", "alembic"])
async def test_the_upgrade_on_citus_loses_nothing_and_the_old_release_keeps_serving(
    aiohttp_client: Client, old_library: Path, citus_url: str, tmp_path: Path, way: str
) -> None:
    async def upgrade() -> None:
        if way == "alembic":
            await asyncio.to_thread(alembic_upgrade, tmp_path / "project", citus_url)
            return
        conn = await asyncpg.connect(citus_url)
        try:
            assert await create_schema(conn) is True
            assert await create_schema(conn) is False
        finally:
            await conn.close()

    cookies, conn, writes = await upgrade_while_served(old_library, citus_url, upgrade, citus=True)
    # The column, the CHECK and the index reached the shards.
    shards = await conn.fetchval(
        "SELECT count(*) FROM run_command_on_shards('sessions',"
        " $$SELECT count(*) FROM pg_attribute WHERE attrelid = '%s'::regclass AND attname = 'principal'$$)"
        " WHERE result = '1'"
    )
    assert shards == await conn.fetchval("SELECT count(*) FROM pg_dist_shard WHERE logicalrelid = 'sessions'::regclass")
    await after_the_upgrade(aiohttp_client, old_library, citus_url, cookies, conn, writes)


async def test_an_interrupted_index_build_is_built_again(empty_url: str) -> None:
    """A concurrent build that was interrupted leaves an invalid index, which IF NOT EXISTS would
    keep for ever: create_schema drops it and builds it again, even on a table at the version."""
    conn = await asyncpg.connect(empty_url)
    try:
        await create_schema(conn)
        await conn.execute(
            "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'sessions_principal_idx'::regclass"
        )
        assert await create_schema(conn) is True
        assert await conn.fetchval(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'sessions_principal_idx'::regclass"
        )
        assert await create_schema(conn) is False
    finally:
        await conn.close()


async def test_processes_starting_at_once_upgrade_the_table_together(old_library: Path, empty_url: str) -> None:
    """Several processes of the new release call create_schema at once on a table of version 1
    with rows (a rolling deploy's first dynos): one upgrades it, one builds the index
    concurrently, none deadlocks or fails, and the index is valid."""
    await run_old(old_library, "make", empty_url, citus=False)
    conns = [await asyncpg.connect(empty_url) for _ in range(5)]
    try:
        results = await asyncio.wait_for(asyncio.gather(*(create_schema(conn) for conn in conns)), timeout=60)
        assert True in results
        valid = "SELECT indisvalid FROM pg_index WHERE indexrelid = 'sessions_principal_idx'::regclass"
        assert await conns[0].fetchval(valid)
        assert await conns[0].fetchval("SELECT count(*) FROM sessions") == 4
        assert [await create_schema(conn) for conn in conns] == [False] * 5
    finally:
        for conn in conns:
            await conn.close()


async def test_a_downgrade_to_version_1_ends_the_sessions_of_str_users(empty_url: str, tmp_path: Path) -> None:
    """Version 1 can neither list nor end a str user's sessions: the downgrade deletes them (the
    users sign in again) rather than leave them signed in beyond any revocation, keeps every
    other session, and drops version 2's columns."""
    conn = await asyncpg.connect(empty_url)
    try:
        assert await create_schema(conn) is True
        rows = "INSERT INTO sessions (id_hash, user_id, principal, data, idle_expires_at, absolute_expires_at)"
        rows += " VALUES ($1, $2, $3, '\\x00', now() + interval '1 hour', now() + interval '2 hours')"
        await conn.execute(rows, b"i" * 32, 7, None)
        await conn.execute(rows, b"s" * 32, None, "8b7f0c0e-0d8f-4a57-9a8e-2f1c3f3b9a10")
        await conn.execute(rows, b"a" * 32, None, None)
        down = ["downgrade", "aiohttp_session_pg_0002"]
        await asyncio.to_thread(alembic_project, tmp_path / "project", empty_url, ["stamp", "heads"], down)
        left = await conn.fetch("SELECT id_hash, user_id FROM sessions ORDER BY id_hash")
        assert [(bytes(r["id_hash"]), r["user_id"]) for r in left] == [(b"a" * 32, None), (b"i" * 32, 7)]
        columns = await conn.fetch("SELECT attname FROM pg_attribute WHERE attrelid = 'sessions'::regclass")
        assert {"principal", "idle_timeout", "browser_session"}.isdisjoint({r["attname"] for r in columns})
        assert await schema_version(conn) == 1
    finally:
        await conn.close()
