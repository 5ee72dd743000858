"""The library's commands, for set-up and scheduled jobs (no keys needed):

    python -m aiohttp_session_postgres schema [--table NAME] [--schema NAME] [--partitions N | --citus]
        print the SQL that creates (or updates) the sessions table, ready for psql: one
        transaction, then the index psql builds CONCURRENTLY after it (not with --single-transaction)
    python -m aiohttp_session_postgres sweep --dsn URL [--table NAME] [--schema NAME] [--citus]
        delete the expired sessions once and print how many (cron, Heroku Scheduler)

--citus: the table distributed by Citus (the SQL distributes it; run it on the coordinator, with
  psql -v ON_ERROR_STOP=1). The sweep finds it out by itself; --citus only says so.

A failure prints one line starting `error:` and exits 1; a usage mistake exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from .pool import DATABASE_ERRORS
from .schema import schema_sql, split_schema_sql
from .sweeper import sweep


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiohttp_session_postgres", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    schema = commands.add_parser("schema", help="print the SQL that creates (or updates) the sessions table")
    cleanup = commands.add_parser("sweep", help="delete expired sessions once and print how many")
    cleanup.add_argument("--dsn", required=True, help="the database, as a postgresql:// URL")
    for command in (schema, cleanup):
        command.add_argument("--table", default="sessions", help="table name (default: sessions)")
        command.add_argument("--schema", default="public", help="PostgreSQL schema, which must exist (default: public)")
    schema.add_argument("--partitions", type=int, help="hash-partition a new table by id_hash into N partitions")
    for command in (schema, cleanup):
        command.add_argument("--citus", action="store_true", help="the table distributed by Citus, by id_hash")
    args = parser.parse_args(argv)
    try:
        if args.command == "schema":
            # One transaction: a statement that fails (in psql, which goes on past errors unless
            # told ON_ERROR_STOP) leaves nothing half made. Then what PostgreSQL runs only
            # outside a transaction block (an index built CONCURRENTLY), each on its own.
            sql = schema_sql(args.table, args.schema, partitions=args.partitions, citus=args.citus)
            transactional, outside = split_schema_sql(sql)
            sys.stdout.write(f"BEGIN;\n{transactional}COMMIT;\n" + (f"\n{outside}" if outside else ""))
        else:
            deleted = asyncio.run(_sweep(args.dsn, args.table, args.schema, citus=args.citus))
            print(
                "another process is sweeping: nothing done"
                if deleted is None
                else f"removed {deleted} expired sessions"
            )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DATABASE_ERRORS as exc:
        reason = (getattr(exc, "message", None) or str(exc) or type(exc).__name__).splitlines()[0]
        hint = ""
        if isinstance(exc, asyncpg.FeatureNotSupportedError) and not args.citus:
            hint = "; on a Citus cluster, add --citus"
        print(f"error: the database refused or did not answer ({reason}){hint}", file=sys.stderr)
        return 1
    return 0


async def _sweep(dsn: str, table: str, schema: str, *, citus: bool) -> int | None:
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=1, timeout=10)
    try:
        return await sweep(pool, table=table, schema=schema, citus=citus or None)  # None: found out
    finally:
        await pool.close()


if __name__ == "__main__":
    sys.exit(main())
