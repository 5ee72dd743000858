"""Through a real PgBouncer in transaction pooling (Heroku's connection pooling), started by the
test in front of a database of its own: with DATABASE_PGBOUNCER=on the whole flow works across two
app processes; without it, asyncpg's named prepared statements collide on PgBouncer's shared
server connection and the app does not work.

PgBouncer runs with one server connection, so every client of the database shares it: the
collision is certain, not a matter of timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg
import pytest
from support.demo import add_user
from support.ports import free_port
from support.postgres import eventually
from support.servers import (
    Server,
    Servers,
    handle,
    home,
    is_greeting,
    logout,
    new_http,
    revoke,
    row_exists,
    sessions_page,
    signed_in,
)

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(p, os.X_OK)), None
)
if PGBOUNCER is None:
    if os.environ.get("CI") == "true":
        pytest.fail("pgbouncer is missing and CI=true: apt-get install -y pgbouncer", pytrace=False)
    pytest.skip(
        "pgbouncer is not installed (apt-get install pgbouncer): PgBouncer tests skipped", allow_module_level=True
    )

PASSWORD = "correct horse"
ALIAS = "appdb"


@dataclass
class Bouncer:
    url: str  # the app's DATABASE_URL: through PgBouncer
    direct_url: str  # the same database, straight to PostgreSQL
    log: Path


def _version(binary: str) -> tuple[int, ...]:
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _run_as(host: str) -> list[str]:
    """PgBouncer refuses to run as root: as root, take the owner of the server's socket directory
    (who can reach the socket), else nobody."""
    if os.geteuid() != 0:
        return []
    user = "nobody"
    if host.startswith("/"):
        owner = pwd.getpwuid(os.stat(host).st_uid).pw_name
        if owner != "root":
            user = owner
    return ["-u", user]


@pytest.fixture(scope="module")
def bouncer(create_database: Callable[..., str]) -> Iterator[Bouncer]:
    assert PGBOUNCER is not None
    direct_url = create_database()
    parts = urlsplit(direct_url)
    host = parts.hostname or parse_qs(parts.query).get("host", ["/var/run/postgresql"])[0]
    user = parts.username or "postgres"
    server = f"host={host} port={parts.port or 5432} dbname={parts.path.lstrip('/')} user={user}"
    if parts.password:
        server += f" password={unquote(parts.password)}"
    port = free_port()
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    folder.chmod(0o755)  # readable by the user PgBouncer switches to
    settings = [
        "listen_addr = 127.0.0.1",
        f"listen_port = {port}",
        "unix_socket_dir =",
        "auth_type = any",  # clients are trusted; PgBouncer logs in as the [databases] user
        "pool_mode = transaction",
        "default_pool_size = 1",
        "max_client_conn = 100",
    ]
    if _version(PGBOUNCER) >= (1, 21):
        settings.append("max_prepared_statements = 0")  # newer PgBouncers can track them: not Heroku's
    config = folder / "pgbouncer.ini"
    config.write_text(f"[databases]\n{ALIAS} = {server}\n\n[pgbouncer]\n" + "\n".join(settings) + "\n")
    config.chmod(0o644)
    log = folder / "pgbouncer.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [PGBOUNCER, *_run_as(host), str(config)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    try:
        deadline = time.monotonic() + 15
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"pgbouncer exited ({proc.returncode}):\n{log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"pgbouncer did not listen within 15 s:\n{log.read_text()}")
            time.sleep(0.05)
        yield Bouncer(f"postgresql://postgres@127.0.0.1:{port}/{ALIAS}", direct_url, log)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def db(bouncer: Bouncer) -> AsyncIterator[asyncpg.Connection]:
    """Straight to PostgreSQL: emptied, with user alice; no server connection of PgBouncer held."""
    conn = await asyncpg.connect(bouncer.direct_url)
    await conn.execute("TRUNCATE sessions, users, login_failures RESTART IDENTITY CASCADE")
    await add_user(conn, "alice", PASSWORD)
    # A fresh PgBouncer server connection for each test: no statement prepared by an earlier one.
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database()"
        " AND pid <> pg_backend_pid()"
    )
    yield conn
    await conn.close()


async def test_the_core_flow_works_through_pgbouncer_with_database_pgbouncer_on(
    bouncer: Bouncer, db: asyncpg.Connection, servers: Servers
) -> None:
    env = {"DATABASE_PGBOUNCER": "on", "SWEEP_INTERVAL": "1", "LOG_LEVEL": "INFO"}
    a = await servers.start(bouncer.url, **env)
    b = await servers.start(bouncer.url, **env)
    # An expired row for the sweepers, which take their lock per transaction through PgBouncer.
    await db.execute(
        "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
        " VALUES (sha256('expired'), '\\x00'::bytea, now() - interval '1 minute', now() + interval '1 hour')"
    )
    async with new_http() as http:
        laptop = await signed_in(http, a.url, "alice", PASSWORD)
        phone = await signed_in(http, b.url, "alice", PASSWORD)
        for _ in range(5):  # again and again, on the one shared server connection
            for server in (a, b):
                for cookie in (laptop, phone):
                    status, text, _ = await home(http, server.url, cookie)
                    assert is_greeting(status, text, "alice"), status
        status, page = await sessions_page(http, b.url, laptop)
        assert status == 200
        assert handle(laptop) in page
        assert handle(phone) in page

        assert await revoke(http, a.url, laptop, handle(phone)) == 303
        for server in (a, b):
            assert (await home(http, server.url, phone))[0] == 303
        assert await logout(http, b.url, laptop) == 303
        for server in (a, b):
            assert (await home(http, server.url, laptop))[0] == 303
        assert not await row_exists(db, laptop)
        assert await db.fetchval("SELECT count(*) FROM sessions WHERE user_id IS NOT NULL") == 0

    async def swept() -> bool:
        return await db.fetchval("SELECT count(*) FROM sessions") == 0

    await eventually(swept, 10, "the sweepers did not run through PgBouncer")
    for server in (a, b):
        assert server.alive
        log = server.log()
        assert "sweep failed" not in log, log
        assert "Traceback" not in log, log

    # The one-off command (Heroku Scheduler) as well.
    result = await asyncio.to_thread(a.run_command, "sweep")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("removed 0 expired sessions", "another process is sweeping: nothing done")


async def test_without_database_pgbouncer_a_second_process_breaks_on_prepared_statements(
    bouncer: Bouncer, db: asyncpg.Connection, servers: Servers, tmp_path: Path
) -> None:
    """asyncpg names its prepared statements per process (__asyncpg_stmt_1__, _2_, ...). Behind
    PgBouncer two processes share server connections, so the second one's first statement
    collides with the first one's: the app cannot work without DATABASE_PGBOUNCER=on."""
    first = await servers.start(bouncer.url)
    async with new_http() as http:
        await signed_in(http, first.url, "alice", PASSWORD)  # prepares more statements
    second = Server(bouncer.url, tmp_path).start()
    servers.started.append(second)
    assert await second.wait(timeout=30) == 1
    lines = second.log().splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(
        r'error: cannot use the database at 127\.0\.0\.1:\d+/appdb \(prepared statement "__asyncpg_stmt_\w+__"'
        r" already exists\): behind PgBouncer in transaction pooling, set DATABASE_PGBOUNCER=on",
        lines[0],
    ), lines[0]
