"""Strict parsing of urlencoded form posts: anything malformed is a 400, never a 500."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qsl

from aiohttp import web

MAX_FORM_BYTES = 8 * 1024
_MAX_FIELDS = 16
# A client may take this long to send its whole form; a slower one is answered 408 (a body sent
# a byte at a time must not hold a connection and a handler open forever).
BODY_TIMEOUT = 10.0


class FormError(Exception):
    """The body is not a valid form; the message says why, `status` is the answer (400, 408)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def read_form(request: web.Request, fields: tuple[str, ...], *, optional: tuple[str, ...] = ()) -> dict[str, str]:
    """The named fields, each present exactly once, and the `optional` ones (a checkbox left
    unticked is not sent), each at most once. Other fields are ignored."""
    if request.content_type != "application/x-www-form-urlencoded":
        raise FormError("expected a form (application/x-www-form-urlencoded)")
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        raise FormError("form too large")
    body = bytearray()
    try:
        async with asyncio.timeout(BODY_TIMEOUT):
            async for chunk in request.content.iter_chunked(4096):
                body += chunk  # counted after decompression: a small gzip cannot make a big form
                if len(body) > MAX_FORM_BYTES:
                    raise FormError("form too large")
    except web.RequestPayloadError:  # a bad chunk, a body that does not decompress
        raise FormError("malformed request body") from None
    except TimeoutError:
        raise FormError("the form took too long to arrive", status=408) from None
    try:
        # A urlencoded body is ASCII; anything beyond is percent-encoded UTF-8.
        pairs = parse_qsl(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise FormError("malformed form encoding") from None
    values: dict[str, str] = {}
    for name, value in pairs:
        if name in fields or name in optional:
            if name in values:
                raise FormError(f"field {name!r} given more than once")
            values[name] = value
    missing = [f for f in fields if f not in values]
    if missing:
        raise FormError(f"missing field {missing[0]!r}")
    return values
