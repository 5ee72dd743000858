"""The library's log lines, captured for assertions without the demo app (the `lib_log` fixture).

One line per record of the `aiohttp_session_postgres` logger, as `LEVEL name: message`, e.g.
`INFO aiohttp_session_postgres: event=session.created fp=1a2b3c4d user_id=1`: the app's log
format without its request ID. The same API as the app's own capture (support.demo.AppLog).
"""

from __future__ import annotations

import io
import logging

LOGGER = "aiohttp_session_postgres"


class LibraryLog:
    """What the library's logger writes, for assertions."""

    def __init__(self) -> None:
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def lines(self, logger: str | None = None) -> list[str]:
        """Every line written so far; with `logger`, only the messages of that logger."""
        lines = self.stream.getvalue().splitlines()
        if logger is None:
            return lines
        prefix = f" {logger}: "
        return [line.split(prefix, 1)[1] for line in lines if prefix in line]

    def events(self) -> list[str]:
        """The session library's event lines, e.g. 'event=session.created fp=1a2b3c4d user_id=1'."""
        return [line for line in self.lines(LOGGER) if line.startswith("event=")]
