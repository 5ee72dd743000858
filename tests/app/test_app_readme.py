"""The README, tested as written, where it speaks of the demo app: the docker-compose steps run as
written; the settings table holds every setting the app reads, with its default; the pictures
exist; the performance tables are the committed benchmark run's. (The README's app for library
users: tests/library/test_readme.py.)"""

from __future__ import annotations

import asyncio
import re
import secrets
import subprocess
import sys

import aiohttp
from support.demo import app_env
from support.paths import REPO_ROOT
from support.ports import free_port
from support.readme import readme

# -- the README agrees with the demo's code --------------------------------------------------------


def test_every_setting_the_app_reads_is_in_the_settings_table_with_its_default() -> None:
    config = (REPO_ROOT / "app" / "config.py").read_text()
    read = set(re.findall(r'env(?:\.get)?\(\s*"([A-Z][A-Z0-9_]+)"', config))
    read |= set(re.findall(r'_(?:int|float|bool)\(\s*env,\s*"([A-Z][A-Z0-9_]+)"', config))
    table = readme().split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([A-Z][A-Z0-9_]+)` \| ([^|]*) \|", table, re.MULTILINE))
    assert read - {"DYNO"} <= set(rows), f"not in the README's settings table: {sorted(read - set(rows))}"
    assert set(rows) <= read, f"in the table but never read: {sorted(set(rows) - read)}"
    for name, default in re.findall(r'_(?:int|float)\(\s*env,\s*"([A-Z][A-Z0-9_]+)",\s*([0-9_.]+)', config):
        assert rows[name].strip() == f"`{default.replace('_', '')}`", (name, rows[name])


def test_the_pictures_are_there_and_show_the_three_pages() -> None:
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme())
    local = [p for p in pictures if not p.startswith("http")]
    assert {"docs/login.png", "docs/home.png", "docs/sessions.png"} <= set(local)
    for path in local:
        assert (REPO_ROOT / path).is_file(), path


def test_the_deploy_button_is_herokus_markup_for_app_json() -> None:
    assert (
        "[![Deploy to Heroku](https://www.herokucdn.com/deploy/button.svg)](https://www.heroku.com/deploy)" in readme()
    )
    assert (REPO_ROOT / "app.json").is_file()


def test_the_performance_tables_are_the_committed_runs() -> None:
    from bench.report import README_BEGIN, README_END

    def block(text: str) -> str:
        return text[text.index(README_BEGIN) : text.index(README_END)]

    results = (REPO_ROOT / "bench" / "results" / "results.md").read_text()
    assert block(readme()) == block(results), "run `python3 dev.py bench --update-readme`"


async def test_the_docker_compose_steps_run_as_written(empty_url: str) -> None:
    # The block's own lines, but for starting docker (any PostgreSQL does) and the exports, whose
    # values the environment below holds.
    section = readme().split("- **With docker-compose**", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    steps = [line.strip() for line in section.strip().splitlines() if line.strip().startswith("python3 dev.py")]
    assert steps == ["python3 dev.py alembic upgrade head", "python3 dev.py run user add alice", "python3 dev.py run"]
    port = free_port()
    env = app_env(
        DATABASE_URL=empty_url,
        SESSION_AUTHENTICATION_KEY=secrets.token_hex(32),
        SESSION_ENCRYPTION_KEY=secrets.token_hex(16),
        PORT=str(port),
        HOST="127.0.0.1",
    )

    def run(step: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        argv = [sys.executable, *step.split()[1:]]  # python3 is this Python
        return subprocess.run(argv, cwd=REPO_ROOT, env=env, input=stdin, capture_output=True, timeout=120)

    migrated = await asyncio.to_thread(run, steps[0])
    assert migrated.returncode == 0, migrated.stderr.decode()
    added = await asyncio.to_thread(run, steps[1], b"alice's password\n")
    assert added.returncode == 0, added.stderr.decode()
    server = await asyncio.create_subprocess_exec(
        sys.executable,
        *steps[2].split()[1:],
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
            for _ in range(200):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/public/login.html") as page:
                        if page.status == 200:
                            break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.1)
            async with http.post(
                f"http://127.0.0.1:{port}/login",
                data={"username": "alice", "password": "alice's password"},
                allow_redirects=False,
            ) as response:
                assert response.status == 303
                assert response.headers["Location"] == "/"
    finally:
        server.terminate()
        output = (await asyncio.wait_for(server.communicate(), 30))[0].decode()
    assert server.returncode == 0, output
