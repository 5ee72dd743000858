"""The demo app (app/) for its tests: its settings with the test keys, a test server on its own
runner, its log format captured, users, logins, and `python -m app` in a subprocess.

Only tests/app imports this (it imports the app); the library's tests have support.keys,
support.postgres and support.logs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import sys
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from app import logs as app_logs
from app import usernames
from app.config import Settings
from app.passwords import hash_once
from app.runner import Runner
from support.keys import AUTH_KEY, ENC_KEY
from support.paths import REPO_ROOT

TEST_PASSWORD_COST = 4  # scrypt N=16: the cost is a setting, and tests need many logins


def make_settings(url: str, **overrides: object) -> Settings:
    base = Settings(
        database_url=url,
        authentication_keys=(AUTH_KEY,),
        encryption_keys=(ENC_KEY,),
        password_cost=TEST_PASSWORD_COST,
        host="127.0.0.1",
    )
    return dataclasses.replace(base, **overrides)  # type: ignore[arg-type]


class AppTestServer(TestServer):
    """aiohttp's TestServer serving through the app's own runner (app/runner.py), as `serve` and
    the gunicorn workers do: protocol-level errors are answered and logged as in production."""

    async def _make_runner(self, **kwargs: Any) -> Runner:
        return Runner(self.app, **kwargs)


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


async def add_user(conn: asyncpg.Connection, username: str, password: str, *, legacy: bool = False) -> int:
    """A user, as `user add` stores one (its key and skeleton, app/usernames.py); `legacy`: as
    code before migration 0007 stored one (the spelling alone), for older schemas."""
    password_hash = await hash_once(password, TEST_PASSWORD_COST)
    if legacy:
        return await conn.fetchval(
            "INSERT INTO users (username, password_hash) VALUES ($1, $2) RETURNING id", username, password_hash
        )
    name_key = usernames.key(username)
    return await conn.fetchval(
        "INSERT INTO users (username, username_key, username_skeleton, password_hash) VALUES ($1, $2, $3, $4)"
        " RETURNING id",
        username,
        name_key,
        usernames.skeleton(name_key),
        password_hash,
    )


async def login(client: TestClient, username: str, password: str, *, remember: bool = False) -> None:
    form = {"username": username, "password": password, **({"remember": "on"} if remember else {})}
    response = await client.post("/login", data=form, allow_redirects=False)
    assert response.status == 303, await response.text()
    assert response.headers["Location"] == "/", "login failed"


def session_cookie(client: TestClient, name: str = "session") -> str | None:
    for cookie in client.session.cookie_jar:
        if cookie.key == name:
            return cookie.value
    return None


def app_env(**values: str | None) -> dict[str, str]:
    """os.environ without any setting the app reads, then `values` (None removes a key): the
    environment for a `python -m app` / `alembic` subprocess."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SESSION_", "DATABASE_", "SWEEP_", "LOGIN_"))
        and k not in ("DYNO", "PORT", "HOST", "TRUST_PROXY", "EMBEDDED_DATA_DIR", "PASSWORD_HASH_COST", "LOG_LEVEL")
        and k
        not in (
            "WEB_CONCURRENCY",
            "GUNICORN_CMD_ARGS",
            "METRICS_TOKEN",
            "LOG_FORMAT",
            "PROMETHEUS_MULTIPROC_DIR",
            "APP_METRICS_DIR_MADE_BY_SERVE",
        )
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
