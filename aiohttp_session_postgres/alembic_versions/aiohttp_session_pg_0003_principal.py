"""aiohttp-session-postgres: schema version 2: str users and each session's own lifetime

Revision ID: aiohttp_session_pg_0003
Revises: aiohttp_session_pg_0002
Create Date: 2026-12-07

Runs the library's schema SQL again (schema_statements(), on Citus with citus=True), which brings
the table to the library's current version and changes nothing already there. For version 2, on
a table that has rows and serves the earlier release meanwhile: a nullable `principal text`
column without a default (the catalog alone: no rewrite), its CHECK added NOT VALID (no scan
under the ALTER's lock), and its index built CONCURRENTLY, in an autocommit block of its own
(PostgreSQL builds one so only outside a transaction block: what ran before it is committed
first). Processes of the earlier release keep working against the upgraded table (their
statements name neither the column nor the index), and the new release reads every row they
wrote. A build that was interrupted leaves an invalid index: `DROP INDEX CONCURRENTLY` it, then
run this revision's statement again (or call create_schema(), which does both).

Version 2 also adds each session's own lifetime, two more nullable columns without a default
(`idle_timeout integer`, `browser_session boolean`: NULL is version 1's behaviour).

Downgrading drops the three columns (and with them principal's CHECK and index) and sets the
comment back to version 1. It first deletes the sessions of str users (they sign in again):
version 1 could neither list nor end them, so a password change would not end them. Remembered
sessions then slide by the storage's idle_timeout (their absolute deadline stays).
"""

from aiohttp_session_postgres.alembic_versions import VERSION_2_COLUMNS, citus_installed, table_names
from aiohttp_session_postgres.schema import TableNames, run_schema_statements, schema_statements
from alembic import op

revision = "aiohttp_session_pg_0003"
down_revision = "aiohttp_session_pg_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # An ALTER that waits for a lock queues every request behind it: give up instead.
    op.execute("SET LOCAL lock_timeout = '5s'")
    table, schema = table_names()
    run_schema_statements(op, schema_statements(table, schema, citus=citus_installed()))


def downgrade() -> None:
    qualified = TableNames(*table_names()).qualified  # plain identifiers, checked
    # Version 1 cannot list or end a str user's sessions, nor read their user id: they end now
    # (those users sign in again) rather than stay signed in beyond any revocation.
    op.execute(f"DELETE FROM {qualified} WHERE principal IS NOT NULL")  # noqa: S608 (a checked name)
    op.execute(f"ALTER TABLE {qualified} " + ", ".join(f"DROP COLUMN IF EXISTS {c}" for c in VERSION_2_COLUMNS))
    op.execute(f"COMMENT ON TABLE {qualified} IS 'aiohttp-session-postgres schema 1'")
