"""Login throttling, kept in PostgreSQL so it holds across processes and dynos.

Within a sliding window (15 minutes by default), failed, well-formed login attempts are counted
three ways, and an attempt is refused (HTTP 429) once any count reaches its limit:
- one username from one IP (5): guessing one account from one place;
- one IP, any usernames (20): spraying many accounts from one place;
- one username, any IPs (100): a distributed attack on one account. Set high, so one attacker
  with a handful of tries cannot lock the owner out from everywhere else.
Refused attempts are not counted, so waiting out the window always works. A success clears the
failures of its own username and IP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import asyncpg

_MAX_KEY_CHARS = 256

CHECK_SQL = """
SELECT
    count(*) FILTER (WHERE username_key = $1 AND client_ip = $2) AS pair,
    min(failed_at) FILTER (WHERE username_key = $1 AND client_ip = $2) AS pair_oldest,
    count(*) FILTER (WHERE client_ip = $2) AS ip,
    min(failed_at) FILTER (WHERE client_ip = $2) AS ip_oldest,
    count(*) FILTER (WHERE username_key = $1) AS username,
    min(failed_at) FILTER (WHERE username_key = $1) AS username_oldest,
    now() AS now
FROM login_failures
WHERE failed_at > now() - make_interval(secs => $3) AND (username_key = $1 OR client_ip = $2)
"""
# Each failure recorded also deletes a few failures that left the window: the table stays
# bounded without a background job, however many distinct usernames and addresses are tried.
RECORD_SQL = """
WITH pruned AS (
    DELETE FROM login_failures
    WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM login_failures WHERE failed_at <= now() - make_interval(secs => $3) LIMIT 10
    )) AND failed_at <= now() - make_interval(secs => $3)
)
INSERT INTO login_failures (username_key, client_ip) VALUES ($1, $2)
"""
PRUNE_SQL = "DELETE FROM login_failures WHERE failed_at <= now() - make_interval(secs => $1)"
CLEAR_SQL = "DELETE FROM login_failures WHERE username_key = $1 AND client_ip = $2"


@dataclass(frozen=True)
class Limits:
    window: int = 900
    per_username_ip: int = 5
    per_ip: int = 20
    per_username: int = 100


@dataclass(frozen=True)
class Refusal:
    limit: str  # which count was reached: "username_ip", "ip" or "username"
    retry_after: int  # seconds until the oldest counted failure leaves the window


def username_key(username: str) -> str:
    # Case-insensitive like usernames themselves; bounded, since any string may be submitted.
    # PostgreSQL text cannot hold NUL (a form can send %00): it would fail the query with a 500.
    return username.lower().replace("\x00", "\ufffd")[:_MAX_KEY_CHARS]


async def check(conn: asyncpg.Connection, username: str, ip: str, limits: Limits) -> Refusal | None:
    row = await conn.fetchrow(CHECK_SQL, username_key(username), ip, float(limits.window))
    for name, count_col, limit in (
        ("username_ip", "pair", limits.per_username_ip),
        ("ip", "ip", limits.per_ip),
        ("username", "username", limits.per_username),
    ):
        if row[count_col] >= limit:
            leaves_at = row[f"{count_col}_oldest"].timestamp() + limits.window
            return Refusal(name, max(1, math.ceil(leaves_at - row["now"].timestamp())))
    return None


async def record_failure(conn: asyncpg.Connection, username: str, ip: str, limits: Limits) -> None:
    await conn.execute(RECORD_SQL, username_key(username), ip, float(limits.window))


async def prune(conn: asyncpg.Connection, limits: Limits) -> int:
    """Delete every recorded failure older than the window; the number deleted."""
    return int((await conn.execute(PRUNE_SQL, float(limits.window))).split()[-1])


async def clear(conn: asyncpg.Connection, username: str, ip: str) -> None:
    await conn.execute(CLEAR_SQL, username_key(username), ip)
