"""The redirect of plain HTTP to HTTPS (TRUST_PROXY on) is built from the Host header and the
request's path and query only, whatever form the request target takes (RFC 9112 §3.2): its
Location never names another host. Raw bytes on a socket against the app as `serve` runs it
(a client library would normalise these targets before sending them)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import pytest
from aiohttp.test_utils import TestClient
from support.demo import make_settings
from support.rawhttp import raw
from yarl import URL

from app.config import Settings
from app.headers import CONTENT_SECURITY_POLICY

MakeClient = Callable[[Settings], Awaitable[TestClient]]
HOST = "app.example"

TARGETS = [
    # origin-form, as browsers send it
    ("GET", "/a?b=1", "/a?b=1"),
    ("GET", "/a%2F%2Fb?x=%20&y=%2F", "/a%2F%2Fb?x=%20&y=%2F"),  # kept as sent, still encoded
    ("GET", "/%2F%2Fevil.example/x", "/%2F%2Fevil.example/x"),  # an encoded slash is a path character
    ("GET", "/a?b=1#fragment", "/a?b=1"),  # no browser sends a fragment; it is dropped
    # absolute-form (RFC 9112 §3.2.2: a server must accept it): its path and query, not its host
    ("GET", "http://evil.example/x?y=1", "/x?y=1"),
    ("GET", "https://evil.example/x", "/x"),
    ("GET", "http://evil.example", "/"),
    ("GET", "http://user@evil.example:8080/x", "/x"),
    ("GET", "http://evil.example//other.example/x", "/other.example/x"),
    # asterisk-form
    ("OPTIONS", "*", "/"),
    # paths a browser would read as another host if they stood alone (scheme-relative)
    ("GET", "//evil.example/x", "/evil.example/x"),
    ("GET", "///evil.example/x?y=1", "/evil.example/x?y=1"),
    ("GET", "/\\evil.example/x", "/evil.example/x"),
    ("GET", "/\\/\\evil.example", "/evil.example"),
]


@pytest.mark.parametrize(("method", "target", "path"), TARGETS, ids=[t[1] for t in TARGETS])
async def test_the_https_redirect_keeps_only_the_path_and_query(
    make_client: MakeClient, db_url: str, method: str, target: str, path: str
) -> None:
    client = await make_client(make_settings(db_url, trust_proxy=True))
    port = client.server.port
    assert port is not None
    status, headers, _ = await raw(
        port,
        f"{method} {target} HTTP/1.1\r\nHost: {HOST}\r\nX-Forwarded-Proto: http\r\nConnection: close\r\n\r\n".encode(),
    )
    assert status == 308
    [location] = headers["location"]
    assert location == f"https://{HOST}{path}"
    # However a client reads it, it names our host and no other.
    assert urlsplit(location).hostname == HOST
    assert URL(location).host == HOST
    assert headers["content-security-policy"] == [CONTENT_SECURITY_POLICY]
    assert headers["cache-control"] == ["no-store"]
