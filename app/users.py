"""The users table: lookup for login, and the operator's create/reset/delete.

Usernames are unique without regard to case (a unique index on lower(username)) and are shown
as they were first written.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import asyncpg
from aiohttp_session_postgres import PostgresStorage

MAX_USERNAME_CHARS = 64

FIND_SQL = "SELECT id, username, password_hash FROM users WHERE lower(username) = lower($1)"

# A reset keeps the id and the original spelling. Returns whether a row was inserted.
UPSERT_SQL = """
INSERT INTO users (username, password_hash) VALUES ($1, $2)
ON CONFLICT ((lower(username))) DO UPDATE SET password_hash = EXCLUDED.password_hash
RETURNING id, username, (xmax = 0) AS inserted
"""

# Locks the row against a concurrent reset or delete until the transaction ends (FOR SHARE).
UNCHANGED_SQL = "SELECT true FROM users WHERE id = $1 AND password_hash = $2 FOR SHARE"

# The user's row, locked until the deletion commits (no login can create a session meanwhile).
LOCK_SQL = "SELECT id FROM users WHERE lower(username) = lower($1) FOR UPDATE"
DELETE_SQL = "DELETE FROM users WHERE id = $1"


@dataclass(frozen=True)
class User:
    id: int
    username: str
    password_hash: str


def username_problem(username: str) -> str | None:
    """Why `username` cannot be a username, or None when it can."""
    if not 1 <= len(username) <= MAX_USERNAME_CHARS:
        return f"a username is 1 to {MAX_USERNAME_CHARS} characters"
    if any(unicodedata.category(ch).startswith("C") for ch in username):
        return "a username may not contain control or invisible formatting characters"
    return None


async def find(conn: asyncpg.Connection, username: str) -> User | None:
    row = await conn.fetchrow(FIND_SQL, username)
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
    of theirs (whoever knew the old password is out). (True when created, the username as stored:
    a reset keeps the spelling first written.)"""
    async with storage.connection() as conn, conn.transaction():
        row = await conn.fetchrow(UPSERT_SQL, username, password_hash)
        if not row["inserted"]:
            await storage.end_all_sessions(row["id"], conn=conn)
    return bool(row["inserted"]), row["username"]


async def delete(storage: PostgresStorage, username: str) -> bool:
    """Delete the user and, in the same transaction, end their sessions through the storage (so
    every process's cache learns it; on one PostgreSQL the foreign key's ON DELETE CASCADE would
    end them too, but on Citus a cascade notifies nothing). False when there is no such user."""
    async with storage.connection() as conn, conn.transaction():
        # On Citus, deleting from users (a reference table) after the shards' parallel delete is
        # refused in one transaction unless Citus works shard by shard; elsewhere the setting is
        # an unused placeholder.
        await conn.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
        user_id = await conn.fetchval(LOCK_SQL, username)
        if user_id is None:
            return False
        await storage.end_all_sessions(user_id, conn=conn)
        await conn.execute(DELETE_SQL, user_id)
    return True
