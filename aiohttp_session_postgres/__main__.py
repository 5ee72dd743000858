"""`python -m aiohttp_session_postgres schema [--table NAME] [--schema NAME] [--partitions N]`:
print the SQL that creates the sessions table, ready for psql."""

from __future__ import annotations

import argparse
import sys

from .schema import schema_sql


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aiohttp_session_postgres", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    schema = commands.add_parser("schema", help="print the SQL that creates (or updates) the sessions table")
    schema.add_argument("--table", default="sessions", help="table name (default: sessions)")
    schema.add_argument("--schema", default="public", help="PostgreSQL schema, which must exist (default: public)")
    schema.add_argument("--partitions", type=int, help="hash-partition a new table by id_hash into N partitions")
    args = parser.parse_args(argv)
    try:
        sql = schema_sql(args.table, args.schema, partitions=args.partitions)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(sql)
    return 0


if __name__ == "__main__":
    sys.exit(main())
