"""Real server processes for the multi-process, PgBouncer, fault and soak tests, and the HTTP steps
a browser takes against them.

A `Server` is `python -m app serve` in a subprocess, on a free port, with its output in a file
(never a pipe: a busy server would block on a full one). Clients carry the session cookie
themselves, so one cookie can be shown to any of several servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from functools import partial
from pathlib import Path

import aiohttp
import asyncpg

from support.demo import app_env
from support.keys import AUTH_KEY, ENC_KEY
from support.paths import REPO_ROOT
from support.ports import free_port

COOKIE = "session"
LOGIN_PAGE = "/public/login.html"


class Server:
    """`python -m app serve` on 127.0.0.1:`port` against `database_url`, with `env` on top."""

    def __init__(
        self,
        database_url: str,
        log_dir: Path,
        *,
        port: int | None = None,
        open_files: int | None = None,
        **env: str | None,
    ) -> None:
        self.database_url = database_url
        self.open_files = open_files  # the process's RLIMIT_NOFILE (soft and hard), if set
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = env
        self.log_path = log_dir / f"server-{self.port}-{time.monotonic_ns()}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        values: dict[str, str | None] = {
            "DATABASE_URL": self.database_url,
            "SESSION_AUTHENTICATION_KEY": AUTH_KEY.decode(),
            "SESSION_ENCRYPTION_KEY": ENC_KEY.decode(),
            "HOST": "127.0.0.1",
            "PORT": str(self.port),
            "LOG_LEVEL": "WARNING",
            **self.env,
        }
        self.log_path = self.log_path.with_name(f"server-{self.port}-{time.monotonic_ns()}.log")
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "app", "serve"],
                cwd=REPO_ROOT,
                env=app_env(**values),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a signal from the test reaches only this server
                preexec_fn=None if self.open_files is None else partial(_limit_open_files, self.open_files),
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def run_command(self, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
        """`python -m app ARGS` (a one-off dyno) with this server's settings."""
        values: dict[str, str | None] = {
            "DATABASE_URL": self.database_url,
            "SESSION_AUTHENTICATION_KEY": AUTH_KEY.decode(),
            "SESSION_ENCRYPTION_KEY": ENC_KEY.decode(),
            **self.env,
            **env,
        }
        return run_app(*args, env=values)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    async def ready(self, timeout: float = 30.0) -> Server:
        """Wait until it answers HTTP; fail with its output if it exits or never answers."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise AssertionError(f"server on port {self.port} exited ({self.returncode}):\n{self.log()}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(self.url + LOGIN_PAGE) as response:
                        if response.status == 200:
                            return self
                await asyncio.sleep(0.1)
        raise AssertionError(f"server on port {self.port} did not answer within {timeout} s:\n{self.log()}")

    def ready_sync(self, timeout: float = 30.0) -> Server:
        """`ready` for synchronous fixtures."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive:
                raise AssertionError(f"server on port {self.port} exited ({self.returncode}):\n{self.log()}")
            try:
                with urllib.request.urlopen(self.url + LOGIN_PAGE, timeout=2) as response:  # noqa: S310 - our own http URL
                    if response.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"server on port {self.port} did not answer within {timeout} s:\n{self.log()}")

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    async def wait(self, timeout: float) -> int:
        """The exit status, waiting up to `timeout` seconds for it."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"server on port {self.port} still running after {timeout} s:\n{self.log()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the server and whatever it started (gunicorn workers), then reap it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 30.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def rss_kb(self) -> int:
        """Resident memory of the server and its children (gunicorn workers), in kB."""
        return sum(_rss_kb(pid) for pid in [self.pid, *children(self.pid)])


def _limit_open_files(limit: int) -> None:
    """In the child before exec: at most `limit` open files, soft and hard (`ulimit -n`)."""
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")


def run_app(*args: str, env: dict[str, str | None]) -> subprocess.CompletedProcess[str]:
    """`python -m app ARGS` to completion, with `env` over a clean environment."""
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        cwd=REPO_ROOT,
        env=app_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def is_gunicorn(pid: int) -> bool:
    """The process is gunicorn: `python -m gunicorn ...`, or, where setproctitle is installed
    (mutmut brings it), the title gunicorn gives itself ("gunicorn: master [...]")."""
    return any("gunicorn" in part for part in cmdline(pid))


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _rss_kb(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else 0


class Servers:
    """Servers started by one test, all stopped at its end (killed if they do not stop)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Server] = []

    async def start(
        self, database_url: str, *, port: int | None = None, open_files: int | None = None, **env: str | None
    ) -> Server:
        for _ in range(3):
            server = Server(database_url, self.log_dir, port=port, open_files=open_files, **env).start()
            self.started.append(server)
            try:
                return await server.ready()
            except AssertionError:
                # Another program took the port between our check and the server's bind.
                if port is not None or "address already in use" not in server.log():
                    raise
        raise AssertionError("no free port for the server, three times")

    async def restart(self, server: Server) -> Server:
        """The same server (port, settings) started again after it exited."""
        assert not server.alive
        server.start()
        return await server.ready()

    def stop_all(self) -> None:
        running = [server for server in self.started if server.alive]
        for server in running:
            server.signal(signal.SIGTERM)
        for server in running:
            server.stop(timeout=10)


# -- what a browser does -------------------------------------------------------------------


def new_http(**kwargs: object) -> aiohttp.ClientSession:
    """A client that keeps no cookies of its own: every step passes the session cookie."""
    return aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=15),
        **kwargs,  # type: ignore[arg-type]
    )


def cookie_header(cookie: str | None) -> dict[str, str]:
    return {"Cookie": f"{COOKIE}={cookie}"} if cookie else {}


def set_cookie(response: aiohttp.ClientResponse) -> tuple[str, int | None] | None:
    """The session cookie a response sets: (value, Max-Age), or None."""
    morsel = response.cookies.get(COOKIE)
    if morsel is None:
        return None
    max_age = morsel["max-age"]
    return morsel.value, int(max_age) if max_age else None


async def login(http: aiohttp.ClientSession, base: str, username: str, password: str) -> tuple[int, str | None]:
    """(status, the new session cookie if the login was acknowledged)."""
    async with http.post(
        base + "/login", data={"username": username, "password": password}, allow_redirects=False
    ) as response:
        await response.read()
        cookie = set_cookie(response)
        if response.status == 303 and response.headers.get("Location") == "/" and cookie and cookie[0]:
            return response.status, cookie[0]
        return response.status, None


async def signed_in(http: aiohttp.ClientSession, base: str, username: str, password: str) -> str:
    """The cookie of a new session; the login must succeed."""
    status, cookie = await login(http, base, username, password)
    assert cookie is not None, f"login of {username} through {base} answered {status}"
    return cookie


async def home(
    http: aiohttp.ClientSession, base: str, cookie: str | None
) -> tuple[int, str, tuple[str, int | None] | None]:
    """(status, page, the session cookie the response sets if any)."""
    async with http.get(base + "/", headers=cookie_header(cookie), allow_redirects=False) as response:
        return response.status, await response.text(), set_cookie(response)


async def logout(http: aiohttp.ClientSession, base: str, cookie: str) -> int:
    async with http.post(base + "/logout", headers=cookie_header(cookie), allow_redirects=False) as response:
        await response.read()
        return response.status


async def sessions_page(http: aiohttp.ClientSession, base: str, cookie: str) -> tuple[int, str]:
    async with http.get(base + "/sessions", headers=cookie_header(cookie), allow_redirects=False) as response:
        return response.status, await response.text()


async def revoke(http: aiohttp.ClientSession, base: str, cookie: str, handle: str) -> int:
    async with http.post(
        base + "/sessions/revoke", data={"handle": handle}, headers=cookie_header(cookie), allow_redirects=False
    ) as response:
        await response.read()
        return response.status


def id_hash(cookie: str) -> bytes:
    """The sessions row's key for a cookie value (tokens.id_hash_of of its token part)."""
    return hashlib.sha256(cookie.split(".")[0].encode()).digest()


def handle(cookie: str) -> str:
    """The public handle the sessions page shows for a cookie's session."""
    return id_hash(cookie)[:8].hex()


def is_greeting(status: int, text: str, username: str) -> bool:
    return status == 200 and f"Hello {username}</h1>" in text


async def row_exists(conn: asyncpg.Connection, cookie: str) -> bool:
    """A session row (a tombstone, left by a login that used the cookie up, does not count)."""
    return bool(
        await conn.fetchval("SELECT count(*) FROM sessions WHERE id_hash = $1 AND replaced_at IS NULL", id_hash(cookie))
    )
