"""HTTP as raw bytes on a socket, for what a client library would refuse or normalise before
sending (absolute-form targets, `*`, `//` paths, a request that never finishes its headers)."""

from __future__ import annotations

import asyncio


async def raw(port: int, request: bytes, *, timeout: float = 10.0) -> tuple[int, dict[str, list[str]], bytes]:
    """Send `request` and read the answer to the end (send `Connection: close`): (status, headers
    by lower-cased name, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), timeout=timeout)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return int(status_line.split()[1]), headers, body
