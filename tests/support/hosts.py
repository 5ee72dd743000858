"""Host names that lead to this machine, for a client that must behave as a browser on a real
domain: aiohttp's cookie jar then applies `Domain`, host-only and `__Host-` rules to
`app.example.com` and `api.example.com` as a browser would (it refuses to share cookies between
IP addresses at all), while every connection goes to 127.0.0.1."""

from __future__ import annotations

import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult


class LocalHosts(AbstractResolver):
    """Resolves each of `names` to 127.0.0.1; any other name is an error (nothing leaves the
    machine)."""

    def __init__(self, *names: str) -> None:
        self.names = frozenset(names)

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        if host not in self.names:
            raise OSError(f"{host} is not one of the test's host names")
        return [
            ResolveResult(
                hostname=host, host="127.0.0.1", port=port, family=socket.AF_INET, proto=0, flags=socket.AI_NUMERICHOST
            )
        ]

    async def close(self) -> None:
        pass


def browser(*names: str) -> aiohttp.ClientSession:
    """A client with a cookie jar, reaching each of `names` on this machine, that follows no
    redirects (a test looks at each response's cookies)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(resolver=LocalHosts(*names)),
        cookie_jar=aiohttp.CookieJar(),
    )
