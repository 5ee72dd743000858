"""`python -m app ...`: serve (the default), sweep, user add/delete/collisions, sessions list/revoke.

Every failure an operator can cause ends with one line on stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence

import asyncpg
from aiohttp_session_postgres import UNAVAILABLE_ERRORS, DatabaseUnavailable, PostgresStorage

from . import db, embedded, logs, schema, throttle, usernames, users, workers
from .config import ConfigError, Settings, load_settings
from .passwords import MAX_PASSWORD_BYTES, hash_once
from .runner import ensure_open_files, serve
from .server import StartupError, build_storage, open_pool
from .text import escape, plural

log = logging.getLogger("app")

DEMO_USER, DEMO_PASSWORD = "foo", "secret"


class CommandError(Exception):
    """The command cannot do what was asked; the message is the one line to print."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings()
        logs.configure(settings.log_level, quiet_library=args.run is not _serve, log_format=settings.log_format)
        # Embedded mode migrates on every command; Alembic's per-run chatter is noise there.
        logging.getLogger("alembic").setLevel(logging.WARNING)
        return args.run(settings, args)
    except (ConfigError, StartupError, CommandError, embedded.EmbeddedError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DatabaseUnavailable as exc:
        print(f"error: {_unavailable(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _unavailable(exc: DatabaseUnavailable) -> str:
    why = exc.why
    if not why:
        return "the database did not answer in time: check DATABASE_URL and that it is up"
    return f"the database is unavailable: {why}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="aiohttp sessions in PostgreSQL")
    parser.set_defaults(run=_serve)
    commands = parser.add_subparsers(title="commands")
    commands.add_parser("serve", help="serve the app on $PORT (the default)").set_defaults(run=_serve)
    commands.add_parser("sweep", help="delete expired sessions once, print the count").set_defaults(run=_sweep)
    user = commands.add_parser("user", help="manage users").add_subparsers(title="user commands", required=True)
    add = user.add_parser("add", help="create a user or reset their password (password on stdin or prompt)")
    add.add_argument("name")
    add.set_defaults(run=_user_add)
    first = user.add_parser(
        "add-first",
        help="create FIRST_USER_NAME with FIRST_USER_PASSWORD unless that user exists (app.json postdeploy)",
    )
    first.set_defaults(run=_user_add_first)
    delete = user.add_parser("delete", help="delete a user and end their sessions")
    delete.add_argument("name")
    delete.set_defaults(run=_user_delete)
    user.add_parser(
        "collisions",
        help="list accounts whose names collide under the username rules (same name, look-alike, refused)",
    ).set_defaults(run=_user_collisions)
    sessions = commands.add_parser("sessions", help="list or end a user's sessions").add_subparsers(
        title="sessions commands", required=True
    )
    listing = sessions.add_parser("list", help="one line per live session: handle, created, last seen, IP, User-Agent")
    listing.add_argument("name")
    listing.set_defaults(run=_sessions_list)
    revoke = sessions.add_parser("revoke", help="end one session (by handle) or all of them (--all)")
    revoke.add_argument("name")
    which = revoke.add_mutually_exclusive_group(required=True)
    which.add_argument("handle", nargs="?", help="the session's handle, as `sessions list` shows it")
    which.add_argument("--all", action="store_true", help="end every session of the user")
    revoke.set_defaults(run=_sessions_revoke)
    return parser


@contextlib.contextmanager
def _database(settings: Settings) -> Iterator[Settings]:
    """Settings with a database: the configured one, or the embedded one, started and migrated."""
    if not settings.embedded:
        yield settings
        return
    with embedded.running(settings) as local:
        assert local.database_url is not None
        schema.upgrade(local.database_url)
        yield local


def _with_storage(settings: Settings, work: Callable[[PostgresStorage], Awaitable[int]]) -> int:
    """Run `work` on the session storage of these settings (the database started if embedded)."""

    async def run() -> int:
        pool = await open_pool(settings)
        try:
            return await work(await build_storage(settings, pool))
        finally:
            await pool.close()

    with _database(settings) as ready:
        settings = ready
        return asyncio.run(run())


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    ensure_open_files(settings)  # before gunicorn: its workers inherit the limit
    if settings.web_concurrency > 1 and not settings.embedded:
        workers.exec_gunicorn(settings)  # checks the database once, then becomes gunicorn
    with _database(settings) as ready:
        if ready.embedded:
            log.info("embedded PostgreSQL mode: listening on %s only", ready.host)
            if ready.web_concurrency > 1:
                log.info("embedded PostgreSQL mode runs one process: WEB_CONCURRENCY ignored")
            asyncio.run(_ensure_demo_user(ready))
        serve(ready)
    return 0


async def _ensure_demo_user(settings: Settings) -> None:
    pool = await open_pool(settings)
    try:
        storage = await build_storage(settings, pool)
        async with storage.connection() as conn:
            if await users.find(conn, DEMO_USER) is not None:
                return
        password_hash = await hash_once(DEMO_PASSWORD, settings.password_cost)
        await users.set_password(storage, DEMO_USER, password_hash)
        log.info("created the demo user %r (its password is in the README; embedded mode only)", DEMO_USER)
    finally:
        await pool.close()


def _sweep(settings: Settings, args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage) -> int:
        try:
            deleted = await storage.sweep(batch_size=settings.sweep_batch_size)
        except (*UNAVAILABLE_ERRORS, asyncpg.PostgresError) as exc:
            raise CommandError(f"the sweep failed: {db.reason(exc)}") from exc
        async with storage.connection() as conn:
            await throttle.prune(conn, settings.login_limits)
        if deleted is None:
            print("another process is sweeping: nothing done")
        else:
            print(f"removed {deleted} expired sessions")
        return 0

    return _with_storage(settings, work)


def _user_add(settings: Settings, args: argparse.Namespace) -> int:
    name: str = args.name
    problem = usernames.problem(name)
    if problem:
        raise CommandError(f"invalid username {name!r}: {problem}")
    password = _read_password()

    async def work(storage: PostgresStorage) -> int:
        password_hash = await hash_once(password, settings.password_cost)
        created, stored = await _set_password(storage, name, password_hash)
        print(f"created user {stored}" if created else f"reset the password of {stored} and ended their sessions")
        return 0

    return _with_storage(settings, work)


def _user_add_first(settings: Settings, args: argparse.Namespace) -> int:
    """The Deploy button's first user: created once, never reset (running it again changes
    nothing, so a password changed since is kept)."""
    name, password = settings.first_user_name, settings.first_user_password
    problem = usernames.problem(name)
    if problem:
        raise CommandError(f"invalid FIRST_USER_NAME: {problem}")
    if password is None:
        raise CommandError("FIRST_USER_PASSWORD is not set: set it to the first user's password")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise CommandError(f"FIRST_USER_PASSWORD is longer than {MAX_PASSWORD_BYTES} bytes")

    async def work(storage: PostgresStorage) -> int:
        async with storage.connection() as conn:
            existing = await users.find(conn, name)
        if existing is not None:
            print(f"user {existing.username} exists: left as it is")
            return 0
        await _set_password(storage, name, await hash_once(password, settings.password_cost))
        print(f"created user {name}")
        return 0

    return _with_storage(settings, work)


def _user_delete(settings: Settings, args: argparse.Namespace) -> int:
    name: str = args.name

    async def work(storage: PostgresStorage) -> int:
        deleted = await users.delete(storage, name)
        if deleted is None:
            raise CommandError(f"no user named {name!r}")
        print(f"deleted user {escape(deleted)} and their sessions")
        return 0

    return _with_storage(settings, work)


async def _set_password(storage: PostgresStorage, name: str, password_hash: str) -> tuple[bool, str]:
    try:
        return await users.set_password(storage, name, password_hash)
    except users.LookAlike as exc:
        raise CommandError(
            f"invalid username {name!a}: it looks like the existing user {exc.existing!a}"
            " (the same Unicode skeleton, UTS #39): choose another name"
        ) from None


def _user_collisions(settings: Settings, args: argparse.Namespace) -> int:
    """One line per account the username rules would refuse as it stands: name (escaped), its
    code points when not ASCII, id, why, and whether it signs in only spelled exactly."""

    async def work(storage: PostgresStorage) -> int:
        async with storage.connection() as conn:
            found = await users.collisions(conn)
        if not found:
            print("no accounts collide under the username rules", file=sys.stderr)
        for item in found:
            spelled = escape(item.username)
            if not item.username.isascii():
                spelled += f" ({item.username!a})"
            how = "signs in only spelled exactly as stored" if item.exact_only else "signs in as before"
            print(f"{spelled}\tid {item.id}\t{escape(item.reason)}\t{how}")
        return 0

    return _with_storage(settings, work)


async def _user_id(storage: PostgresStorage, name: str) -> int:
    async with storage.connection() as conn:
        user = await users.find(conn, name)
    if user is None:
        raise CommandError(f"no user named {name!r}")
    return user.id


def _sessions_list(settings: Settings, args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage) -> int:
        live = await storage.list_sessions(await _user_id(storage, args.name), limit=10_000)
        if not live:
            print(f"{args.name} has no live sessions", file=sys.stderr)
        for info in live:
            created = info.created_at.isoformat(timespec="seconds")
            seen = info.last_seen_at.isoformat(timespec="seconds")
            # Escaped: a User-Agent could hold tabs (shifting the columns), terminal escapes,
            # or bidirectional overrides.
            print(
                f"{info.handle}\t{created}\t{seen}\t{escape(info.client_ip) or '-'}\t{escape(info.user_agent) or '-'}"
            )
        return 0

    return _with_storage(settings, work)


def _sessions_revoke(settings: Settings, args: argparse.Namespace) -> int:
    async def work(storage: PostgresStorage) -> int:
        user_id = await _user_id(storage, args.name)
        if args.all:
            ended = await storage.end_all_sessions(user_id, reason="operator")
            print(f"ended {plural(ended, 'session')} of {args.name}")
            return 0
        if not await storage.end_session(user_id, args.handle, reason="operator"):
            raise CommandError(f"{args.name} has no live session with handle {args.handle!r}")
        print(f"ended session {args.handle} of {args.name}")
        return 0

    return _with_storage(settings, work)


def _read_password() -> str:
    """From a prompt (asked twice) on a terminal; else the first line of stdin, its line ending
    stripped."""
    if sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CommandError("the passwords do not match")
    else:
        line = sys.stdin.buffer.readline()
        try:
            password = line.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise CommandError("the password on stdin is not valid UTF-8") from None
    if not password:
        raise CommandError("the password is empty")
    if len(password.encode()) > MAX_PASSWORD_BYTES:
        raise CommandError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return password
