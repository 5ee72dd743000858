"""Alembic revisions of the sessions table, for another project's `alembic.ini`:

    [alembic]
    version_locations = %(here)s/migrations/versions aiohttp_session_postgres:alembic_versions
    path_separator = space

    [aiohttp_session_postgres]       ; optional: the defaults are these
    table = sessions
    schema = public

then `alembic upgrade heads` (this branch is labelled `aiohttp_session_postgres`).
"""

from __future__ import annotations

from typing import Any


def run_schema_statements(op: Any, statements: list[str]) -> None:
    """Run `schema_statements()` in an Alembic revision: each in the migration's transaction, but
    for a ``CREATE INDEX CONCURRENTLY``, which PostgreSQL runs only outside a transaction block:
    that one in ``op.get_context().autocommit_block()`` (which commits what ran before it, and
    begins a new transaction after it). This branch's revisions use it, and a project's own
    revisions that run the library's statements (as the demo app's do) can too.

    :param op: ``alembic.op``.
    :param statements: what `aiohttp_session_postgres.schema_statements` returned.
    """
    for statement in statements:
        if statement.startswith("CREATE INDEX CONCURRENTLY"):
            with op.get_context().autocommit_block():
                op.execute(statement)
        else:
            op.execute(statement)
