"""Logins under attack, through the real app on real PostgreSQL: concurrent guesses counted before
they are checked (one process and two), a login racing a password reset or a deletion, device
cookies against lockouts, addresses normalised, the cap on sessions per user, a login form
submitted many times at once, and the owner's device signing in while strangers fill the hash
queue."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient
from support.demo import login, make_settings, run_app_command, session_cookie
from support.servers import Servers, new_http

from app import passwords, usernames
from app.appkeys import HASHER
from app.config import Settings
from app.throttle import Limits

if TYPE_CHECKING:
    from app.passwords import Admission

MakeClient = Callable[[Settings], Awaitable[TestClient]]
LOGIN_FAILED = "/public/login.html?error=1"


async def attempt(
    client: TestClient, username: str, password: str, *, ip: str | None = None, cookies: str | None = None
) -> aiohttp.ClientResponse:
    headers = {}
    if ip is not None:
        headers["X-Forwarded-For"] = ip
        headers["X-Forwarded-Proto"] = "https"
    if cookies is not None:
        headers["Cookie"] = cookies
    response = await client.post(
        "/login", data={"username": username, "password": password}, headers=headers, allow_redirects=False
    )
    await response.read()
    return response


def checked(responses: list[aiohttp.ClientResponse]) -> int:
    """How many attempts reached the password check: all but the 429s, and the 503s (more logins
    at once than the process takes in hand: refused before they are counted)."""
    assert {r.status for r in responses} <= {303, 429, 503}, [r.status for r in responses]
    return sum(r.status == 303 for r in responses)


async def live_sessions(pg: asyncpg.Connection, username: str) -> int:
    return await pg.fetchval(
        "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id"
        " WHERE lower(u.username) = lower($1) AND s.idle_expires_at > now() AND s.absolute_expires_at > now()",
        username,
    )


# -- 1: concurrent guesses are counted before they are checked -------------------------------


@pytest.mark.parametrize("burst", [40, 100, 200])
async def test_concurrent_wrong_passwords_check_at_most_the_limit(
    client: TestClient, user: tuple[str, str], burst: int
) -> None:
    responses = await asyncio.gather(*(attempt(client, user[0], f"wrong-{i}") for i in range(burst)))
    assert checked(responses) == Limits().per_username_ip  # 5 checked, every other one 429
    hasher = client.app[HASHER]
    assert (hasher._queued, hasher._device_queued) == (0, 0)  # the refused gave their places back
    # The owner's right password inside the window is refused too: the count holds.
    assert (await attempt(client, *user)).status == 429


async def test_a_right_password_inside_a_burst_does_not_reopen_the_door(
    client: TestClient, user: tuple[str, str]
) -> None:
    guesses = [attempt(client, user[0], f"wrong-{i}") for i in range(39)]
    guesses.insert(20, attempt(client, *user))
    responses = await asyncio.gather(*guesses)
    assert checked(responses) == Limits().per_username_ip  # the right one among them or not


async def test_two_processes_share_the_count(db_url: str, user: tuple[str, str], tmp_path: Path) -> None:
    servers = Servers(tmp_path)
    try:
        a, b = await servers.start(db_url), await servers.start(db_url)

        async def one(base: str, i: int) -> int:
            async with (
                new_http() as http,
                http.post(
                    base + "/login", data={"username": user[0], "password": f"wrong-{i}"}, allow_redirects=False
                ) as response,
            ):
                return response.status

        statuses = await asyncio.gather(*(one((a, b)[i % 2].url, i) for i in range(40)))
    finally:
        servers.stop_all()
    assert sorted(set(statuses)) == [303, 429]
    assert statuses.count(303) == Limits().per_username_ip


# -- 7: a login checked against an old password does not outlive the reset -------------------


@pytest.mark.parametrize("change", ["reset", "delete"])
async def test_a_login_racing_a_password_change_creates_no_session(
    client: TestClient, user: tuple[str, str], db_url: str, pg: asyncpg.Connection, change: str
) -> None:
    """The login's password is verified against the hash read before the operator's command
    commits; it may finish only after. Its session must not be created (nor may it 500)."""
    hasher = client.app[HASHER]
    verify = hasher.verify
    verified, go_on = asyncio.Event(), asyncio.Event()

    async def held(password: str, encoded: str | None, admission: Admission | None = None) -> bool:
        result = await verify(password, encoded, admission)
        verified.set()
        await go_on.wait()
        return result

    hasher.verify = held  # type: ignore[method-assign]  # the real check, then a pause
    pending = asyncio.create_task(attempt(client, *user))
    async with asyncio.timeout(10):
        await verified.wait()
    if change == "reset":
        status, _, err = await run_app_command("user", "add", user[0], database_url=db_url, stdin=b"a new password\n")
    else:
        status, _, err = await run_app_command("user", "delete", user[0], database_url=db_url)
    assert status == 0, err
    go_on.set()
    response = await pending
    assert response.status == 303
    assert response.headers["Location"] == LOGIN_FAILED
    assert "session=" not in ";".join(response.headers.getall("Set-Cookie", []))
    assert await pg.fetchval("SELECT count(*) FROM sessions WHERE user_id IS NOT NULL") == 0
    if change == "reset":
        assert (await attempt(client, user[0], "a new password")).headers["Location"] == "/"


# -- 9: device cookies, and addresses counted as what they are --------------------------------


@pytest.fixture
async def proxied(make_client: MakeClient, db_url: str) -> TestClient:
    """The app behind a trusted proxy: the address is the last X-Forwarded-For entry."""
    return await make_client(make_settings(db_url, trust_proxy=True))


def device_cookie(response: aiohttp.ClientResponse) -> str:
    morsel = response.cookies.get("__Host-device")
    assert morsel is not None, response.headers.getall("Set-Cookie", [])
    assert morsel.value
    return f"__Host-device={morsel.value}"


async def test_a_known_device_signs_in_while_the_username_is_locked_for_everyone_else(
    proxied: TestClient, user: tuple[str, str]
) -> None:
    first = await attempt(proxied, *user, ip="198.51.100.7")
    assert first.headers["Location"] == "/"
    device = device_cookie(first)

    # 100 failures for alice from 20 addresses (5 each): the username count is full.
    for n in range(20):
        for i in range(5):
            assert (await attempt(proxied, user[0], f"guess-{n}-{i}", ip=f"203.0.113.{n}")).status == 303
    locked = await attempt(proxied, *user, ip="192.0.2.50")  # a new browser, right password
    assert locked.status == 429

    # Alice's own browser keeps working, from wherever she is.
    mine = await attempt(proxied, *user, ip="192.0.2.51", cookies=device)
    assert mine.status == 303
    assert mine.headers["Location"] == "/"

    # Someone else's device cookie, or a forged one, is no exemption.
    forged = device.rsplit(".", 1)[0] + "." + "A" * 43
    assert (await attempt(proxied, *user, ip="192.0.2.52", cookies=forged)).status == 429


async def test_a_device_cookie_is_itself_throttled(proxied: TestClient, user: tuple[str, str]) -> None:
    device = device_cookie(await attempt(proxied, *user, ip="198.51.100.8"))
    for i in range(Limits().per_device):
        assert (await attempt(proxied, user[0], f"wrong-{i}", ip=f"198.51.100.{20 + i}", cookies=device)).status == 303
    refused = await attempt(proxied, *user, ip="198.51.100.99", cookies=device)
    assert refused.status == 429


async def test_ipv6_addresses_count_per_64_and_spellings_of_one_address_are_one(
    proxied: TestClient, user: tuple[str, str]
) -> None:
    for i in range(1, 6):  # five addresses of one /64
        assert (await attempt(proxied, user[0], "wrong", ip=f"2001:db8:1:2::{i}")).status == 303
    assert (await attempt(proxied, *user, ip="2001:db8:1:2::ffff")).status == 429
    assert (await attempt(proxied, user[0], "wrong", ip="2001:db8:1:3::1")).status == 303  # another /64

    for ip in ("::1", "0:0:0:0:0:0:0:1", "::0001", "0::1", "::1"):
        assert (await attempt(proxied, user[0], "wrong", ip=ip)).status == 303
    assert (await attempt(proxied, *user, ip="0000:0000::1")).status == 429

    for ip in ("10.9.8.7", "::ffff:10.9.8.7", "::ffff:a09:807", "10.9.8.7", "::FFFF:10.9.8.7"):
        assert (await attempt(proxied, user[0], "wrong", ip=ip)).status == 303
    assert (await attempt(proxied, *user, ip="10.9.8.7")).status == 429


# -- 10: sessions per user are capped ----------------------------------------------------------


async def test_logins_beyond_the_cap_end_the_least_recently_used_sessions(
    make_client: MakeClient, db_url: str, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    settings = make_settings(db_url, max_sessions_per_user=3)
    browsers = [await make_client(settings) for _ in range(5)]
    for browser in browsers:
        await login(browser, *user)
        await asyncio.sleep(0.01)
    assert await live_sessions(pg, user[0]) == 3
    for browser, live in zip(browsers, [False, False, True, True, True], strict=True):
        response = await browser.get("/", allow_redirects=False)
        assert (response.status == 200) is live
    page = await (await browsers[-1].get("/sessions")).text()
    assert page.count('name="handle"') == 3

    # Many at once: once all are answered, the cap holds.
    crowd = [await make_client(settings) for _ in range(12)]
    await asyncio.gather(*(login(browser, *user) for browser in crowd))
    assert await live_sessions(pg, user[0]) == 3


# -- 11: a login form submitted many times at once leaves one session ---------------------------


async def test_a_login_submitted_five_times_at_once_leaves_one_session(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    await login(client, *user)
    pre_login = session_cookie(client)
    assert pre_login is not None
    client.session.cookie_jar.clear()  # each request below carries exactly the pre-login cookie
    responses = await asyncio.gather(*(attempt(client, *user, cookies=f"session={pre_login}") for _ in range(5)))
    assert [r.headers["Location"] for r in responses] == ["/"] * 5
    made = [r for r in responses if any(c.startswith("session=") for c in r.headers.getall("Set-Cookie", []))]
    assert len(made) == 1  # one new session; the others set no session cookie at all
    assert await live_sessions(pg, user[0]) == 1
    new = made[0].cookies["session"].value
    client.session.cookie_jar.clear()
    assert (await client.get("/", headers={"Cookie": f"session={new}"}, allow_redirects=False)).status == 200
    assert (await client.get("/", headers={"Cookie": f"session={pre_login}"}, allow_redirects=False)).status == 303


# -- found by a second attack: spellings, device cookies after a reset, shared addresses -------


async def test_no_spelling_that_signs_in_as_a_user_escapes_that_users_count(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    for _ in range(5):
        assert (await attempt(client, user[0], "wrong")).status == 303
    # Whatever the app's one normalisation (app/usernames.py) takes for "alice" is counted as
    # alice; "alİce" (lower-cased "ali̇ce") is another name, whatever the database's lower() says.
    for variant in ("ALICE", "Alice", "\uff41\uff4c\uff49\uff43\uff45", "alİce", "ALİCE"):
        names_alice = usernames.key_or_none(variant) == "alice"
        assert names_alice == (variant not in ("alİce", "ALİCE"))
        if names_alice:
            assert (await attempt(client, variant, user[1])).status == 429, variant
        else:  # another username altogether, which no user has: it signs nobody in
            response = await attempt(client, variant, user[1])
            assert response.headers.get("Location") == LOGIN_FAILED, variant


async def test_a_password_reset_revokes_the_users_device_cookies(
    proxied: TestClient, user: tuple[str, str], db_url: str
) -> None:
    device = device_cookie(await attempt(proxied, *user, ip="198.51.100.10"))
    status, _, err = await run_app_command("user", "add", user[0], database_url=db_url, stdin=b"the new password\n")
    assert status == 0, err
    for n in range(20):  # lock the username for untrusted browsers: 100 failures
        for i in range(5):
            await attempt(proxied, user[0], f"guess-{n}-{i}", ip=f"203.0.113.{n}")
    # The old device cookie (from the old password) is no longer an exemption.
    assert (await attempt(proxied, user[0], "the new password", ip="198.51.100.11", cookies=device)).status == 429


async def test_a_known_device_is_not_locked_out_by_others_at_its_address(
    proxied: TestClient, user: tuple[str, str]
) -> None:
    device = device_cookie(await attempt(proxied, *user, ip="198.51.100.12"))
    for i in range(Limits().per_ip):  # someone behind the same address sprays usernames
        await attempt(proxied, f"spray{i}", "wrong", ip="198.51.100.12")
    assert (await attempt(proxied, "someone-else", "wrong", ip="198.51.100.12")).status == 429
    mine = await attempt(proxied, *user, ip="198.51.100.12", cookies=device)
    assert mine.headers["Location"] == "/"


@pytest.mark.parametrize("order", ["real first", "junk first"])
async def test_a_second_device_cookie_of_the_name_cannot_hide_the_real_one(
    proxied: TestClient, user: tuple[str, str], order: str
) -> None:
    device = device_cookie(await attempt(proxied, *user, ip="198.51.100.13"))
    for n in range(20):
        for i in range(5):
            await attempt(proxied, user[0], f"guess-{n}-{i}", ip=f"203.0.113.{n}")
    pair = [device, "__Host-device=1.AAAAAAAAAAAAAAAAAAAAAA." + "B" * 43]
    header = "; ".join(pair if order == "real first" else reversed(pair))
    assert (await attempt(proxied, *user, ip="198.51.100.14", cookies=header)).headers["Location"] == "/"


async def test_a_flood_of_logins_is_refused_before_it_is_counted(
    client: TestClient, user: tuple[str, str], pg: asyncpg.Connection
) -> None:
    """More logins at once than the process can hash: the excess is answered 503 at once, and
    costs no attempt (the hasher's queue is bounded)."""
    hasher = client.app[HASHER]
    verify, go_on = hasher.verify, asyncio.Event()

    async def held(password: str, encoded: str | None, admission: Admission | None = None) -> bool:
        await go_on.wait()
        return await verify(password, encoded, admission)

    hasher.verify = held  # type: ignore[method-assign]
    hasher._max_queued = 3  # what concurrency + max_waiting would allow, made small
    hasher._queued = 3  # three sign-ins already in hand
    try:
        refused = await asyncio.gather(*(attempt(client, user[0], f"x{i}") for i in range(10)))
    finally:
        hasher._queued = 0
        go_on.set()
    assert {r.status for r in refused} == {503}
    assert all(r.headers["Retry-After"] == "2" for r in refused)
    assert await pg.fetchval("SELECT count(*) FROM login_failures") == 0


# -- issue 20, 6: a flood that fills the hash queue does not refuse the owner -----------------


@dataclass
class Flood:
    strangers: list[asyncio.Task[aiohttp.ClientResponse]]
    gate: threading.Event  # set: the strangers' derivations go on
    ran_on: dict[str, str]  # password -> the name of the thread that derived it (the last time)

    async def end(self) -> list[aiohttp.ClientResponse]:
        """Let the strangers' hashes finish; their answers."""
        assert not any(task.done() for task in self.strangers)  # they held their places all along
        self.gate.set()
        return await asyncio.gather(*self.strangers)


@pytest.fixture
async def owner_device(proxied: TestClient, user: tuple[str, str]) -> str:
    """The owner's device cookie, from a sign-in before the flood."""
    return device_cookie(await attempt(proxied, *user, ip="198.51.100.30"))


@pytest.fixture
async def flood(proxied: TestClient, owner_device: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Flood]:
    """Strangers' wrong logins, from three /64s of one /48, hold every place of the strangers'
    hash queue: their derivations block in the hasher's threads until `Flood.end`. The queue is
    made 3 long (2 hashing, 1 waiting; 34 by default) so that three attempts fill it."""
    hasher = proxied.app[HASHER]
    hasher._max_queued = 3
    gate, real, ran_on = threading.Event(), passwords._verify, {}

    def held(password: str, encoded: str) -> tuple[bool, int | None]:
        ran_on[password] = threading.current_thread().name
        if password.startswith("stranger-"):
            gate.wait(60)  # the bound only so that a failed test ends
        return real(password, encoded)

    monkeypatch.setattr(passwords, "_verify", held)
    strangers = [
        asyncio.create_task(attempt(proxied, f"victim{i}", f"stranger-{i}", ip=f"2001:db8:bad:{i}::1"))
        for i in range(3)
    ]
    try:
        async with asyncio.timeout(10):
            while not hasher.busy:  # noqa: ASYNC110 - all three have their place (the hasher has no event)
                await asyncio.sleep(0.01)
        yield Flood(strangers, gate, ran_on)
    finally:
        gate.set()
        await asyncio.gather(*strangers, return_exceptions=True)


async def test_the_owners_device_signs_in_while_strangers_fill_the_hash_queue(
    proxied: TestClient, user: tuple[str, str], owner_device: str, flood: Flood, pg: asyncpg.Connection
) -> None:
    # Anyone without the owner's device cookie is refused at once, uncounted: a stranger, the
    # owner's password from a new browser, a forged device cookie.
    forged = owner_device.rsplit(".", 1)[0] + "." + "A" * 43
    for username, password, cookies in (("victim9", "stranger-9", None), (*user, None), (*user, forged)):
        refused = await attempt(proxied, username, password, ip="2001:db8:bad:9::1", cookies=cookies)
        assert refused.status == 503, (username, cookies)
        assert refused.headers["Retry-After"] == "2"

    # The owner's browser is admitted to its own lane and signs in while the strangers wait.
    mine = await attempt(proxied, *user, ip="2001:db8:bad:10::1", cookies=owner_device)
    assert mine.status == 303
    assert mine.headers["Location"] == "/"
    assert flood.ran_on[user[1]].startswith("scrypt-device")  # not behind a stranger's hash
    session = mine.cookies["__Host-session"].value
    headers = {"Cookie": f"__Host-session={session}", "X-Forwarded-For": "2001:db8:bad:10::1"}
    headers["X-Forwarded-Proto"] = "https"
    assert (await proxied.get("/", headers=headers, allow_redirects=False)).status == 200

    strangers = await flood.end()
    assert [r.headers["Location"] for r in strangers] == [LOGIN_FAILED] * 3
    hasher = proxied.app[HASHER]
    assert (hasher._queued, hasher._device_queued) == (0, 0)  # every place given back
    # The strangers' three failures are counted; the refused attempts and the owner's success not.
    assert await pg.fetchval("SELECT count(*) FROM login_failures") == 3


async def test_the_owners_device_is_still_throttled_during_a_flood(
    proxied: TestClient, user: tuple[str, str], owner_device: str, flood: Flood
) -> None:
    """The device lane is no way around the device's own count: its failures are counted and
    limited (5 per window) while the strangers' queue is full."""
    for i in range(Limits().per_device):
        wrong = await attempt(proxied, user[0], f"wrong-{i}", ip=f"2001:db8:bad:{20 + i}::1", cookies=owner_device)
        assert wrong.headers["Location"] == LOGIN_FAILED
    assert (await attempt(proxied, *user, ip="2001:db8:bad:30::1", cookies=owner_device)).status == 429
    assert proxied.app[HASHER]._device_queued == 0
    await flood.end()


def test_the_device_lane_is_bounded_and_overflows_into_the_strangers_queue() -> None:
    hasher = passwords.PasswordHasher(4, concurrency=1, max_waiting=1, device_concurrency=1, device_max_waiting=1)
    try:
        lane = [hasher.admit(device=True) for _ in range(2)]
        assert all(a is not None and a.device for a in lane)
        queue = [hasher.admit(device=True), hasher.admit()]  # the lane is full: the strangers' queue
        assert all(a is not None and not a.device for a in queue)
        assert hasher.admit(device=True) is None
        assert hasher.admit() is None
        for admission in [*lane, *queue]:
            assert admission is not None
            admission.release()
            admission.release()  # idempotent
        assert (hasher._queued, hasher._device_queued) == (0, 0)
    finally:
        hasher.close()
