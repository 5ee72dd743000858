"""The demo's /metrics: only with METRICS_TOKEN set, only to that bearer token, and with
WEB_CONCURRENCY=2 (gunicorn workers) one scrape sees every worker (prometheus-client's
multiprocess mode, its directory made by `serve`)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from support.demo import app_env, login, make_settings, session_cookie
from support.keys import AUTH_KEY, ENC_KEY
from support.paths import REPO_ROOT
from support.servers import Servers, children, new_http, signed_in

from app.config import ConfigError, load_settings

TOKEN = "t0k3n-" + "a" * 40
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels}` of a scrape (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        metric, _, number = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', metric))
        if metric.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
            return float(number)
    return 0.0


async def test_no_token_no_metrics(client: TestClient) -> None:
    assert (await client.get("/metrics")).status == 404
    assert (await client.get("/metrics", headers=AUTH)).status == 404


async def test_metrics_need_the_bearer_token(
    make_client: Callable[..., Awaitable[TestClient]], db_url: str, user: tuple[str, str]
) -> None:
    client = await make_client(make_settings(db_url, metrics_token=TOKEN))
    for headers in (
        {},
        {"Authorization": "Bearer "},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"bearer{TOKEN}"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": "Bearer \u00e9" + TOKEN},
    ):
        response = await client.get("/metrics", headers=headers)
        assert response.status == 401, headers
        assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert TOKEN not in await response.text()
    response = await client.get("/metrics", headers=AUTH)
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.headers["Cache-Control"] == "no-store"
    before = await response.text()
    assert value(before, "aiohttp_session_events_total", event="created", reason="") == 0

    await login(client, *user)
    assert (await client.get("/")).status == 200
    cookie = session_cookie(client)
    client.session.cookie_jar.clear()  # else the jar's cookie replaces the forged one
    await client.get("/", headers={"Cookie": "session=" + "A" * 43 + "." + "B" * 43})
    after = await (await client.get("/metrics", headers=AUTH)).text()
    assert value(after, "aiohttp_session_events_total", event="created", reason="") == 1
    loads = value(after, "aiohttp_session_loads_total", outcome="cache_hit") + value(
        after, "aiohttp_session_loads_total", outcome="database"
    )
    assert loads >= 1
    assert value(after, "aiohttp_session_loads_total", outcome="bad_signature") == 1
    assert cookie is not None
    assert cookie not in after


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"METRICS_TOKEN": "short"}, "METRICS_TOKEN must be at least 32 characters"),
        ({"METRICS_TOKEN": "a" * 40 + " b"}, "METRICS_TOKEN must be at least 32 characters"),
        ({"METRICS_TOKEN": "a" * 40 + "\u00e9"}, "METRICS_TOKEN must be at least 32 characters"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT must be text or json"),
        ({"PROMETHEUS_MULTIPROC_DIR": "/nonexistent/metrics"}, "PROMETHEUS_MULTIPROC_DIR must be an existing"),
    ],
)
def test_bad_metrics_and_log_settings_are_refused(env: dict[str, str], message: str) -> None:
    base = {"DATABASE_URL": "postgresql://localhost/x", "SESSION_AUTHENTICATION_KEY": "k" * 32}
    base["SESSION_ENCRYPTION_KEY"] = "e" * 32
    with pytest.raises(ConfigError, match=message) as raised:
        load_settings({**base, **env})
    assert "a" * 40 not in str(raised.value)  # the token is never quoted


def test_metrics_and_log_settings_are_read() -> None:
    env = {
        "DATABASE_URL": "postgresql://localhost/x",
        "SESSION_AUTHENTICATION_KEY": "k" * 32,
        "SESSION_ENCRYPTION_KEY": "e" * 32,
        "METRICS_TOKEN": f" {TOKEN} ",
        "LOG_FORMAT": "JSON",
    }
    settings = load_settings(env)
    assert (settings.metrics_token, settings.log_format, settings.metrics_dir) == (TOKEN, "json", None)
    assert TOKEN not in repr(settings)
    assert load_settings({**env, "METRICS_TOKEN": ""}).metrics_token is None


async def test_one_scrape_sees_every_gunicorn_worker(servers: Servers, db_url: str, user: tuple[str, str]) -> None:
    server = await servers.start(db_url, WEB_CONCURRENCY="2", METRICS_TOKEN=TOKEN)
    workers = {str(pid) for pid in children(server.pid)}
    assert len(workers) == 2, workers

    def worker_pids(text: str) -> set[str]:
        return set(re.findall(r'aiohttp_session_cache_enabled\{pid="(\d+)"\}', text))

    logins = 6
    async with new_http() as http:
        for _ in range(logins):  # a connection each: gunicorn hands them to either worker
            async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as fresh:
                await signed_in(fresh, server.url, *user)
        deadline = time.monotonic() + 15
        while True:
            async with http.get(server.url + "/metrics", headers=AUTH) as response:
                assert response.status == 200
                text = await response.text()
            # Each worker samples its gauges as it starts: both appear in any worker's answer.
            if worker_pids(text) == workers or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert worker_pids(text) == workers, text
        # Counters are summed over the workers, whichever one answers: every scrape has them all.
        for _ in range(4):
            async with (
                aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as fresh,
                fresh.get(server.url + "/metrics", headers=AUTH) as response,
            ):
                scraped = await response.text()
            assert value(scraped, "aiohttp_session_events_total", event="created", reason="") == logins
        async with http.get(server.url + "/metrics") as response:
            assert response.status == 401

        # A worker that dies: gunicorn starts another, and its live gauges leave the scrape.
        directory = metrics_dir_of(int(sorted(workers)[1]))
        assert exists(directory)
        dead = sorted(workers)[0]
        os.kill(int(dead), signal.SIGKILL)
        deadline = time.monotonic() + 20
        while True:
            now = {str(pid) for pid in children(server.pid)}
            async with http.get(server.url + "/metrics", headers=AUTH) as response:
                text = await response.text()
            if (len(now) == 2 and dead not in now and worker_pids(text) == now) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert dead not in worker_pids(text)
        assert worker_pids(text) == now, (now, text)
        assert value(text, "aiohttp_session_events_total", event="created", reason="") == logins  # counters stay
    server.stop()
    assert not exists(directory)  # gunicorn's master removed it as it exited


def metrics_dir_of(pid: int) -> str:
    """The multiprocess directory a worker writes its metrics in (its files are mapped in memory;
    gunicorn's setproctitle overwrites what /proc shows of the environment)."""
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1]
        if "/app-metrics-" in path and path.endswith(".db"):
            return str(Path(path).parent)
    raise AssertionError(f"worker {pid} maps no metrics file")


def exists(path: str) -> bool:
    return Path(path).exists()


@pytest.mark.parametrize("made_by_serve", [False, True], ids=["operators-dir", "serves-dir"])
def test_gunicorn_removes_only_the_metrics_directory_serve_made(
    tmp_path: Path, db_url: str, made_by_serve: bool
) -> None:
    """gunicorn's master, at exit, removes the multiprocess directory `serve` made for the run;
    a PROMETHEUS_MULTIPROC_DIR the operator set (with or without METRICS_TOKEN) is left whole."""
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "keep.txt").write_text("the operator's")
    marker = {"APP_METRICS_DIR_MADE_BY_SERVE": str(directory)} if made_by_serve else {}
    keys = {"SESSION_AUTHENTICATION_KEY": AUTH_KEY.decode(), "SESSION_ENCRYPTION_KEY": ENC_KEY.decode()}
    env = app_env(DATABASE_URL=db_url, PROMETHEUS_MULTIPROC_DIR=str(directory), **keys, **marker)
    exit_hook = (
        "import app.gunicorn_hooks as hooks;"
        " hooks.child_exit(None, type('Worker', (), {'pid': 1})()); hooks.on_exit(None)"
    )
    done = subprocess.run([sys.executable, "-c", exit_hook], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert directory.exists() is not made_by_serve
    if not made_by_serve:
        assert (directory / "keep.txt").read_text() == "the operator's"
