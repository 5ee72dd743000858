"""The app's logging: one format for every logger, one line per record, with the request ID on
every line logged while a request is handled.

    INFO aiohttp_session_postgres: event=session.created fp=1a2b3c4d user_id=7 request_id=6f1c...

The request ID is Heroku's `X-Request-ID` when it is a plausible one, else one made up, and only
when a line is actually logged (most requests log nothing).

Whatever a request sent can reach a message (a path, which aiohttp percent-decodes, so `%0d%0a`
is a real line break there; a header; a username): every character that is not printable is
written as an escape (`\r`, `\x1b`, `\u202e`), so no message can start a line of its own or move
a terminal's cursor. A traceback keeps its lines, each indented, and escaped likewise.

LOG_FORMAT=json writes one JSON object per line instead, for a log pipeline that indexes fields:

    {"time": "2026-12-07T23:40:01.123Z", "level": "INFO", "logger": "aiohttp_session_postgres",
     "message": "event=session.created fp=1a2b3c4d user_id=7", "event": "session.created",
     "fp": "1a2b3c4d", "user_id": 7, "request_id": "6f1c..."}

every field a record carries beyond logging's own (the library's events put theirs there), and
`exception` with the traceback. JSON escapes every control character, so no value can start a
line either.
"""

from __future__ import annotations

import contextvars
import datetime
import logging
import re
import uuid
from typing import Any, TextIO

import orjson
from aiohttp import web

from .text import escape

# Heroku's router sends a UUID; accept any short token-like value, else make our own.
_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,200}")


class _RequestId:
    """The request's ID, decided the first time a line asks for it."""

    __slots__ = ("_given", "_value")

    def __init__(self, given: str | None) -> None:
        self._given = given
        self._value: str | None = None

    def __str__(self) -> str:
        if self._value is None:
            given = self._given or ""
            self._value = given if _REQUEST_ID_RE.fullmatch(given) else uuid.uuid4().hex
        return self._value


# Set per request by start_request: each request runs in a task of its own, which has
# its own copy of the context.
_CURRENT: contextvars.ContextVar[_RequestId | None] = contextvars.ContextVar("request_id", default=None)


def start_request(request: web.BaseRequest) -> None:
    """Lines logged from now on, in this request's task, carry its ID (middlewares.py calls it
    first thing)."""
    _CURRENT.set(_RequestId(request.headers.get("X-Request-ID")))


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        current = _CURRENT.get()
        record.request = f" request_id={current}" if current is not None else ""
        return True


class _Formatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return "\n".join("    " + escape(line) for line in super().formatException(ei).splitlines())

    def formatStack(self, stack_info: str) -> str:
        return "\n".join("    " + escape(line) for line in stack_info.splitlines())


# What every LogRecord has: anything else on a record is a field of its own (`extra=`).
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "request", "taskName"}


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        entry: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key not in entry:
                entry[key] = value
        current = _CURRENT.get()
        if current is not None:
            entry["request_id"] = str(current)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        # default=str: a field of another type (a Path, an enum) is written as its text.
        try:
            return orjson.dumps(entry, default=str).decode()
        except orjson.JSONEncodeError:
            # Text that is not UTF-8: aiohttp hands a header's non-UTF-8 bytes over as lone
            # surrogates, which JSON cannot carry. Escaped, the line is still written, not lost.
            return orjson.dumps(_utf8(entry), default=str).decode()


def _utf8(value: Any) -> Any:
    """`value` with every string's lone surrogates written as escapes (``\\udcff``)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, dict):
        return {_utf8(str(k)): _utf8(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_utf8(v) for v in value]
    return value


def handler(stream: TextIO | None = None, *, log_format: str = "text") -> logging.Handler:
    """A handler writing the app's format (`log_format`: "text" or "json") to `stream`
    (default stderr)."""
    out = logging.StreamHandler(stream)
    if log_format == "json":
        out.setFormatter(_JsonFormatter())
        return out
    out.addFilter(_RequestIdFilter())
    out.setFormatter(_Formatter("%(levelname)s %(name)s: %(message)s%(request)s"))
    return out


def configure(level: str, *, quiet_library: bool = False, log_format: str = "text") -> None:
    """Log to stderr at `level`, every line in one format (LOG_FORMAT: "text" or "json"), tagged
    with the request ID. `quiet_library`: the session library's INFO events off (one-off
    commands, which print their own outcome)."""
    logging.basicConfig(level=level, handlers=[handler(log_format=log_format)], force=True)
    if quiet_library:
        logging.getLogger("aiohttp_session_postgres").setLevel(logging.WARNING)
