"""Client traffic for the fault and soak tests, and the ledger that checks what it was told.

Each client task is one user's browsers: it keeps a few sessions of its own and, paced, reads the
home page, opens the sessions page, logs in, logs out, ends one of its other sessions, or logs in
and walks away (a session left for the sweeper), each through any of the servers. The ledger
records what the servers acknowledged, which is what a user relies on:
- a login answered 303 with a cookie is a live session; a logout or revocation answered 303 ends it;
- a live session must be greeted (200) or answered 503, never refused (303) or forgotten;
- an ended session must be refused at once by the server that ended it and by every other one,
  except that with the session cache on (the default) another process may serve it until the
  notification reaches it: within `notify_window` seconds, such answers are counted (`stale`),
  later ones are violations;
- no answer may clear a live session's cookie;
- with SESSION_DURABLE_WRITES=off, a database crash may lose the sessions whose login was
  answered in its last moments (before the WAL flush): set `crash` and those are counted as
  `lost`, while every older one, and every end, must survive.
An operation that got no answer, or a 503, acknowledged nothing and is not held against anyone.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp

from support.servers import Server, handle, home, is_greeting, login, logout, new_http, revoke, sessions_page

T = TypeVar("T")

# With the session cache on (the app's default), how long another process may serve a session
# after its end was acknowledged: the LISTEN/NOTIFY delivery, measured at p99 3.3 ms on an idle
# machine; a second leaves room for a loaded one. 0 demands refusal at once (cache off).
NOTIFY_WINDOW = 1.0


@dataclass(frozen=True)
class Sample:
    kind: str
    server: int
    started: float  # time.monotonic()
    latency: float
    outcome: int | str  # HTTP status, or the client-side exception's name

    @property
    def finished(self) -> float:
        return self.started + self.latency


@dataclass(frozen=True)
class Mix:
    """Relative weights of a client's actions, and its pause between them (seconds)."""

    read: int = 1
    page: int = 0
    login: int = 0
    logout: int = 0
    revoke: int = 0
    abandon: int = 0
    pause: float = 0.05
    max_live: int = 3

    def choose(self, rng: random.Random) -> str:
        kinds = ("read", "page", "login", "logout", "revoke", "abandon")
        return rng.choices(kinds, weights=[getattr(self, k) for k in kinds])[0]


@dataclass
class Ledger:
    live: dict[str, str] = field(default_factory=dict)  # cookie -> username
    ended: dict[str, str] = field(default_factory=dict)
    abandoned: dict[str, str] = field(default_factory=dict)
    # A logout or revocation that got no acknowledgement: the session may or may not have ended.
    unsure: dict[str, str] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    # cookie -> (the server that acknowledged its end, time.monotonic() of the acknowledgement)
    ended_at: dict[str, tuple[int, float]] = field(default_factory=dict)
    # Seconds after the acknowledgement at which another process still served an ended session
    # (the session cache's notification window).
    stale: list[float] = field(default_factory=list)
    # cookie -> time.monotonic() when its login was acknowledged
    acknowledged_at: dict[str, float] = field(default_factory=dict)
    # Sessions gone after a crash that durable_writes=off allowed to lose (see Traffic.crash).
    lost: dict[str, str] = field(default_factory=dict)

    def outcomes(self, kinds: Sequence[str] | None = None) -> Counter[int | str]:
        return Counter(s.outcome for s in self.samples if kinds is None or s.kind in kinds)

    def stale_summary(self) -> str:
        if not self.stale:
            return "no ended session served by another process"
        return (
            f"{len(self.stale)} reads of an ended session served by another process before its "
            f"notification, the latest {max(self.stale) * 1000:.1f} ms after the end"
        )

    def max_latency(self) -> float:
        return max((s.latency for s in self.samples), default=0.0)


class Traffic:
    """Clients (one per user) against `servers`, recording into one ledger."""

    def __init__(
        self,
        servers: Sequence[Server],
        users: dict[str, str],
        mix: Mix,
        *,
        seed: int = 6,
        notify_window: float = NOTIFY_WINDOW,
    ) -> None:
        self.servers = list(servers)
        self.notify_window = notify_window
        self.users = users
        self.mix = mix
        self.ledger = Ledger()
        self._rng = random.Random(seed)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._http: aiohttp.ClientSession | None = None
        self.down: set[int] = set()  # servers known to be stopped: no request is sent to them
        # (time.monotonic() of a database crash, seconds before it whose acknowledged logins it
        # may have lost): set by a test whose servers run with SESSION_DURABLE_WRITES=off.
        self.crash: tuple[float, float] | None = None

    async def __aenter__(self) -> Traffic:
        self._http = new_http(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
        assert self._http is not None
        await self._http.close()

    @property
    def http(self) -> aiohttp.ClientSession:
        assert self._http is not None
        return self._http

    # -- single steps, recorded ---------------------------------------------------------------

    async def _timed(self, kind: str, server: int, step: Callable[[str], Awaitable[T]]) -> T | None:
        started = time.monotonic()
        try:
            result = await step(self.servers[server].url)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.ledger.samples.append(Sample(kind, server, started, time.monotonic() - started, type(exc).__name__))
            return None
        status = result[0] if isinstance(result, tuple) else result
        self.ledger.samples.append(Sample(kind, server, started, time.monotonic() - started, status))
        return result

    def _server(self) -> int:
        up = [i for i in range(len(self.servers)) if i not in self.down]
        return self._rng.choice(up) if up else 0

    async def login(self, username: str, server: int | None = None) -> str | None:
        i = self._server() if server is None else server
        result = await self._timed("login", i, lambda url: login(self.http, url, username, self.users[username]))
        if result is None:
            return None
        status, cookie = result
        if cookie is not None:
            self.ledger.live[cookie] = username
            self.ledger.acknowledged_at[cookie] = time.monotonic()
        elif status not in (503,):
            self.ledger.violations.append(f"login of {username} through server {i} answered {status}")
        return cookie

    async def read(self, cookie: str, server: int | None = None) -> None:
        i = self._server() if server is None else server
        result = await self._timed("read", i, lambda url: home(self.http, url, cookie))
        if result is None:
            return
        status, text, set_cookie = result
        self._check_answer(cookie, i, status, set_cookie)
        username = self.ledger.live.get(cookie)
        if username is not None and status == 200 and not is_greeting(status, text, username):
            self.ledger.violations.append(f"server {i} greeted someone else than {username}")

    async def page(self, cookie: str) -> None:
        i = self._server()
        result = await self._timed("page", i, lambda url: sessions_page(self.http, url, cookie))
        if result is not None:
            self._check_answer(cookie, i, result[0], None)
            if result[0] == 200 and handle(cookie) not in result[1]:
                self.ledger.violations.append(f"server {i}: the sessions page does not list the session itself")

    async def logout(self, cookie: str) -> None:
        i = self._server()
        status = await self._timed("logout", i, lambda url: logout(self.http, url, cookie))
        username = self.ledger.live.pop(cookie)
        if status == 303:
            self.ledger.ended[cookie] = username
            self.ledger.ended_at[cookie] = (i, time.monotonic())
            await self._refused_everywhere(cookie)
        else:
            self.ledger.unsure[cookie] = username  # not audited either way
            if status not in (503, None):
                self.ledger.violations.append(f"logout through server {i} answered {status}")

    async def revoke(self, by: str, victim: str) -> None:
        i = self._server()
        status = await self._timed("revoke", i, lambda url: revoke(self.http, url, by, handle(victim)))
        username = self.ledger.live.pop(victim)
        if status == 303:
            self.ledger.ended[victim] = username
            self.ledger.ended_at[victim] = (i, time.monotonic())
            await self._refused_everywhere(victim)
        else:
            self.ledger.unsure[victim] = username
            if status not in (503, None):
                self.ledger.violations.append(f"revocation through server {i} answered {status}")

    async def _refused_everywhere(self, cookie: str) -> None:
        """An acknowledged end is refused by every running server on the very next request, or
        (another process, cache on) within the notification window: asked again until then."""
        for i in range(len(self.servers)):
            if i not in self.down:
                stale = len(self.ledger.stale)
                await self.read(cookie, server=i)
                while len(self.ledger.stale) > stale and not self._stop.is_set():
                    stale = len(self.ledger.stale)
                    await asyncio.sleep(0.005)
                    await self.read(cookie, server=i)

    def _may_be_lost(self, cookie: str) -> bool:
        if self.crash is None:
            return False
        crashed_at, window = self.crash
        return crashed_at - window <= self.ledger.acknowledged_at.get(cookie, 0.0) <= crashed_at

    def _check_answer(self, cookie: str, server: int, status: int, set_cookie: tuple[str, int | None] | None) -> None:
        if cookie in self.ledger.live and status == 303 and self._may_be_lost(cookie):
            self.ledger.lost[cookie] = self.ledger.live.pop(cookie)
        elif cookie in self.ledger.live:
            if status not in (200, 503):
                self.ledger.violations.append(f"server {server} answered {status} for a live session")
            if set_cookie is not None and (not set_cookie[0] or set_cookie[1] == 0):
                self.ledger.violations.append(f"server {server} cleared the cookie of a live session ({status})")
        elif cookie in self.ledger.ended and status not in (303, 503):
            by, at = self.ledger.ended_at.get(cookie, (server, 0.0))
            late = time.monotonic() - at
            if status == 200 and server != by and late < self.notify_window:
                self.ledger.stale.append(late)
            else:
                self.ledger.violations.append(f"server {server} answered {status} for an ended session")

    # -- clients ------------------------------------------------------------------------------

    def start(self) -> None:
        for n, username in enumerate(self.users):
            self._tasks.append(asyncio.create_task(self._client(username, random.Random(n))))

    async def stop(self) -> None:
        self._stop.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)
            self._tasks.clear()

    async def _client(self, username: str, rng: random.Random) -> None:
        while not self._stop.is_set():
            mine = [c for c, u in self.ledger.live.items() if u == username]
            action = self.mix.choose(rng)
            if not mine or (action == "login" and len(mine) < self.mix.max_live):
                await self.login(username)
            elif action == "page":
                await self.page(rng.choice(mine))
            elif action == "logout" and len(mine) > 1:
                await self.logout(rng.choice(mine))
            elif action == "revoke" and len(mine) > 1:
                by, victim = rng.sample(mine, 2)
                await self.revoke(by, victim)
            elif action == "abandon":
                cookie = await self.login(username)
                if cookie is not None:  # walked away: the sweeper's to remove once idle
                    self.ledger.abandoned[cookie] = self.ledger.live.pop(cookie)
            else:
                await self.read(rng.choice(mine))
            await asyncio.sleep(self.mix.pause)

    # -- the audit ------------------------------------------------------------------------------

    async def audit(self) -> Audit:
        """Every live session greeted by every running server; every ended one refused; every
        unsure one (its logout got no answer or a 503) either refused by all or greeted by all.
        Problems go to the ledger's violations; the counts are what was audited."""
        servers = [i for i in range(len(self.servers)) if i not in self.down]
        lost = 0
        for cookie, username in list(self.ledger.live.items()):
            for i in servers:
                status, text, _ = await home(self.http, self.servers[i].url, cookie)
                if status == 303 and self._may_be_lost(cookie):
                    self.ledger.lost[cookie] = self.ledger.live.pop(cookie)
                    break
                if not is_greeting(status, text, username):
                    lost += 1
                    self.ledger.violations.append(f"audit: server {i} answered {status} for a live session")
        for cookie in self.ledger.ended:
            for i in servers:
                status, _, _ = await home(self.http, self.servers[i].url, cookie)
                if status != 303:
                    self.ledger.violations.append(f"audit: server {i} answered {status} for an ended session")
        unsure_ended = 0
        for cookie, username in self.ledger.unsure.items():
            answers = set()
            for i in servers:
                status, text, _ = await home(self.http, self.servers[i].url, cookie)
                answers.add("ended" if status == 303 else "live" if is_greeting(status, text, username) else status)
            if len(answers) != 1 or not answers <= {"ended", "live"}:
                self.ledger.violations.append(f"audit: an unsure session answered {sorted(map(str, answers))}")
            unsure_ended += answers == {"ended"}
        return Audit(len(self.ledger.live), len(self.ledger.ended), len(self.ledger.unsure), unsure_ended, lost)


@dataclass(frozen=True)
class Audit:
    live: int  # sessions the clients believe live, each greeted by every server
    ended: int  # acknowledged ends, each refused by every server
    unsure: int  # ends that got no answer or a 503: each consistent across the servers
    unsure_ended: int  # of those, how many had ended
    lost: int  # live sessions some server did not greet (each is also a violation)

    def __str__(self) -> str:
        return (
            f"sessions audited: {self.live} live, {self.ended} ended, {self.unsure} unsure"
            f" ({self.unsure_ended} of them ended); lost = {self.lost}"
        )
