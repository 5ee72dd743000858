"""aiohttp-session-postgres: schema version 2, str users (the principal column, its CHECK, its index)

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

Downgrading drops the column (and with it its CHECK and index) and sets the comment back to
version 1: the sessions of str users then lose their tie to the user (they stay signed in until
they expire, unlisted).
"""

from aiohttp_session_postgres.schema import run_schema_statements, schema_statements
from alembic import op
from sqlalchemy import text

revision = "aiohttp_session_pg_0003"
down_revision = "aiohttp_session_pg_0002"
branch_labels = None
depends_on = None

SECTION = "aiohttp_session_postgres"


def _names() -> tuple[str, str]:
    """table and schema from the `[aiohttp_session_postgres]` section of alembic.ini, if any."""
    config = op.get_context().config
    if config is None or not config.file_config.has_section(SECTION):
        return "sessions", "public"
    return (
        config.get_section_option(SECTION, "table", "sessions") or "sessions",
        config.get_section_option(SECTION, "schema", "public") or "public",
    )


def _citus() -> bool:
    if op.get_context().as_sql:
        return False  # offline (--sql): no database to ask; `python -m aiohttp_session_postgres schema --citus`
    installed = op.get_bind().execute(text("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"))
    return bool(installed.scalar())


def upgrade() -> None:
    # An ALTER that waits for a lock queues every request behind it: give up instead.
    op.execute("SET LOCAL lock_timeout = '5s'")
    table, schema = _names()
    run_schema_statements(op, schema_statements(table, schema, citus=_citus()))


def downgrade() -> None:
    table, schema = _names()
    qualified = f'"{schema}"."{table}"'
    op.execute(f"ALTER TABLE {qualified} DROP COLUMN IF EXISTS principal")
    op.execute(f"COMMENT ON TABLE {qualified} IS 'aiohttp-session-postgres schema 1'")
