"""A proxy to a PostgreSQL that can go silent, for the tests of what a dead network path does
(the library's cache listener, the demo's outage handling)."""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit


class SilenceableProxy:
    """A TCP proxy to the PostgreSQL `database_url` names (over TCP or a Unix socket) that can go
    silent: after `silence()` it keeps every connection open but forwards nothing either way, as
    a network path that drops packets does (no RST, no FIN: the client learns nothing unless it
    times out). `url()` is `database_url` routed through it."""

    def __init__(self, database_url: str) -> None:
        self._database_url = database_url
        parts = urlsplit(database_url)
        query = dict(pair.split("=", 1) for pair in parts.query.split("&") if "=" in pair)
        port = parts.port or 5432
        socket_dir = query.get("host") if not parts.hostname else None
        self._socket = f"{socket_dir}/.s.PGSQL.{port}" if socket_dir else None
        self._target = (parts.hostname or "127.0.0.1", port)
        self.silent = False
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SilenceableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.close()

    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        parts = urlsplit(self._database_url)
        userinfo = parts.netloc.rpartition("@")[0]
        query = "&".join(pair for pair in parts.query.split("&") if pair and not pair.startswith("host="))
        netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
        return parts._replace(netloc=netloc, query=query).geturl()

    def silence(self) -> None:
        self.silent = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._socket is not None:
            up_reader, up_writer = await asyncio.open_unix_connection(self._socket)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        self._writers += [writer, up_writer]
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if not self.silent:  # silent: read and dropped, so nothing backs up to tell the sender
                writer.write(data)
                await writer.drain()
        writer.close()
