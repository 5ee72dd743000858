"""A user's own sessions: listing them, and ending them by handle (for the sessions page and
the operator's CLI). Every statement is scoped to one user_id, so nobody reaches another
user's sessions, whatever handle they send."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from .tokens import HANDLE_BYTES, handle_of

_HANDLE_RE = re.compile(rf"[0-9a-f]{{{HANDLE_BYTES * 2}}}")

LIST_SQL = """
SELECT id_hash, created_at, last_seen_at, client_ip, user_agent
FROM sessions
WHERE user_id = $1 AND idle_expires_at > now() AND absolute_expires_at > now()
ORDER BY last_seen_at DESC
"""
END_ONE_SQL = """
DELETE FROM sessions
WHERE user_id = $1 AND substring(id_hash FROM 1 FOR octet_length($2::bytea)) = $2::bytea
    AND idle_expires_at > now() AND absolute_expires_at > now()
RETURNING id_hash
"""
END_OTHERS_SQL = "DELETE FROM sessions WHERE user_id = $1 AND id_hash <> $2 RETURNING id_hash"
END_ALL_SQL = "DELETE FROM sessions WHERE user_id = $1 RETURNING id_hash"


@dataclass(frozen=True)
class SessionInfo:
    id_hash: bytes
    created_at: datetime
    last_seen_at: datetime
    client_ip: str
    user_agent: str

    @property
    def handle(self) -> str:
        return handle_of(self.id_hash)


def valid_handle(handle: str) -> bool:
    return bool(_HANDLE_RE.fullmatch(handle))


async def list_live(conn: asyncpg.Connection, user_id: int) -> list[SessionInfo]:
    return [SessionInfo(**dict(row)) for row in await conn.fetch(LIST_SQL, user_id)]


# Each returns the id hashes it ended, so the caller's process can evict them from its cache.


async def end_one(conn: asyncpg.Connection, user_id: int, handle: str) -> list[bytes]:
    """End the user's live session with this handle; [] if the user has none such."""
    if not valid_handle(handle):
        return []
    return [r["id_hash"] for r in await conn.fetch(END_ONE_SQL, user_id, bytes.fromhex(handle))]


async def end_others(conn: asyncpg.Connection, user_id: int, keep: bytes) -> list[bytes]:
    return [r["id_hash"] for r in await conn.fetch(END_OTHERS_SQL, user_id, keep)]


async def end_all(conn: asyncpg.Connection, user_id: int) -> list[bytes]:
    return [r["id_hash"] for r in await conn.fetch(END_ALL_SQL, user_id)]
