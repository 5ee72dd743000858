"""Session rows with chosen deadlines, written straight into a sessions table, for the sweeper's
tests."""

from __future__ import annotations

import os

import asyncpg

# Deadlines in seconds from now, as (idle, absolute); the table requires idle <= absolute.
IDLE_EXPIRED = (-60, 3600)
BOTH_EXPIRED = (-120, -60)
LIVE = (3600, 7200)


async def insert_sessions(conn: asyncpg.Connection, count: int, deadlines: tuple[int, int]) -> set[bytes]:
    """`count` session rows with the given (idle, absolute) deadlines; their id_hashes."""
    ids = [os.urandom(32) for _ in range(count)]
    await conn.execute(
        "INSERT INTO sessions (id_hash, data, idle_expires_at, absolute_expires_at)"
        " SELECT id, '\\x00ff'::bytea, now() + make_interval(secs => $2), now() + make_interval(secs => $3)"
        " FROM unnest($1::bytea[]) AS id",
        ids,
        float(deadlines[0]),
        float(deadlines[1]),
    )
    return set(ids)


async def remaining_ids(conn: asyncpg.Connection) -> set[bytes]:
    return {row["id_hash"] for row in await conn.fetch("SELECT id_hash FROM sessions")}
