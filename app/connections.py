"""Slow clients and too many connections, for a process with no router in front of it.

aiohttp 3.14 has no header read timeout: a connection that opens and sends its request headers a
byte at a time (slowloris) is closed only by the keep-alive timer, 95 s after it opened
(runner.KEEPALIVE_TIMEOUT, longer than Heroku's router keeps an idle connection), and nothing
bounds how many such connections a process holds. At the process's open-files limit (commonly
1,024) accepting fails, and the server stops serving everyone else without a log line.

Two rules, per process (each gunicorn worker has its own), applied by runner._RequestHandler:

- **Header timeout**: a request's line and headers must arrive within `header_timeout` seconds,
  counted from the moment the connection opens, or, on a kept-alive connection, from the first
  byte of the next request. A connection that misses it is closed without an answer, as the
  keep-alive timer closes one. An idle kept-alive connection (a router's) keeps its 95 s.
- **A bound on open connections**: past `max_connections`, the connection that has been waiting
  longest for a request (a slow one, or an idle kept-alive one) is closed to make room; a request
  in progress is never cut. So a client that sends its headers at once is served even while
  thousands of slow ones keep reconnecting. Only when every other connection is busy with a
  request is the new one answered 503 (`Retry-After: 1`) and closed. Reaching the bound is logged
  at once (WARNING), then how many were closed or refused, one line a minute at most and one at
  shutdown, with nothing the clients sent.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus
from typing import Protocol

from .headers import CONTENT_SECURITY_POLICY

log = logging.getLogger(__name__)

# Seconds a client may take to send a request's line and headers: as long as a form's body may
# take (forms.BODY_TIMEOUT); a browser sends its headers in one packet.
DEFAULT_HEADER_TIMEOUT = 10.0
# Open connections per process: with SPARE_FILES and a pool of 5, under the common default
# open-files limit of 1,024, so that the default needs no raised limit anywhere.
DEFAULT_MAX_CONNECTIONS = 900
# File descriptors a process needs besides its HTTP connections and database pool: the listening
# socket, the session cache's listener, the event loop's own, log files, static files being sent,
# gunicorn's pipes and heartbeat file.
SPARE_FILES = 64
# Seconds a connection answered 503 stays open for the client to read the answer (its request is
# read and dropped meanwhile); one the client closes first goes at once.
REFUSAL_LINGER = 1.0
# At most one log line per this many seconds when the bound is reached.
REPORT_INTERVAL = 60.0

_BODY = f"{HTTPStatus.SERVICE_UNAVAILABLE.value} {HTTPStatus.SERVICE_UNAVAILABLE.phrase}\n".encode()
# Written before the request was read (there is no room to read it), so built once, by hand.
REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: " + str(len(_BODY)).encode() + b"\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Security-Policy: " + CONTENT_SECURITY_POLICY.encode() + b"\r\n"
    b"X-Content-Type-Options: nosniff\r\n"
    b"Referrer-Policy: same-origin\r\n"
    b"X-Frame-Options: DENY\r\n"
    b"\r\n" + _BODY
)


class Connection(Protocol):
    """What the guard needs of a connection (runner._RequestHandler)."""

    def force_close(self) -> None: ...

    def refuse(self) -> None: ...


class ConnectionGuard:
    """The open connections of one process, and which of them wait for a request, oldest first.

    :param header_timeout: seconds a request's line and headers may take to arrive (HTTP_HEADER_TIMEOUT)
    :param max_connections: open connections past which the longest-waiting one is closed
        (HTTP_MAX_CONNECTIONS)
    """

    def __init__(
        self, *, header_timeout: float = DEFAULT_HEADER_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS
    ) -> None:
        self.header_timeout = header_timeout
        self.max_connections = max_connections
        self._open: set[Connection] = set()
        # Insertion order is the order they began to wait: the first is the one to close.
        self._waiting: dict[Connection, None] = {}
        self._evicted = 0
        self._refused = 0
        self._report_handle: asyncio.TimerHandle | None = None

    @property
    def open(self) -> int:
        return len(self._open)

    def opened(self, conn: Connection) -> None:
        """A connection was accepted; it waits for its first request. Past the bound, the one
        that has waited longest is closed: another, or this one (answered 503) if it is alone."""
        self._open.add(conn)
        self._waiting[conn] = None
        if len(self._open) <= self.max_connections:
            return
        oldest = next(iter(self._waiting))
        self.closed(oldest)
        if oldest is conn:
            self._refused += 1
            conn.refuse()
        else:
            self._evicted += 1
            oldest.force_close()
        self._report()

    def busy(self, conn: Connection) -> None:
        """A request's headers arrived: the connection is no longer one to close."""
        self._waiting.pop(conn, None)

    def idle(self, conn: Connection) -> None:
        """The connection answered its requests and waits for the next (keep-alive)."""
        if conn in self._open:
            self._waiting.pop(conn, None)
            self._waiting[conn] = None

    def closed(self, conn: Connection) -> None:
        self._open.discard(conn)
        self._waiting.pop(conn, None)

    def close(self) -> None:
        """The server stops: what was counted since the last line is logged now."""
        if self._report_handle is not None:
            self._report_handle.cancel()
            self._report_handle = None
            self._log_counts()

    def _report(self) -> None:
        # The first time in a while: a line at once. Then the counts, at most once a minute.
        if self._report_handle is None:
            log.warning(
                "open connections reached HTTP_MAX_CONNECTIONS (%d): from now on each new one closes the"
                " connection waiting longest for a request (slow or idle clients), or is answered 503 if"
                " all are busy; counts follow, one line per %d s at most",
                self.max_connections,
                REPORT_INTERVAL,
            )
            self._schedule()

    def _report_due(self) -> None:
        self._report_handle = None
        if self._evicted or self._refused:
            self._log_counts()
            self._schedule()

    def _schedule(self) -> None:
        self._report_handle = asyncio.get_running_loop().call_later(REPORT_INTERVAL, self._report_due)

    def _log_counts(self) -> None:
        if self._evicted or self._refused:
            log.warning(
                "open connections at HTTP_MAX_CONNECTIONS (%d): closed %d waiting for a request, answered %d"
                " new ones 503",
                self.max_connections,
                self._evicted,
                self._refused,
            )
        self._evicted = self._refused = 0
