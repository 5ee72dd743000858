"""The benchmark's own databases on the machine's PostgreSQL, and the rows it generates in them.

Every database this creates is named `sessions_bench_<pid>_<label>` and is dropped when the
scenario ends (ones left by a killed run are dropped by the next run, once their pid is gone).
Nothing else on the server is touched.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from app.embedded import process_alive

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
PREFIX = "sessions_bench_"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/140.0.0.0 Safari/537.36"
# The size of a real row's sealed data: 12-byte nonce, {"user_id":N,"username":"user-N"}, 16-byte tag.
DATA_BYTES = 68


def server_url() -> str:
    return os.environ.get("BENCH_DATABASE_URL") or DEFAULT_URL


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


async def _admin(sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(server_url(), timeout=10)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def drop_stale() -> list[str]:
    """Drop bench databases whose run (pid in the name) is gone."""
    dropped = []
    for (name,) in await _admin("SELECT datname FROM pg_database WHERE datname LIKE $1", PREFIX + "%"):
        pid = name.removeprefix(PREFIX).split("_")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            dropped.append(name)
    return dropped


async def create(label: str, *, root: Path | None = None) -> str:
    """A new, migrated database of this run; returns its URL. `root`: migrated by the app of that
    checkout (a baseline's), not this one's."""
    name = f"{PREFIX}{os.getpid()}_{label}"
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await _admin(f'CREATE DATABASE "{name}"')
    url = with_database(server_url(), name)
    if root is not None:
        upgrade = [sys.executable, "-c", "import sys; from app import schema; schema.upgrade(sys.argv[1])", url]
        env = {**os.environ, "PYTHONPATH": str(root)}
        await asyncio.to_thread(subprocess.run, upgrade, cwd=root, env=env, check=True, capture_output=True)
        return url
    from app import schema

    await asyncio.to_thread(schema.upgrade, url)  # Alembic runs its own event loop
    return url


async def drop(url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    assert name.startswith(PREFIX), name
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def drop_all_of_this_run() -> None:
    for (name,) in await _admin("SELECT datname FROM pg_database WHERE datname LIKE $1", f"{PREFIX}{os.getpid()}_%"):
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def add_users(url: str, count: int) -> None:
    """Users 1..count (ids from the identity column), named user-N, password BENCH_PASSWORD
    hashed once at the shipped cost (the shipped variants sign in through the real form)."""
    from app import usernames
    from app.config import Settings
    from app.passwords import hash_once

    from .harness import BENCH_PASSWORD

    password_hash = await hash_once(BENCH_PASSWORD, Settings(database_url=None).password_cost)
    # Keys and skeletons as `user add` stores them (app/usernames.py): logins find users by key.
    keys = [usernames.key(f"user-{i}") for i in range(1, count + 1)]
    skeletons = [usernames.skeleton(key) for key in keys]
    conn = await asyncpg.connect(url)
    try:
        keyed = await conn.fetchval(
            "SELECT count(*) > 0 FROM information_schema.columns"
            " WHERE table_name = 'users' AND column_name = 'username_key'"
        )
        if keyed:
            await conn.execute(
                "INSERT INTO users (username, username_key, username_skeleton, password_hash)"
                " SELECT k, k, s, $3 FROM unnest($1::text[], $2::text[]) AS t(k, s)",
                keys,
                skeletons,
                password_hash,
            )
        else:  # a --baseline's schema, from before usernames had keys (migration 0007)
            await conn.execute(
                "INSERT INTO users (username, password_hash) SELECT k, $2 FROM unnest($1::text[]) AS t(k)",
                keys,
                password_hash,
            )
    finally:
        await conn.close()


FILL_SQL = """
INSERT INTO sessions (id_hash, user_id, data, created_at, last_seen_at, idle_expires_at, absolute_expires_at,
                      version, client_ip, user_agent)
SELECT sha256(convert_to($1 || i::text, 'UTF8')),
       CASE WHEN $4 > 0 THEN 1 + i % $4 END,
       $5,
       now() - interval '1 hour',
       now() - interval '10 minutes',
       {idle},
       {absolute},
       1, '127.0.0.1', $6
FROM generate_series($2::bigint, $3::bigint) AS i
"""
# Live: idle deadline spread over the next 30 minutes, absolute 12 h on. Expired: idle deadline in
# the past hour (the sweeper's target), absolute still ahead (the CHECK wants idle <= absolute).
LIVE = ("now() + (i % 1800) * interval '1 second'", "now() + interval '12 hours'")
EXPIRED = ("now() - interval '1 second' - (i % 3600) * interval '1 second'", "now() + interval '11 hours'")


async def fill_sessions(url: str, count: int, *, expired: bool, tag: str, users: int, chunks: int = 2) -> float:
    """Insert `count` generated session rows (id_hash = SHA-256 of tag+i, 32 random-looking bytes;
    user ids 1 to `users` in turn, none when `users` is 0) in `chunks` concurrent statements;
    VACUUM ANALYZE afterwards as autovacuum would in time.
    Returns the seconds it took."""
    idle, absolute = EXPIRED if expired else LIVE
    sql = FILL_SQL.format(idle=idle, absolute=absolute)
    data = bytes(range(DATA_BYTES))
    started = time.perf_counter()
    bounds = [(count * k // chunks + 1, count * (k + 1) // chunks) for k in range(chunks)]

    async def one(lo: int, hi: int) -> None:
        conn = await asyncpg.connect(url, command_timeout=None)
        try:
            await conn.execute("SET synchronous_commit = off")
            await conn.execute(sql, tag, lo, hi, users, data, USER_AGENT)
        finally:
            await conn.close()

    await asyncio.gather(*(one(lo, hi) for lo, hi in bounds if hi >= lo))
    conn = await asyncpg.connect(url, command_timeout=None)
    try:
        await conn.execute("VACUUM ANALYZE sessions")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def table_stats(url: str) -> dict[str, int]:
    """Cumulative counters of this database and its sessions table (pg_stat_*)."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        db = await conn.fetchrow(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        )
        t = await conn.fetchrow(
            "SELECT coalesce(idx_scan, 0) AS idx_scan, n_tup_ins, n_tup_upd, n_tup_del, n_tup_hot_upd,"
            " n_live_tup FROM pg_stat_user_tables WHERE relname = 'sessions'"
        )
        return {**dict(db), **dict(t)}
    finally:
        await conn.close()


async def count_sessions(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval("SELECT count(*) FROM sessions")
    finally:
        await conn.close()


async def relation_size(url: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT pg_table_size('sessions') AS table_bytes, pg_indexes_size('sessions') AS index_bytes"
        )
        return dict(row)
    finally:
        await conn.close()
