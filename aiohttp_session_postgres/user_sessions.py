"""One user's sessions: listing them, and ending them by handle, the others, or all.

Every statement is scoped to one user_id, so nobody reaches another user's sessions, whatever
handle they send. PostgresStorage's methods (list_sessions, end_session, ...) run these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from .tokens import HANDLE_BYTES, handle_of

_HANDLE_RE = re.compile(rf"[0-9a-f]{{{HANDLE_BYTES * 2}}}")

LIST_SQL = """
SELECT id_hash, created_at, last_seen_at, client_ip, user_agent
FROM {table}
WHERE user_id = $1 AND idle_expires_at > now() AND absolute_expires_at > now()
ORDER BY last_seen_at DESC
LIMIT $2
"""
END_ONE_SQL = """
DELETE FROM {table}
WHERE user_id = $1 AND substring(id_hash FROM 1 FOR octet_length($2::bytea)) = $2::bytea
    AND idle_expires_at > now() AND absolute_expires_at > now()
RETURNING id_hash
"""
# Rows locked in id_hash order, as the trim after a login locks them: no deadlock between them.
# Live rows only: what they return is what they ended (each one logged as revoked); expired rows
# are the sweeper's, which then never waits on these.
END_OTHERS_SQL = """
DELETE FROM {table}
WHERE id_hash IN (
    SELECT id_hash FROM {table}
    WHERE user_id = $1 AND id_hash <> $2 AND idle_expires_at > now() AND absolute_expires_at > now()
    ORDER BY id_hash FOR UPDATE
) AND idle_expires_at > now() AND absolute_expires_at > now()
RETURNING id_hash
"""
END_ALL_SQL = """
DELETE FROM {table}
WHERE id_hash IN (
    SELECT id_hash FROM {table}
    WHERE user_id = $1 AND idle_expires_at > now() AND absolute_expires_at > now()
    ORDER BY id_hash FOR UPDATE
) AND idle_expires_at > now() AND absolute_expires_at > now()
RETURNING id_hash
"""


@dataclass(frozen=True)
class SessionInfo:
    """One live session, as a user's device list shows it. `handle` names it publicly (16 hex
    digits, from the ID hash): it can end the session through `end_session`, never authenticate.
    Times are timezone-aware (UTC); `client_ip` and `user_agent` are those of the last touch, as
    the client sent them (escape them before display)."""

    handle: str
    created_at: datetime
    last_seen_at: datetime
    client_ip: str
    user_agent: str


def info_of(row: dict[str, object]) -> SessionInfo:
    id_hash = row["id_hash"]
    assert isinstance(id_hash, bytes)
    return SessionInfo(
        handle_of(id_hash),
        row["created_at"],  # type: ignore[arg-type]
        row["last_seen_at"],  # type: ignore[arg-type]
        row["client_ip"],  # type: ignore[arg-type]
        row["user_agent"],  # type: ignore[arg-type]
    )


def handle_prefix(handle: str) -> bytes | None:
    """The ID-hash prefix a handle names, or None when it is not a well-formed handle."""
    return bytes.fromhex(handle) if _HANDLE_RE.fullmatch(handle) else None
