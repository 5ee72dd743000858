"""Issue 21's whole story through HTTP, on the installed wheel with its extras: an app whose users
are UUIDs, on app.example.com and api.example.com sharing a ``Domain=example.com`` session
cookie (a real cookie jar applies the domain rules), signing in through aiohttp-security with
"remember me", a hook recording session events (a revocation made through one process reaching
the other's), and Prometheus metrics behind a bearer token (tests/support/example_com_app.py)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from support.hosts import browser
from support.library_envs import Program
from support.paths import REPO_ROOT
from support.ports import free_port

REMEMBER = 30 * 24 * 3600
ABSOLUTE = 8 * 3600


async def within(seconds: float, check: Callable[[], Awaitable[bool]], what: str) -> None:
    deadline = time.monotonic() + seconds
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (not within {seconds} s)")
        await asyncio.sleep(0.05)


def set_cookie(response: aiohttp.ClientResponse) -> str:
    headers = [value for value in response.headers.getall("Set-Cookie", []) if value.startswith("sid=")]
    assert len(headers) == 1, headers
    return headers[0]


async def test_uuid_users_on_two_hosts_with_remember_me_hooks_and_metrics(
    extras_python: Path, empty_url: str, tmp_path: Path
) -> None:
    shutil.copy(REPO_ROOT / "tests" / "support" / "example_com_app.py", tmp_path / "example_com_app.py")
    token = secrets.token_urlsafe(32)
    env = {
        "DATABASE_URL": empty_url,
        "METRICS_TOKEN": token,
        "AUTHENTICATION_KEY": secrets.token_hex(32),
        "ENCRYPTION_KEY": secrets.token_hex(32),
    }
    site_port, api_port = free_port(), free_port()
    site = Program(extras_python, tmp_path, "example_com_app.py", site_port, **env)
    api = Program(extras_python, tmp_path, "example_com_app.py", api_port, **env)
    SITE, API = f"http://app.example.com:{site_port}", f"http://api.example.com:{api_port}"
    conn = await asyncpg.connect(empty_url)
    try:
        await site.ready("/health")
        await api.ready("/health")
        ada = str(await conn.fetchval("SELECT id FROM example_users WHERE name = 'ada'"))
        assert uuid.UUID(ada)
        async with (
            browser("app.example.com", "api.example.com") as laptop,
            browser("app.example.com", "api.example.com") as phone,
        ):
            # The laptop signs in on the site, remembered: a cookie for the whole domain, of
            # thirty days, and a row that lives thirty days, tied to the UUID.
            async with laptop.post(f"{SITE}/login", data={"name": "ada", "remember": "on"}) as response:
                assert response.status == 200, await response.text()
                header = set_cookie(response)
            assert "Domain=example.com" in header, header
            assert f"Max-Age={REMEMBER}" in header, header
            assert "HttpOnly" in header, header
            assert "SameSite=Lax" in header, header
            rows = await conn.fetch(
                "SELECT principal, user_id, extract(epoch FROM absolute_expires_at - created_at) AS lifetime"
                " FROM sessions WHERE principal IS NOT NULL"
            )
            assert [(r["principal"], r["user_id"], r["lifetime"]) for r in rows] == [(ada, None, REMEMBER)]

            # The API, another host and another process, knows the laptop by the same cookie.
            async with laptop.get(f"{API}/me") as response:
                assert response.status == 200
                assert await response.json() == {"user": ada, "host": "api.example.com", "max_age": REMEMBER}

            # The phone signs in through the API, not remembered: a browser-session cookie
            # (no Max-Age, no Expires), the server's 8-hour lifetime.
            async with phone.post(f"{API}/login", data={"name": "ada"}) as response:
                assert response.status == 200
                header = set_cookie(response)
            assert "Domain=example.com" in header, header
            assert "Max-Age" not in header, header
            assert "expires" not in header.lower(), header
            async with phone.get(f"{SITE}/me") as response:
                assert (await response.json())["max_age"] is None
            lifetimes = await conn.fetch(
                "SELECT extract(epoch FROM absolute_expires_at - created_at) AS lifetime FROM sessions"
                " WHERE principal = $1 ORDER BY lifetime",
                ada,
            )
            assert [r["lifetime"] for r in lifetimes] == [ABSOLUTE, REMEMBER]
            async with laptop.get(f"{SITE}/sessions") as response:
                assert len(await response.json()) == 2

            # Both logins were seen by the hooks of the process that made them, with the UUID.
            async def events(program_url: str) -> list[dict[str, Any]]:
                async with laptop.get(f"{program_url}/events") as response:
                    return list(await response.json())

            assert {"name": "created", "user_id": ada, "reason": None, "local": True} in await events(SITE)
            assert {"name": "created", "user_id": ada, "reason": None, "local": True} in await events(API)

            # The laptop signs out everywhere else through the API: the phone's session ends, and
            # the site's process hears of the revocation (its hook, its cache) over PostgreSQL.
            async with laptop.post(f"{API}/sessions/end-others") as response:
                assert await response.json() == {"ended": 1}

            async def site_heard() -> bool:
                return any(e["name"] == "revoked" and not e["local"] for e in await events(SITE))

            await within(10, site_heard, "the site's hook heard of the revocation")
            remote = [e for e in await events(SITE) if e["name"] == "revoked"]
            assert remote == [{"name": "revoked", "user_id": ada, "reason": "user_request", "local": False}]
            async with phone.get(f"{SITE}/me") as response:
                assert response.status == 401
            async with laptop.get(f"{SITE}/me") as response:
                assert response.status == 200

            # Metrics: only with the token; each process counts what it did.
            async with laptop.get(f"{API}/metrics") as response:
                assert response.status == 401
            async with laptop.get(f"{API}/metrics", headers={"Authorization": "Bearer " + "x" * len(token)}) as r:
                assert r.status == 401
            async with laptop.get(f"{API}/metrics", headers={"Authorization": f"Bearer {token}"}) as response:
                assert response.status == 200
                scrape = await response.text()
            assert 'aiohttp_session_events_total{event="created",reason=""} 1.0' in scrape, scrape
            assert 'aiohttp_session_events_total{event="revoked",reason="other"} 1.0' in scrape, scrape
            assert ada not in scrape  # no user id in a label

            # Logging out on the site ends the session for both hosts: the cookie is expired for
            # the whole domain, and the row is gone.
            async with laptop.post(f"{SITE}/logout") as response:
                assert response.status == 200
                header = set_cookie(response)
            assert "Domain=example.com" in header, header
            assert "Max-Age=0" in header, header
            async with laptop.get(f"{API}/me") as response:
                assert response.status == 401
            assert await conn.fetchval("SELECT count(*) FROM sessions WHERE principal = $1", ada) == 0
    finally:
        await conn.close()
        outputs = site.stop() + api.stop()
    assert "Traceback" not in outputs, outputs
