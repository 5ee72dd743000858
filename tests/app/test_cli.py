"""`python -m app ...` as an operator runs it: a subprocess with its own environment.

Commands that work print one line on stdout and exit 0; every failure an operator can cause is
exactly one `error:` line on stderr and a non-zero exit status, never a traceback.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from support.demo import login, make_settings, run_app_command

from app import usernames
from app.passwords import PasswordHasher

MakeClient = Callable[..., Awaitable[TestClient]]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str

    def one_error_line(self) -> str:
        """The single `error:` line a failure must print, checked."""
        assert self.returncode != 0, self
        assert "Traceback" not in self.stderr, self.stderr
        lines = self.stderr.splitlines()
        assert len(lines) == 1, self.stderr
        assert lines[0].startswith("error: "), self.stderr
        return lines[0]

    def one_output_line(self) -> str:
        assert self.returncode == 0, self
        assert self.stderr == "", self.stderr
        lines = self.stdout.splitlines()
        assert len(lines) == 1, self.stdout
        return lines[0]


async def run_app(*args: str, database_url: str | None, stdin: bytes | None = None, **env: str | None) -> Result:
    return Result(*await run_app_command(*args, database_url=database_url, stdin=stdin, **env))


async def password_ok(pg: asyncpg.Connection, username: str, password: str) -> bool:
    stored = await pg.fetchval("SELECT password_hash FROM users WHERE username_key = $1", usernames.key(username))
    assert stored is not None
    hasher = PasswordHasher(4)
    try:
        return await hasher.verify(password, stored)
    finally:
        hasher.close()


async def user_count(pg: asyncpg.Connection) -> int:
    return await pg.fetchval("SELECT count(*) FROM users")


# -- user add --------------------------------------------------------------------------------


@pytest.mark.parametrize("line", [b"pw\n", b"pw\r\n", b"pw", b"pw\nsecond line\n"])
async def test_user_add_reads_first_line_of_stdin(
    db_url: str, pg: asyncpg.Connection, make_client: MakeClient, line: bytes
) -> None:
    result = await run_app("user", "add", "bob", database_url=db_url, stdin=line)
    assert result.one_output_line() == "created user bob"
    assert await pg.fetchval("SELECT username FROM users") == "bob"
    assert await password_ok(pg, "bob", "pw")
    assert not await password_ok(pg, "bob", "pw\r")
    # And the app accepts it.
    client = await make_client(make_settings(db_url))
    await login(client, "bob", "pw")
    assert "Hello bob" in await (await client.get("/")).text()


async def test_user_add_keeps_other_whitespace_in_the_password(db_url: str, pg: asyncpg.Connection) -> None:
    result = await run_app("user", "add", "bob", database_url=db_url, stdin=b" p w \t\r\n")
    result.one_output_line()
    assert await password_ok(pg, "bob", " p w \t")
    assert not await password_ok(pg, "bob", "p w")


async def test_user_add_again_resets_password_and_keeps_id(
    db_url: str, pg: asyncpg.Connection, make_client: MakeClient
) -> None:
    (await run_app("user", "add", "bob", database_url=db_url, stdin=b"old\n")).one_output_line()
    user_id = await pg.fetchval("SELECT id FROM users")
    before = await make_client(make_settings(db_url))
    await login(before, "bob", "old")
    assert (await before.get("/", allow_redirects=False)).status == 200

    result = await run_app("user", "add", "bob", database_url=db_url, stdin=b"new\n")
    assert result.one_output_line() == "reset the password of bob and ended their sessions"
    assert await pg.fetchval("SELECT id FROM users") == user_id
    assert await user_count(pg) == 1
    assert await password_ok(pg, "bob", "new")
    assert not await password_ok(pg, "bob", "old")
    # Whoever knew the old password is signed out.
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0
    assert (await before.get("/", allow_redirects=False)).status == 303

    client = await make_client(make_settings(db_url))
    refused = await client.post("/login", data={"username": "bob", "password": "old"}, allow_redirects=False)
    assert refused.headers["Location"] == "/public/login.html?error=1"
    await login(client, "bob", "new")


async def test_user_add_is_case_insensitive_and_keeps_first_spelling(db_url: str, pg: asyncpg.Connection) -> None:
    (await run_app("user", "add", "bob", database_url=db_url, stdin=b"old\n")).one_output_line()
    user_id = await pg.fetchval("SELECT id FROM users")

    result = await run_app("user", "add", "BOB", database_url=db_url, stdin=b"new\n")
    assert result.one_output_line().startswith("reset the password of")
    assert await pg.fetch("SELECT id, username FROM users") == [(user_id, "bob")]
    assert await password_ok(pg, "bob", "new")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "x" * 65,
        "bo\tb",
        "bob\n",
        "b\x7fb",  # DEL: a control character (argv cannot carry NUL)
        "bo\u200bb",  # zero-width space: an invisible formatting character
    ],
)
async def test_user_add_rejects_bad_usernames(db_url: str, pg: asyncpg.Connection, name: str) -> None:
    result = await run_app("user", "add", name, database_url=db_url, stdin=b"pw\n")
    assert "invalid username" in result.one_error_line()
    assert result.stdout == ""
    assert await user_count(pg) == 0


async def test_user_add_accepts_64_characters_and_unicode(db_url: str, pg: asyncpg.Connection) -> None:
    (await run_app("user", "add", "x" * 64, database_url=db_url, stdin=b"pw\n")).one_output_line()
    (await run_app("user", "add", "Zoë", database_url=db_url, stdin=b"pw\n")).one_output_line()
    assert {r["username"] for r in await pg.fetch("SELECT username FROM users")} == {"x" * 64, "Zoë"}


@pytest.mark.parametrize("stdin", [b"\n", b"\r\n", b""])
async def test_user_add_refuses_an_empty_password(db_url: str, pg: asyncpg.Connection, stdin: bytes) -> None:
    result = await run_app("user", "add", "bob", database_url=db_url, stdin=stdin)
    assert "password is empty" in result.one_error_line()
    assert await user_count(pg) == 0


async def test_user_add_refuses_a_password_that_is_not_utf8(db_url: str, pg: asyncpg.Connection) -> None:
    result = await run_app("user", "add", "bob", database_url=db_url, stdin=b"\xff\xfe\n")
    assert "UTF-8" in result.one_error_line()
    assert await user_count(pg) == 0


async def test_user_add_refuses_an_overlong_password(db_url: str, pg: asyncpg.Connection) -> None:
    result = await run_app("user", "add", "bob", database_url=db_url, stdin=b"p" * 1025 + b"\n")
    assert "longer than 1024 bytes" in result.one_error_line()
    assert await user_count(pg) == 0


# -- user delete -----------------------------------------------------------------------------


async def test_user_delete_removes_user_and_ends_their_sessions(
    db_url: str, pg: asyncpg.Connection, make_client: MakeClient
) -> None:
    (await run_app("user", "add", "bob", database_url=db_url, stdin=b"pw\n")).one_output_line()
    (await run_app("user", "add", "carol", database_url=db_url, stdin=b"pw\n")).one_output_line()
    bob_client = await make_client(make_settings(db_url))
    carol_client = await make_client(make_settings(db_url))
    await login(bob_client, "bob", "pw")
    await login(carol_client, "carol", "pw")
    bob_id = await pg.fetchval("SELECT id FROM users WHERE username = 'bob'")
    assert await pg.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", bob_id) == 1
    assert (await bob_client.get("/", allow_redirects=False)).status == 200

    result = await run_app("user", "delete", "BOB", database_url=db_url)
    assert result.one_output_line() == "deleted user BOB and their sessions"

    assert await pg.fetchval("SELECT count(*) FROM users WHERE username_key = 'bob'") == 0
    assert await pg.fetchval("SELECT count(*) FROM sessions WHERE user_id = $1", bob_id) == 0
    # Bob's cookie no longer opens anything; Carol is untouched.
    assert (await bob_client.get("/", allow_redirects=False)).status == 303
    assert "Hello carol" in await (await carol_client.get("/")).text()


async def test_user_delete_unknown_user_fails(db_url: str, pg: asyncpg.Connection) -> None:
    (await run_app("user", "add", "bob", database_url=db_url, stdin=b"pw\n")).one_output_line()
    result = await run_app("user", "delete", "nobody", database_url=db_url)
    assert "nobody" in result.one_error_line()
    assert result.stdout == ""
    assert await user_count(pg) == 1


# -- sweep -----------------------------------------------------------------------------------


async def insert_sessions(pg: asyncpg.Connection, count: int, *, idle: str, absolute: str) -> None:
    for _ in range(count):
        await pg.execute(
            "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
            f" VALUES ($1, '\\x00', now() + interval '{idle}', now() + interval '{absolute}')",
            os.urandom(32),
        )


async def test_sweep_removes_expired_sessions_and_reports_count(db_url: str, pg: asyncpg.Connection) -> None:
    await insert_sessions(pg, 3, idle="-1 minute", absolute="1 hour")  # idle deadline passed
    await insert_sessions(pg, 2, idle="-2 hours", absolute="-1 hour")  # both passed
    await insert_sessions(pg, 4, idle="10 minutes", absolute="1 hour")  # live

    result = await run_app("sweep", database_url=db_url)
    assert result.one_output_line() == "removed 5 expired sessions"
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 4
    assert await pg.fetchval("SELECT count(*) FROM sessions WHERE idle_expires_at <= now()") == 0

    again = await run_app("sweep", database_url=db_url)
    assert again.one_output_line() == "removed 0 expired sessions"


async def test_sweep_deletes_in_batches(db_url: str, pg: asyncpg.Connection) -> None:
    await insert_sessions(pg, 7, idle="-1 minute", absolute="1 hour")
    result = await run_app("sweep", database_url=db_url, SWEEP_BATCH_SIZE="2")
    assert result.one_output_line() == "removed 7 expired sessions"
    assert await pg.fetchval("SELECT count(*) FROM sessions") == 0


# -- configuration and start-up errors -------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SESSION_AUTHENTICATION_KEY": None}, "SESSION_AUTHENTICATION_KEY"),
        ({"SESSION_ENCRYPTION_KEY": None}, "SESSION_ENCRYPTION_KEY"),
        ({"SESSION_ENCRYPTION_KEY": "x" * 20}, "SESSION_ENCRYPTION_KEY"),
        ({"SESSION_AUTHENTICATION_KEY": "x" * 31}, "SESSION_AUTHENTICATION_KEY"),
        ({"SESSION_TOUCH_INTERVAL": "1800"}, "SESSION_TOUCH_INTERVAL"),
        ({"SESSION_IDLE_TIMEOUT": "soon"}, "SESSION_IDLE_TIMEOUT"),
        ({"PORT": "99999"}, "PORT"),
        ({"TRUST_PROXY": "perhaps"}, "TRUST_PROXY"),
        ({"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL"),
        ({"DATABASE_URL": "postgresql://u@127.0.0.1:99999/db"}, "DATABASE_URL"),
        ({"DYNO": "web.1", "DATABASE_URL": None}, "DATABASE_URL"),
    ],
)
async def test_configuration_errors_are_one_line(migrated_url: str, env: dict[str, str | None], expected: str) -> None:
    others = dict(env)
    url = others.pop("DATABASE_URL", migrated_url)
    result = await run_app("serve", database_url=url, **others)
    assert expected in result.one_error_line()
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"SESSION_AUTHENTICATION_KEY": ""}, "SESSION_AUTHENTICATION_KEY"),
        ({"SESSION_ENCRYPTION_KEY": "x" * 31}, "SESSION_ENCRYPTION_KEY"),
        ({"SESSION_TOUCH_INTERVAL": "60", "SESSION_IDLE_TIMEOUT": "60"}, "SESSION_TOUCH_INTERVAL"),
    ],
)
@pytest.mark.parametrize("command", [["sweep"], ["user", "delete", "bob"]])
async def test_configuration_errors_are_one_line_for_every_command(
    migrated_url: str, env: dict[str, str], expected: str, command: list[str]
) -> None:
    result = await run_app(*command, database_url=migrated_url, **env)
    assert expected in result.one_error_line()
    assert result.stdout == ""


async def test_configuration_error_comes_before_reading_the_password(migrated_url: str) -> None:
    result = await run_app(
        "user", "add", "bob", database_url=migrated_url, stdin=b"pw\n", SESSION_ENCRYPTION_KEY="short"
    )
    assert "SESSION_ENCRYPTION_KEY" in result.one_error_line()


@pytest.mark.parametrize("command", [["serve"], ["sweep"], ["user", "delete", "bob"]])
async def test_unreachable_database_is_one_line_naming_database_url(command: list[str]) -> None:
    result = await run_app(*command, database_url="postgresql://postgres@127.0.0.1:1/x")
    line = result.one_error_line()
    assert "DATABASE_URL" in line
    assert "127.0.0.1:1/x" in line


async def test_wrong_credentials_do_not_leak_the_password(server_url: str) -> None:
    from urllib.parse import urlsplit

    parts = urlsplit(server_url)
    if not parts.hostname:
        pytest.skip("the embedded server trusts every local connection")
    url = parts._replace(netloc=f"no_such_role_x:hunter2@{parts.hostname}:{parts.port or 5432}").geturl()
    result = await run_app("sweep", database_url=url)
    line = result.one_error_line()
    assert "DATABASE_URL" in line
    assert "hunter2" not in line


@pytest.fixture(scope="module")
def unmigrated_url(create_database: Callable[..., str]) -> str:
    return create_database(migrate=False)


@pytest.mark.parametrize("command", [["serve"], ["sweep"], ["user", "delete", "bob"]])
async def test_unmigrated_database_says_to_run_alembic(unmigrated_url: str, command: list[str]) -> None:
    result = await run_app(*command, database_url=unmigrated_url)
    assert "run `alembic upgrade head`" in result.one_error_line()


async def test_dyno_without_database_url_is_one_line() -> None:
    result = await run_app("serve", database_url=None, DYNO="web.1")
    assert "DATABASE_URL" in result.one_error_line()


async def test_serve_on_a_port_in_use_is_one_error_line(db_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run_app_command("serve", database_url=db_url, PORT=str(port), HOST="127.0.0.1")
    assert code == 1
    expected = f"error: cannot listen on 127.0.0.1:{port}: address already in use (set PORT)"
    assert err.strip().splitlines()[-1] == expected
    assert "Traceback" not in err
