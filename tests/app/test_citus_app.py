"""The demo on a real Citus cluster (support/citus.py): the release phase (`alembic upgrade
head`, as Heroku's release phase runs it) against the coordinator distributes the schema
(migration 0006), and `python -m app serve` given only the coordinator's DATABASE_URL serves every
page and runs every command, in the library's Citus mode, which it finds out at start-up."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import asyncpg
import pytest
from support.demo import app_env, run_app_command
from support.paths import REPO_ROOT
from support.servers import Server, handle, home, is_greeting, login, logout, new_http, revoke, sessions_page, signed_in

pytestmark = pytest.mark.citus

PASSWORD = "a password of alice's"


async def release(url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alembic", "upgrade", "head",
        cwd=REPO_ROOT, env=app_env(DATABASE_URL=url), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()


async def command(url: str, *args: str, password: bool = False) -> str:
    stdin = f"{PASSWORD}\n{PASSWORD}\n".encode() if password else None
    status, out, err = await run_app_command(*args, database_url=url, stdin=stdin)
    assert status == 0, out + err
    return out


async def test_the_release_phase_distributes_the_schema_and_every_page_works(citus_url: str, tmp_path: Path) -> None:
    await release(citus_url)
    conn = await asyncpg.connect(citus_url)
    try:
        layout = {row[0]: row[1] for row in await conn.fetch(
            "SELECT logicalrelid::text, partmethod::text FROM pg_dist_partition"
        )}  # fmt: skip
        assert layout == {"users": "n", "sessions": "h"}  # a reference table; distributed by hash
        await release(citus_url)  # the release phase of the next deploy: nothing to do
        # A setting Citus cannot honour: one line, as any bad setting, not a traceback.
        status, out, err = await run_app_command("sweep", database_url=citus_url, SESSION_DURABLE_WRITES="off")
        assert (status, out) == (1, "")
        assert err.strip() == (
            "error: SESSION_DURABLE_WRITES=off cannot run on Citus (the sessions table is distributed): unset it"
        )
        await command(citus_url, "user", "add", "alice", password=True)
        # The username rules (migration 0007: users is a reference table, its unique indexes on
        # every node): a look-alike is refused, and of two added at once, one is created.
        stdin = f"{PASSWORD}\n".encode()
        status, out, err = await run_app_command("user", "add", "\u0430lice", database_url=citus_url, stdin=stdin)
        assert (status, out) == (1, ""), err
        assert "looks like the existing user 'alice'" in err
        both = await asyncio.gather(
            *(run_app_command("user", "add", name, database_url=citus_url, stdin=stdin) for name in ("bob", "b\u043eb"))
        )
        assert sorted(status for status, _, _ in both) == [0, 1], both
        assert await conn.fetchval("SELECT count(*) FROM users WHERE username_skeleton = 'bob'") == 1
        await command(citus_url, "user", "delete", "bob" if both[0][0] == 0 else "b\u043eb")
        status, out, err = await run_app_command("user", "collisions", database_url=citus_url)
        assert (status, out) == (0, ""), err
        assert err.endswith("\nno accounts collide under the username rules\n")  # after Citus mode's INFO line
        server = Server(citus_url, tmp_path).start()
        try:
            await server.ready()
            base = server.url
            async with new_http() as http:
                phone = await signed_in(http, base, "alice", PASSWORD)
                laptop = await signed_in(http, base, "alice", PASSWORD)
                tablet = await signed_in(http, base, "alice", PASSWORD)
                status, text, _ = await home(http, base, laptop)
                assert is_greeting(status, text, "alice")
                status, page = await sessions_page(http, base, laptop)
                assert status == 200
                assert all(handle(cookie) in page for cookie in (phone, laptop, tablet))
                # Revoke one; then sign out everywhere else.
                assert await revoke(http, base, laptop, handle(phone)) == 303
                assert (await home(http, base, phone))[0] == 303
                async with http.post(
                    base + "/sessions/revoke-others", headers={"Cookie": f"session={laptop}"}, allow_redirects=False
                ) as response:
                    assert response.status == 303
                assert (await home(http, base, tablet))[0] == 303
                assert is_greeting(*(await home(http, base, laptop))[:2], "alice")
                # A password reset ends every session, from another process (the CLI): the
                # server's cache hears the library's own notification.
                assert "reset the password" in await command(citus_url, "user", "add", "alice", password=True)
                assert (await home(http, base, laptop))[0] == 303
                again = await signed_in(http, base, "alice", PASSWORD)
                assert await logout(http, base, again) == 303
                assert (await home(http, base, again))[0] == 303
                last = await signed_in(http, base, "alice", PASSWORD)
                assert (await home(http, base, last))[0] == 200
                await command(citus_url, "user", "delete", "alice")
                assert (await home(http, base, last))[0] == 303
                assert await conn.fetchval("SELECT count(*) FROM sessions WHERE idle_expires_at > now()") == 0
                # The throttle (the coordinator's own table): wrong passwords end in 429.
                statuses = [(await login(http, base, "bob", "not the password"))[0] for _ in range(6)]
                assert statuses[:5] == [303] * 5
                assert statuses[5] == 429
            assert "removed" in await command(citus_url, "sweep")
        finally:
            server.stop()
        assert "Traceback" not in server.log()
    finally:
        await conn.close()
