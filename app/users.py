"""The users table: lookup for login, and the operator's create/reset/delete.

A user is found by the key of the name typed (usernames.key: RFC 8265, computed in Python, never
by the database's lower() or locale), which the table holds in `username_key` (unique). A new
name whose UTS #39 skeleton (`username_skeleton`, unique) is taken looks like an existing user's
and is refused. Names are shown as they were first written (`username`).

Accounts made before these rules (migration 0007) that collide under them keep working: the
first of each group holds the key (and skeleton); the others have none, and sign in by their
name spelled exactly as stored. `collisions()` lists them for the operator.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from aiohttp_session_postgres import PostgresStorage

from . import usernames

MAX_USERNAME_CHARS = usernames.MAX_CHARS

# $1 the key of the name typed (NULL when RFC 8265 refuses it), $2 the name as typed (NULL when
# it cannot be a stored spelling). An account from before the rules, without a key, is found by
# its exact spelling, and first: "ÉMILE" finds that account, not the older "émile" holding the key.
_FIND = """
SELECT id, username, password_hash FROM users
WHERE username_key = $1 OR (username_key IS NULL AND username = $2)
ORDER BY username_key IS NULL DESC
LIMIT 1
"""
FIND_SQL = _FIND
# The user's row, locked until the transaction ends (a reset, or a deletion: no login can create
# a session meanwhile).
LOCK_SQL = _FIND + " FOR UPDATE"
RESET_SQL = "UPDATE users SET password_hash = $2 WHERE id = $1"
LOOKALIKE_SQL = "SELECT username FROM users WHERE username_skeleton = $1"
INSERT_SQL = """
INSERT INTO users (username, username_key, username_skeleton, password_hash) VALUES ($1, $2, $3, $4)
RETURNING id, username
"""
# The unique indexes of migration 0007 (on Citus, a shard's copy carries a suffix).
KEY_INDEX, SKELETON_INDEX = "users_key_unique", "users_skeleton_unique"

# Locks the row against a concurrent reset or delete until the transaction ends (FOR SHARE).
UNCHANGED_SQL = "SELECT true FROM users WHERE id = $1 AND password_hash = $2 FOR SHARE"
DELETE_SQL = "DELETE FROM users WHERE id = $1"
ALL_SQL = "SELECT id, username, username_key, username_skeleton FROM users ORDER BY id"


class LookAlike(Exception):
    """A new username looks like an existing user's (the same UTS #39 skeleton)."""

    def __init__(self, name: str, existing: str) -> None:
        super().__init__(f"{name} looks like the existing user {existing}")
        self.name, self.existing = name, existing


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password_hash: str


def username_problem(username: str) -> str | None:
    """Why `username` cannot name any user, new or from before the rules (too long, a control
    character: what is never looked up), or None. New names must also pass usernames.problem."""
    if not 1 <= len(username) <= MAX_USERNAME_CHARS:
        return f"a username is 1 to {MAX_USERNAME_CHARS} characters"
    if any(unicodedata.category(ch).startswith("C") for ch in username):
        return "a username may not contain control or invisible formatting characters"
    return None


def _find_args(username: str) -> tuple[str | None, str | None]:
    spelled = username if username_problem(username) is None else None
    return usernames.key_or_none(username), spelled


async def find(conn: asyncpg.Connection, username: str) -> User | None:
    """The user `username` names: by its key, or an account from before the rules by its exact
    spelling. A look-alike of a user's name (another key, the same skeleton) names nobody."""
    name_key, spelled = _find_args(username)
    if name_key is None and spelled is None:
        return None
    row = await conn.fetchrow(FIND_SQL, name_key, spelled)
    return User(row["id"], row["username"], row["password_hash"]) if row else None


def credentials_unchanged(user: User) -> Callable[[asyncpg.Connection], Awaitable[bool]]:
    """A check for PostgresSession.require: the user still exists with the password hash the
    login verified. Run in the transaction that creates the session, it locks the user's row, so
    a password reset or a deletion either commits before (and the check fails) or waits for the
    session to exist (and then ends it)."""

    async def check(conn: asyncpg.Connection) -> bool:
        return bool(await conn.fetchval(UNCHANGED_SQL, user.id, user.password_hash))

    return check


async def set_password(storage: PostgresStorage, username: str, password_hash: str) -> tuple[bool, str]:
    """Create the user, or reset their password and, in the same transaction, end every session
    of theirs (whoever knew the old password is out).

    :param username: any spelling of the name (`ALICE` resets `alice`).
    :returns: (True when created, the username as stored: a reset keeps the first spelling).
    :raises usernames.UsernameRefused: RFC 8265 refuses the name.
    :raises LookAlike: the name is new and looks like an existing user's. Decided by the unique
        index on the skeleton, so of two look-alikes added at once exactly one is created.
    """
    name_key = usernames.key(username)
    name_skeleton = usernames.skeleton(name_key)
    for attempt in (1, 2):
        try:
            async with storage.connection() as conn, conn.transaction():
                row = await conn.fetchrow(LOCK_SQL, name_key, username)
                if row is not None:
                    await conn.execute(RESET_SQL, row["id"], password_hash)
                    await storage.end_all_sessions(row["id"], conn=conn, reason="password_changed")
                    return False, row["username"]
                existing = await conn.fetchval(LOOKALIKE_SQL, name_skeleton)
                if existing is not None:
                    raise LookAlike(username, existing)
                row = await conn.fetchrow(INSERT_SQL, username, name_key, name_skeleton, password_hash)
                return True, row["username"]
        except asyncpg.UniqueViolationError as exc:
            # Another transaction committed the same key (then this is a reset) or a look-alike
            # (then it is refused) after the checks above: once more, and the checks see it.
            index = exc.constraint_name or ""
            if attempt == 2 or not index.startswith((KEY_INDEX, SKELETON_INDEX)):
                raise
    raise AssertionError("unreachable")


async def delete(storage: PostgresStorage, username: str) -> str | None:
    """Delete the user and, in the same transaction, end their sessions through the storage (so
    every process's cache learns it; on one PostgreSQL the foreign key's ON DELETE CASCADE would
    end them too, but on Citus a cascade notifies nothing). The name as stored (`username` may be
    another spelling of it), or None when there is no such user."""
    async with storage.connection() as conn, conn.transaction():
        # On Citus, deleting from users (a reference table) after the shards' parallel delete is
        # refused in one transaction unless Citus works shard by shard; elsewhere the setting is
        # an unused placeholder.
        await conn.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
        name_key, spelled = _find_args(username)
        found = await conn.fetchrow(LOCK_SQL, name_key, spelled)
        if found is None:
            return None
        await storage.end_all_sessions(found["id"], conn=conn, reason="user_deleted")
        await conn.execute(DELETE_SQL, found["id"])
    return str(found["username"])


@dataclass(frozen=True)
class Collision:
    """An account the rules of migration 0007 would not have let in, as it stands."""

    id: int
    username: str
    reason: str
    exact_only: bool  # it has no key: it signs in only by its name spelled exactly as stored


async def collisions(conn: asyncpg.Connection) -> list[Collision]:
    """Every account that collides with an older one under the rules (the same key, or a
    look-alike: the same skeleton), or whose name the rules refuse, oldest first. Computed here
    from the names themselves, so rows written without a key by older code are listed too."""
    rows = await conn.fetch(ALL_SQL)
    by_key: dict[str, tuple[int, str]] = {}
    by_skeleton: dict[str, tuple[int, str]] = {}
    found: list[Collision] = []
    for row in rows:
        user_id, name, exact_only = row["id"], row["username"], row["username_key"] is None
        try:
            name_key = usernames.key(name)
        except usernames.UsernameRefused as exc:
            found.append(Collision(user_id, name, f"refused by the username rules: {exc}", exact_only))
            continue
        if name_key in by_key:
            first = by_key[name_key]
            found.append(Collision(user_id, name, f"the same name as {first[1]} (id {first[0]})", exact_only))
            continue
        by_key[name_key] = (user_id, name)
        name_skeleton = usernames.skeleton(name_key)
        if name_skeleton in by_skeleton:
            first = by_skeleton[name_skeleton]
            found.append(Collision(user_id, name, f"looks like {first[1]} (id {first[0]})", exact_only))
            continue
        by_skeleton[name_skeleton] = (user_id, name)
        if exact_only:
            why = "has no key (migration 0007 ran offline, or the row was written without the app)"
            found.append(Collision(user_id, name, why, exact_only))
    return found
