"""Hypothesis against the real app: whatever cookie or form body arrives, the answer is never a
5xx and no session row is created or changed (a logged-in user's row included).

Each test builds one app on its own event loop and runs every example on it, so the app, pool
and logged-in users are set up once per test rather than once per example.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import string
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlencode

import asyncpg
from aiohttp import DummyCookieJar
from aiohttp.test_utils import TestClient, TestServer
from aiohttp_session_postgres.tokens import TokenSigner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support.demo import add_user, login, make_settings, session_cookie
from support.keys import AUTH_KEY

from app.server import create_app
from app.throttle import Limits

T = TypeVar("T")

SNAPSHOT_SQL = "SELECT id_hash, version, data, idle_expires_at FROM sessions ORDER BY id_hash"
# High limits: every well-formed attempt goes the whole way (lookup, hash, record), none is cut short.
NO_THROTTLE = Limits(per_username_ip=10**9, per_ip=10**9, per_username=10**9)
FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

B64 = string.ascii_letters + string.digits + "-_"
OTHER_SIGNER = TokenSigner((b"some-other-deployment-key-0123456789",))
OUR_SIGNER = TokenSigner((AUTH_KEY,))


class Harness:
    """The real app on a loop of its own, alice and mallory logged in, and a fuzzing client
    that keeps no cookies."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    async def start(self) -> None:
        self.pg = await asyncpg.connect(self.url)
        self.alice_password = secrets.token_urlsafe(16)
        await add_user(self.pg, "alice", self.alice_password)
        await add_user(self.pg, "mallory", "mallory-password")
        # A long touch interval: a logged-in user's row is rewritten only by what the fuzz sends.
        app = await create_app(make_settings(self.url, login_limits=NO_THROTTLE, touch_interval=1700))
        self.server = TestServer(app)
        self.fuzzer = TestClient(self.server, cookie_jar=DummyCookieJar())
        await self.fuzzer.start_server()
        self.alice = TestClient(self.server)
        await self.alice.start_server()
        await login(self.alice, "alice", self.alice_password)
        self.mallory = TestClient(self.server)
        await self.mallory.start_server()
        await login(self.mallory, "mallory", "mallory-password")
        alice_cookie, mallory_cookie = session_cookie(self.alice), session_cookie(self.mallory)
        assert alice_cookie is not None
        assert mallory_cookie is not None
        self.alice_cookie, self.mallory_cookie = alice_cookie, mallory_cookie
        self.alice_id_hash = await self.pg.fetchval(
            "SELECT id_hash FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.username = 'alice'"
        )

    async def close(self) -> None:
        for client in (self.mallory, self.alice, self.fuzzer):
            await client.close()
        await self.pg.close()

    async def snapshot(self) -> list[tuple[Any, ...]]:
        rows = [tuple(r) for r in await self.pg.fetch(SNAPSHOT_SQL)]
        assert len(rows) == 2
        return rows

    async def still_logged_in(self) -> None:
        for client in (self.alice, self.mallory):
            response = await client.get("/", allow_redirects=False)
            assert response.status == 200


@contextmanager
def harness(url: str) -> Iterator[Harness]:
    h = Harness(url)
    try:
        h.run(h.start())
        try:
            yield h
            h.run(h.still_logged_in())
        finally:
            h.run(h.close())
    finally:
        h.loop.close()


# -- strategies ----------------------------------------------------------------------------

b64_43 = st.text(alphabet=B64, min_size=43, max_size=43)
# Any text aiohttp's client agrees to put in a header (it refuses control characters but tab).
header_text = st.text(
    st.characters(
        blacklist_categories=("Cs",), blacklist_characters="".join(map(chr, [*range(9), *range(10, 32), 127]))
    ),
    max_size=300,
)
# Any bytes at all but the line break, for requests written by hand.
header_bytes = st.binary(max_size=300).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))


@st.composite
def cookie_values(draw: st.DrawFn, real_cookie: str) -> str:
    real_token, real_signature = real_cookie.split(".")
    value = draw(
        st.one_of(
            st.just(""),
            header_text,
            st.integers(6000, 9000).map(lambda n: "A" * n),  # huge, up to past the header limit
            st.text(alphabet=B64 + "+/=.", min_size=1, max_size=120),  # wrong base64 and lengths
            st.builds(lambda t, s: f"{t}.{s}", b64_43, b64_43),  # well formed, not signed by us
            b64_43.map(OTHER_SIGNER.sign),  # signed, with another deployment's key
            b64_43.map(OUR_SIGNER.sign),  # signed by us, for a session that never existed
            b64_43.map(lambda s: f"{real_token}.{s}"),  # a real token, forged signature
            b64_43.map(lambda t: f"{t}.{real_signature}"),  # a real signature on another token
            st.just(OTHER_SIGNER.sign(real_token)),
            st.just(real_cookie[:-1]),
            st.just(real_cookie + "A"),
            st.just(real_cookie.swapcase()),
        )
    )
    if value == real_cookie:
        value += "x"
    return value


@st.composite
def cookie_headers(draw: st.DrawFn, real_cookie: str) -> bytes:
    """A Cookie header's value, as raw bytes (not necessarily UTF-8)."""
    values = [v.encode() for v in draw(st.lists(cookie_values(real_cookie), min_size=1, max_size=3))]
    shape = draw(st.sampled_from(["plain", "duplicated", "quoted", "with-others", "raw", "bytes"]))
    if shape == "plain":
        return b"session=" + values[0]
    if shape == "duplicated":
        return b"; ".join(b"session=" + v for v in values + values[:1])
    if shape == "quoted":
        return b'session="' + values[0] + b'"'
    if shape == "with-others":
        return b"a=1; session=" + values[0] + b"; __Host-session=" + values[-1] + b"; b"
    if shape == "bytes":
        return b"session=" + draw(header_bytes)
    return values[0]  # the whole header as given


async def raw_request(port: int, method: str, path: str, cookie: bytes) -> int:
    """Send a request written by hand (the Cookie header byte for byte); the response's status."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close", b"Cookie: " + cookie]
        if method == "POST":
            head.append(b"Content-Length: 0")
        writer.write(b"\r\n".join(head) + b"\r\n\r\n")
        response = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    status_line = response.split(b"\r\n", 1)[0]
    assert re.fullmatch(rb"HTTP/1\.[01] [0-9]{3}( .*)?", status_line), response[:200]
    return int(status_line.split()[1])


form_names = st.one_of(st.sampled_from(["username", "password", "handle", "", "user name"]), header_text)
form_values = st.one_of(
    header_text,
    st.text(max_size=50),  # NUL and other control characters included
    st.integers(3000, 9000).map(lambda n: "v" * n),
    st.sampled_from(["alice", "ALICE", "mallory", "", " ", "\x00", "a\x00b", "x" * 65]),
)
FORM = "application/x-www-form-urlencoded"
content_types = st.one_of(
    st.just(FORM),  # half the time: the body reaches the form parser
    st.sampled_from(
        [
            FORM + "; charset=latin-1",
            FORM.upper(),
            "multipart/form-data; boundary=xyz",
            "text/plain",
            "application/json",
            "application/octet-stream",
            "",
        ]
    ),
    header_text,
)


@st.composite
def form_bodies(draw: st.DrawFn, extra_values: list[str]) -> bytes:
    kind = draw(st.sampled_from(["form", "form", "form", "binary", "percent"]))
    if kind == "binary":
        return draw(st.binary(max_size=3000))
    if kind == "percent":
        # Percent escapes of arbitrary bytes: mostly not UTF-8.
        raw = draw(st.binary(min_size=1, max_size=40))
        name = draw(st.sampled_from(["username", "password", "handle"]))
        return f"{name}=".encode() + "".join(f"%{b:02x}" for b in raw).encode() + b"&password=x&handle=y"
    value = st.one_of(form_values, st.sampled_from(extra_values))
    pairs = []
    for name in ("username", "password", "handle"):
        # Mostly once (the handler goes all the way), sometimes missing or repeated.
        copies = draw(st.sampled_from([1, 1, 1, 1, 0, 2]))
        pairs += [(name, draw(value)) for _ in range(copies)]
    pairs += draw(st.lists(st.tuples(form_names, value), max_size=8))
    return urlencode(draw(st.permutations(pairs))).encode()


# -- tests ---------------------------------------------------------------------------------


def test_arbitrary_cookies_never_fail_or_touch_sessions(db_url: str) -> None:
    with harness(db_url) as h:
        port = h.server.port
        assert port is not None

        async def check(cookie_header: bytes) -> None:
            before = await h.snapshot()
            for method, path in (("GET", "/"), ("GET", "/sessions"), ("POST", "/logout")):
                status = await raw_request(port, method, path, cookie_header)
                assert status < 500, (method, path, status)
                if method == "GET":
                    assert status != 200, "a fuzzed cookie authenticated"
            assert await h.snapshot() == before

        forged = OTHER_SIGNER.sign(h.alice_cookie.split(".")[0])

        @FUZZ
        @given(cookie_header=cookie_headers(h.alice_cookie))
        @example(cookie_header=b"session=")
        @example(cookie_header=b"session=" + b"A" * 8000)
        @example(cookie_header="session=héllo wörld ✓".encode())
        @example(cookie_header=b"session=\xff\xfe\x00\x01")
        @example(cookie_header=f"session=x; session={forged}".encode())
        def run(cookie_header: bytes) -> None:
            h.run(check(cookie_header))

        run()


def test_arbitrary_login_bodies_never_fail_or_touch_sessions(db_url: str) -> None:
    with harness(db_url) as h:

        async def check(body: bytes, content_type: str) -> None:
            before = await h.snapshot()
            response = await h.fuzzer.post(
                "/login", data=body, headers={"Content-Type": content_type}, allow_redirects=False
            )
            await response.read()
            assert response.status in (303, 400), response.status
            if response.status == 303:
                assert response.headers["Location"] == "/public/login.html?error=1"
            assert "Set-Cookie" not in response.headers
            assert await h.snapshot() == before

        @FUZZ
        @given(body=form_bodies([h.alice_password + "x", "Mallory-Password"]), content_type=content_types)
        @example(body=b"username=%00&password=x", content_type="application/x-www-form-urlencoded")
        @example(body=b"username=alice&password=\xff\xfe", content_type="application/x-www-form-urlencoded")
        @example(body=b"username=alice&username=alice&password=x", content_type="application/x-www-form-urlencoded")
        @example(body=b"username=alice&password=" + b"p" * 5000, content_type="application/x-www-form-urlencoded")
        def run(body: bytes, content_type: str) -> None:
            h.run(check(body, content_type))

        run()


def test_arbitrary_revoke_bodies_never_fail_or_touch_sessions(db_url: str) -> None:
    with harness(db_url) as h:
        alice_handle = h.alice_id_hash[:8].hex()
        # Alice's handle in every shape: mallory must never end her session with it.
        handles = [
            alice_handle,
            alice_handle.upper(),
            alice_handle[:8],
            alice_handle[:2],
            h.alice_id_hash.hex(),
            f" {alice_handle}",
            f"{alice_handle}\x00",
            h.alice_cookie,
            h.alice_cookie.split(".")[0],
        ]

        async def check(body: bytes, content_type: str) -> None:
            before = await h.snapshot()
            response = await h.mallory.post(
                "/sessions/revoke", data=body, headers={"Content-Type": content_type}, allow_redirects=False
            )
            await response.read()
            assert response.status in (303, 400), response.status
            if response.status == 303:
                assert response.headers["Location"] == "/sessions"
            assert "Set-Cookie" not in response.headers
            assert await h.snapshot() == before

        @FUZZ
        @given(body=form_bodies(handles), content_type=content_types)
        @example(body=f"handle={alice_handle}".encode(), content_type="application/x-www-form-urlencoded")
        @example(body=b"handle=%00", content_type="application/x-www-form-urlencoded")
        @example(body=b"handle=" + b"a" * 9000, content_type="application/x-www-form-urlencoded")
        def run(body: bytes, content_type: str) -> None:
            h.run(check(body, content_type))

        run()
