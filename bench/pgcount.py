"""A statement-counting proxy between a bench server and PostgreSQL.

pg_stat_statements needs `shared_preload_libraries`, i.e. a restart of the shared server, which
the benchmark must not do. So for one short, untimed pass per variant the server connects
through this proxy instead, which reads the frontend side of the wire protocol and counts what
the server process actually sends:

- every Execute message (extended protocol: asyncpg's fetch/fetchrow/fetchval/execute with
  arguments), attributed to the SQL text of the statement it executes (from Parse);
- every simple Query message, and the statements in it (asyncpg's argument-less `execute`, the
  pool's reset on release: `SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`,
  BEGIN/COMMIT of transactions);
- round trips: Sync messages plus simple Query messages (each waits for the server).

It refuses TLS (answers 'N' to SSLRequest) so it can read the messages; that pass is never
timed. Server-to-client bytes are forwarded untouched.
"""

from __future__ import annotations

import asyncio
import re
import struct
from collections import Counter
from dataclasses import dataclass, field

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102


def statement_key(sql: str) -> str:
    """A short, stable label for a statement: its text with whitespace collapsed, cut at 70."""
    text = re.sub(r"\s+", " ", sql).strip()
    return text if len(text) <= 70 else text[:67] + "..."


def split_simple(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


@dataclass
class Counts:
    executes: Counter[str] = field(default_factory=Counter)  # statement label -> Execute messages
    simple: Counter[str] = field(default_factory=Counter)  # statement label -> statements in Query messages
    parses: int = 0
    syncs: int = 0
    queries: int = 0  # simple Query messages
    connections: int = 0

    def snapshot(self) -> Counts:
        return Counts(
            Counter(self.executes), Counter(self.simple), self.parses, self.syncs, self.queries, self.connections
        )

    def minus(self, before: Counts) -> Counts:
        return Counts(
            self.executes - before.executes,
            self.simple - before.simple,
            self.parses - before.parses,
            self.syncs - before.syncs,
            self.queries - before.queries,
            self.connections - before.connections,
        )

    def per_request(self, requests: int) -> dict[str, object]:
        n = max(requests, 1)
        statements = sum(self.executes.values()) + sum(self.simple.values())
        by_statement = Counter(self.executes)
        by_statement.update(self.simple)
        return {
            "requests": requests,
            "statements_per_request": statements / n,
            "round_trips_per_request": (self.syncs + self.queries) / n,
            "parses_per_request": self.parses / n,
            "new_connections": self.connections,
            "by_statement": {k: round(v / n, 4) for k, v in by_statement.most_common()},
        }


class CountingProxy:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.counts = Counts()
        self._server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer = None
        try:
            # Startup: answer SSL/GSS requests ourselves ("no"), forward the real startup packet.
            while True:
                length = struct.unpack("!I", await reader.readexactly(4))[0]
                body = await reader.readexactly(length - 4)
                code = struct.unpack("!I", body[:4])[0]
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    writer.write(b"N")
                    await writer.drain()
                    continue
                break
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
            upstream_writer.write(struct.pack("!I", length) + body)
            if code == CANCEL_REQUEST:
                await upstream_writer.drain()
                return
            self.counts.connections += 1
            back = asyncio.create_task(_pump(upstream_reader, writer))
            try:
                await self._frontend(reader, upstream_writer)
            finally:
                back.cancel()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    w.close()

    async def _frontend(self, reader: asyncio.StreamReader, upstream: asyncio.StreamWriter) -> None:
        prepared: dict[bytes, str] = {}  # statement name -> SQL (this connection's)
        portals: dict[bytes, str] = {}  # portal name -> SQL
        counts = self.counts
        while True:
            header = await reader.readexactly(5)
            kind, length = header[:1], struct.unpack("!I", header[1:])[0]
            body = await reader.readexactly(length - 4)
            upstream.write(header + body)
            if kind == b"P":  # Parse: name \0 query \0 ...
                name, rest = body.split(b"\0", 1)
                prepared[name] = rest.split(b"\0", 1)[0].decode(errors="replace")
                counts.parses += 1
            elif kind == b"B":  # Bind: portal \0 statement \0 ...
                portal, rest = body.split(b"\0", 1)
                statement = rest.split(b"\0", 1)[0]
                portals[portal] = prepared.get(statement, "?")
            elif kind == b"E":  # Execute: portal \0 maxrows
                portal = body.split(b"\0", 1)[0]
                counts.executes[statement_key(portals.get(portal, "?"))] += 1
            elif kind == b"S":
                counts.syncs += 1
            elif kind == b"Q":
                counts.queries += 1
                for statement in split_simple(body.rstrip(b"\0").decode(errors="replace")):
                    counts.simple[statement_key(statement)] += 1
            elif kind == b"C" and body[:1] == b"S":  # Close statement
                prepared.pop(body[1:].split(b"\0", 1)[0], None)
            elif kind == b"X":
                await upstream.drain()
                return
            if upstream.transport.get_write_buffer_size() > 1 << 16:
                await upstream.drain()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()
