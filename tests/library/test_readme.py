"""The README, tested as written. The app for library users is the very code tested here: the
block is cut out of README.md, run with the library installed from its wheel into a fresh virtual
environment, outside this checkout, against a real PostgreSQL (an empty database: the app creates
the table), with the session cache off and on. What the README says of the demo app (the
docker-compose steps, the settings table, the pictures, the performance tables) is tested in
tests/app/test_app_readme.py."""

from __future__ import annotations

import secrets
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from support.library_envs import Program
from support.ports import free_port
from support.readme import readme_app


def cookie_of(response: aiohttp.ClientResponse) -> str | None:
    morsel = response.cookies.get("session")
    return morsel.value if morsel is not None and morsel.value else None


@pytest.mark.parametrize("cache", ["off", "on"])
async def test_the_readme_app_runs_as_written(cache: str, wheel_python: Path, empty_url: str, tmp_path: Path) -> None:
    url = empty_url
    (tmp_path / "myapp.py").write_text(readme_app())
    program = Program(
        wheel_python,
        tmp_path,
        "myapp.py",
        free_port(),
        DATABASE_URL=url,
        SESSION_AUTHENTICATION_KEY=secrets.token_hex(32),
        SESSION_ENCRYPTION_KEY=secrets.token_hex(32),
        SESSION_CACHE=cache,
    )
    conn = await asyncpg.connect(url)
    try:
        await program.ready()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:

            async def get(cookie: str | None) -> tuple[int, str]:
                headers = {"Cookie": f"session={cookie}"} if cookie else {}
                async with http.get(program.url + "/", headers=headers) as response:
                    return response.status, await response.text()

            async def post(path: str, cookie: str | None, **data: str) -> aiohttp.ClientResponse:
                headers = {"Cookie": f"session={cookie}"} if cookie else {}
                async with http.post(program.url + path, headers=headers, data=data or None) as response:
                    await response.read()
                    return response

            assert (await get(None))[0] == 401
            assert (await post("/login", None, username="mallory")).status == 403
            assert await conn.fetchval("SELECT count(*) FROM sessions") == 0

            login = await post("/login", None, username="alice")
            assert login.status == 200
            first = cookie_of(login)
            assert first is not None
            assert await get(first) == (200, "hello user 1\n")
            assert await conn.fetchval("SELECT user_id FROM sessions") == 1

            sudo = await post("/sudo", first)
            second = cookie_of(sudo)
            assert second is not None
            assert second != first
            assert (await get(first))[0] == 401  # renewed: the old ID is dead
            assert await get(second) == (200, "hello user 1\n")

            assert (await post("/sudo", None)).status == 401  # nobody to elevate
            # A logout over the websocket: saved before the server closes it.
            async with http.ws_connect(program.url + "/ws", headers={"Cookie": f"session={second}"}) as ws:
                await ws.send_str("hi")
                assert (await ws.receive(timeout=10)).data == "hello user 1"
                await ws.send_str("logout")
                assert (await ws.receive(timeout=10)).type is aiohttp.WSMsgType.CLOSE
                assert (await get(second))[0] == 401
            second = cookie_of(await post("/login", None, username="alice"))
            assert second is not None
            assert (await post("/logout", second)).status == 200
            assert (await get(second))[0] == 401
            # Only the tombstone of the renewed ID is left, until the sweeper takes it.
            assert await conn.fetchval("SELECT count(*) FROM sessions WHERE replaced_at IS NULL") == 0
    finally:
        await conn.close()
        output = program.stop()
    assert "Traceback" not in output, output
