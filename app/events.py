"""Session events as one structured log line each, tagged with the request ID.

    event=session.created fp=1a2b3c4d request_id=... user_id=7

Only a fingerprint of the ID hash is ever logged: never the token, the cookie, a password or
session data.
"""

from __future__ import annotations

import logging
import re
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler

from .tokens import fingerprint_of

log = logging.getLogger("app.events")

REQUEST_ID = web.RequestKey("request_id", str)
# Heroku's router sends a UUID; accept any short token-like value, else make our own.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")


@web.middleware
async def request_id(request: web.Request, handler: Handler) -> web.StreamResponse:
    given = request.headers.get("X-Request-ID", "")
    request[REQUEST_ID] = given if _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
    return await handler(request)


def emit(request: web.BaseRequest | None, event: str, id_hash: bytes | None = None, **fields: object) -> None:
    """Log `event` for the session `id_hash`. `fields` must hold nothing secret."""
    parts = [f"event={event}"]
    if id_hash is not None:
        parts.append(f"fp={fingerprint_of(id_hash)}")
    if request is not None:
        parts.append(f"request_id={request.get(REQUEST_ID, '-')}")
    parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
    log.info("%s", " ".join(parts))


def _quote(value: object) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "._:-/@" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
